"""The wheel carries the shipped configs (``conf/`` at the top of the repository) as ``compressml/conf``,
so an installed package trains with them (``compressml train ...``); everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    def run(self):
        super().run()
        src = Path(__file__).resolve().parent / "conf"
        if not (src / "train.yaml").is_file():
            raise SystemExit(f"{src}: the shipped configs are missing (conf/train.yaml); a wheel without them cannot train")
        dst = Path(self.build_lib) / "compressml" / "conf"
        for f in sorted(src.rglob("*.yaml")):
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)


setup(cmdclass={"build_py": BuildWithConfigs})
