"""`python -m compressml.export_model ...` (and `compressml export ...`): the same as `python export.py ...`
in a checkout (see compressml.entry_points)."""

from compressml.entry_points import export as main

if __name__ == "__main__":
    main()
