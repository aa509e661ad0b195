"""How long a newcomer waits: each command as a whole fresh process, against ``import torch``.

Interleaved rounds of, with the premade models on one Kodak image (768x512):

``import torch``        python -c "import torch" (the floor: any PyTorch program pays it)
``compress``            compressml compress kodim05.png (premade lae-q3)
``decompress``          compressml decompress kodim05.cml
``upscale``             compressml upscale kodim05.png (premade red-x2)
``api compress``        python -c "import compressml; compressml.compress('kodim05.png')"
``import compressai``   python -c "import compressai" without compressml's import hook (for scale)

Prints min / median / max seconds and each command's median over ``import torch``'s (the target:
at most 2), and writes benchmarks/results/cli_latency.json. Run it while nothing else runs.

    .venv/bin/python benchmarks/cli_latency.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import RESULTS, ROOT, machine_info, write_json

OUT = RESULTS / "cli_latency.json"
IMAGE = (ROOT / ".." / "shared" / "data" / "kodak" / "kodim05.png").resolve()


def commands(tmp: Path) -> dict[str, list[str]]:
    py, cli = sys.executable, str(Path(sys.executable).with_name("compressml"))
    return {
        "import torch": [py, "-c", "import torch"],
        "compress": [cli, "compress", str(IMAGE), "-o", str(tmp / "k.cml"), "--force"],
        "decompress": [cli, "decompress", str(tmp / "k.cml"), "-o", str(tmp / "k.png"), "--force"],
        "upscale": [cli, "upscale", str(IMAGE), "-o", str(tmp / "k2.png"), "--force"],
        "api compress": [py, "-c", f"import compressml; open({str(tmp / 'a.cml')!r}, 'wb').write(compressml.compress({str(IMAGE)!r}))"],
        "import compressai": [py, "-c", "import compressai"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        cmds = commands(Path(d))
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        subprocess.run(cmds["compress"], check=True, capture_output=True, env=env)  # warm the file cache once
        for _ in range(args.rounds):
            for name, cmd in cmds.items():
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
                times.setdefault(name, []).append(time.perf_counter() - start)
    floor = statistics.median(times["import torch"])
    rows = {}
    print(f"{'command':<18} {'min':>7} {'median':>7} {'max':>7}  {'x import torch':>14}")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"seconds": ts, "min": min(ts), "median": med, "max": max(ts), "over_import_torch": med / floor}
        print(f"{name:<18} {min(ts):7.2f} {med:7.2f} {max(ts):7.2f}  {med / floor:14.2f}")
    write_json({"image": IMAGE.name, "rounds": args.rounds, "machine": machine_info(), "commands": rows}, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
