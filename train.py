"""Train a model: `python train.py model=lae g=rate_distortion` (see conf/train.yaml)."""

import sys

import hydra
from omegaconf import DictConfig

from compressml.errors import CompressMLError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from compressml.training import train

    try:
        summary = train(cfg)
    except CompressMLError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    return summary["best"].get("val/loss")


if __name__ == "__main__":
    main()
