"""The package as a user installs it: the wheel builds, and installed into a fresh virtual environment
(its dependencies borrowed from this one) it codes with the premade models and trains with the
shipped configs, run from a folder outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY
from PIL import Image

pytestmark = pytest.mark.slow


def _uv() -> list[str]:
    found = shutil.which("uv")
    if found:
        return [found]
    if subprocess.run([sys.executable, "-m", "uv", "--version"], capture_output=True, check=False).returncode == 0:
        return [sys.executable, "-m", "uv"]
    pytest.skip("uv is not installed (make test installs it)")


def test_the_wheel_installs_codes_and_trains(tmp_path):
    uv = _uv()
    dist = tmp_path / "dist"
    subprocess.run(
        [*uv, "build", "--wheel", "--no-build-isolation", "--python", sys.executable, "--out-dir", str(dist)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    wheel = next(dist.glob("compressml-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([*uv, "venv", "--python", sys.executable, str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    subprocess.run([*uv, "pip", "install", "--python", str(python), "--no-deps", str(wheel)], check=True, capture_output=True)
    # the dependencies: this environment's site-packages after the fresh one's (not its .pth files, so
    # not the editable install of the checkout)
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMPRESSML_ROOT")}

    def run(*args: str) -> str:
        result = subprocess.run(
            [str(venv / "bin" / "compressml"), *args], cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    where = subprocess.run(
        [str(python), "-c", "import compressml; print(compressml.__file__)"], cwd=work, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert where.startswith(str(venv)), where  # the installed package, not the checkout
    assert "lae-q1" in run("models") and "red-x2" in run("models")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)).resize((96, 64)).save(work / "p.png")
    run("compress", "p.png", "-q", "10")
    run("decompress", "p.cml", "-o", "back.png")
    assert Image.open(work / "back.png").size == (96, 64)
    run("upscale", "p.png", "-o", "big.png")
    assert Image.open(work / "big.png").size == (192, 128)
    out = run("train", "model=lae", "data=samples", *TINY, "trainer.max_steps=2", "hydra.run.dir=run")
    assert "compressml training summary" in out and (work / "run" / "checkpoints" / "last.ckpt").is_file()
