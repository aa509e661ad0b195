"""Export a trained model (lae, mllae or red): `python export.py checkpoint=PATH out=DIR` (see conf/export.yaml)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from compressml.errors import exit_on_user_error

# an absolute config folder, so main() also works when this file is imported (tests call it in-process)
CONF = str(Path(__file__).resolve().parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="export")
def main(cfg: DictConfig) -> None:
    from compressml.export import export_from_config, format_summary

    summary = exit_on_user_error(export_from_config, cfg)
    print(format_summary(summary))


if __name__ == "__main__":
    main()
