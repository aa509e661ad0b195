"""Export a trained model (lae, mllae or red): `python export.py checkpoint=PATH out=DIR` (see conf/export.yaml)."""

from compressml.entry_points import export as main

if __name__ == "__main__":
    main()
