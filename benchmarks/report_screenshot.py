"""A screenshot of an evaluation's report.html, rendered by headless Chromium (Debian's package
``chromium``), for the README.

    .venv/bin/python benchmarks/report_screenshot.py [--report RUN/report.html] [--out docs/report.png]

Without ``--report`` it first evaluates the premade LAE models on the sample photos against JPEG,
WebP and AVIF (what ``make demo`` does first) into a temporary folder.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import ROOT

PREMADE = ROOT / "compressml" / "premade"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.jpg", help=".png, or .jpg (smaller: quality 85)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no Chromium found: apt-get install chromium (Debian) and run again")
    with tempfile.TemporaryDirectory() as tmp:
        report = args.report
        if report is None:
            models = ",".join(str(PREMADE / f"lae-q{q}") for q in range(1, 5))
            subprocess.run(
                [
                    sys.executable,
                    "evaluate.py",
                    "data=samples",
                    f"checkpoint=[{models}]",
                    "label=compressml-premade",
                    "codecs=[jpeg-420,webp,avif]",
                    "matched=[jpeg-420,webp]",
                    f"hydra.run.dir={tmp}/eval",
                ],
                check=True,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
            report = Path(tmp) / "eval" / "report.html"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shot = Path(tmp) / "shot.png"
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--window-size={args.width},{args.height}",
                f"--screenshot={shot}",
                report.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        from PIL import Image

        with Image.open(shot) as im:
            if args.out.suffix.lower() in (".jpg", ".jpeg"):
                im.convert("RGB").save(args.out, quality=85, optimize=True)
            else:
                im.save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
