"""Evaluate learned models against classical codecs: `python evaluate.py checkpoint=PATH data=kodak`."""

import sys

import hydra
from omegaconf import DictConfig

from compressml.errors import CompressMLError


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from compressml.evaluation import evaluate_from_config, print_report

    try:
        result = evaluate_from_config(cfg)
    except CompressMLError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print_report(result)


if __name__ == "__main__":
    main()
