"""Evaluate learned models against classical codecs: `python evaluate.py checkpoint=PATH data=kodak`."""

import hydra
from omegaconf import DictConfig

from compressml.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from compressml.evaluation import evaluate_from_config, print_report

    result = exit_on_user_error(evaluate_from_config, cfg)
    print_report(result)


if __name__ == "__main__":
    main()
