"""`python -m compressml.evaluate ...`: the same as `python evaluate.py ...` in a checkout (see compressml.entry_points)."""

from compressml.entry_points import evaluate as main

if __name__ == "__main__":
    main()
