"""Train a model: `python train.py model=lae g=rate_distortion` (see conf/train.yaml)."""

from compressml.entry_points import train as main

if __name__ == "__main__":
    main()
