"""Evaluate learned models against classical codecs: `python evaluate.py checkpoint=PATH data=kodak`."""

from compressml.entry_points import evaluate as main

if __name__ == "__main__":
    main()
