"""`python -m compressml.train ...`: the same as `python train.py ...` in a checkout (see compressml.entry_points)."""

from compressml.entry_points import train as main

if __name__ == "__main__":
    main()
