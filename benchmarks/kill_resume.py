"""Training that survives being killed: SIGKILL a run at random moments, resume it from ``last.ckpt``
each time, and compare the end with a run that was never killed.

A small LAE (or ``--family mllae``: MLLAE with its prior counts) trains on generated photos-like
images for ``--steps`` steps, one epoch every ``--epoch-steps`` steps, a checkpoint at every epoch's
end. The killed run is started, killed (SIGKILL) at a random moment (up to a second) after it wrote a
checkpoint further on than the one the previous kill left (so kills land in training steps, in
validation and in checkpoint writes, and every attempt makes progress), restarted with
``ckpt_path=last.ckpt``, and so on ``--kills`` times, then left to finish. After every kill,
``last.ckpt`` must load; at the end, the killed run's step count, weights (every tensor, bit for
bit), optimiser state and validation metrics must equal the unkilled run's.

    .venv/bin/python benchmarks/kill_resume.py [--kills 20] [--steps 60]

Writes benchmarks/results/kill_resume.json. ``tests/test_kill_resume.py`` runs 3 kills.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {
    "lae": ["model=lae/mean_scale", "model.net.channels=8", "model.net.latent_channels=8"],
    "mllae": ["model=mllae", "model.bytes=16", "model.block=16", "model.channels=8", "model.residual_channels=8"],
}


def make_images(folder: Path, count: int = 6) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        base = rng.integers(0, 256, (9, 9, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((96, 96), Image.BICUBIC)
        img.save(folder / f"img{i}.png")
    return folder


def command(run_dir: Path, data: Path, family: str, steps: int, epoch_steps: int, resume: bool) -> list[str]:
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "trainer=smoke",
        "logger=csv",
        "data=folder",
        f"data.root={data}",
        "data.crop_size=64",
        "data.val_crop_size=64",
        "data.batch_size=2",
        "data.num_workers=0",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        f"trainer.limit_train_batches={epoch_steps}",
        "trainer.limit_val_batches=1",
        "seed=7",
        f"hydra.run.dir={run_dir}",
        *FAMILIES[family],
    ]
    if resume:
        cmd.append(f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    return cmd


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONHASHSEED": "0"}


def train_unkilled(run_dir: Path, data: Path, family: str, steps: int, epoch_steps: int) -> None:
    subprocess.run(
        command(run_dir, data, family, steps, epoch_steps, False),
        check=True,
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def train_killed(
    run_dir: Path, data: Path, family: str, steps: int, epoch_steps: int, kills: int, seed: int = 0, max_delay: float = 1.0
) -> list[dict]:
    """Run to the end, killed ``kills`` times; returns what each kill met (step of last.ckpt before and after)."""
    from compressml.checkpoints import read_checkpoint

    rng = random.Random(seed)
    last = run_dir / "checkpoints" / "last.ckpt"
    events: list[dict] = []
    resume, reached = False, -1

    def step_of_last() -> int:
        try:
            return int(read_checkpoint(last)["global_step"]) if last.exists() else -1
        except Exception:
            return -1

    while True:
        proc = subprocess.Popen(
            command(run_dir, data, family, steps, epoch_steps, resume),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if len(events) < kills:
            while proc.poll() is None and step_of_last() <= reached:
                time.sleep(0.05)  # a checkpoint further on than the last kill's: this attempt made progress
            time.sleep(rng.uniform(0, max_delay))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                reached = int(read_checkpoint(last)["global_step"])  # loads: every write was atomic
                events.append({"kill": len(events) + 1, "last_ckpt_step": reached})
                resume = True
                continue
        if proc.wait() != 0:
            raise RuntimeError(f"the resumed run failed (exit {proc.returncode})")
        return events


def compare(a: Path, b: Path) -> dict:
    """What differs between two final checkpoints (empty lists: nothing)."""
    import torch

    ca = torch.load(a / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    cb = torch.load(b / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    tensors = [k for k in ca["state_dict"] if not torch.equal(ca["state_dict"][k], cb["state_dict"].get(k, torch.empty(0)))]

    def flat(x, prefix=""):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from flat(v, f"{prefix}{k}.")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                yield from flat(v, f"{prefix}{i}.")
        else:
            yield prefix, x

    opt_a, opt_b = dict(flat(ca["optimizer_states"])), dict(flat(cb["optimizer_states"]))
    optimizer = [k for k in opt_a if not (torch.equal(opt_a[k], opt_b[k]) if torch.is_tensor(opt_a[k]) else opt_a[k] == opt_b.get(k))]
    return {
        "steps": (int(ca["global_step"]), int(cb["global_step"])),
        "tensors_differing": tensors,
        "optimizer_entries_differing": optimizer,
        "schedulers_equal": ca.get("lr_schedulers") == cb.get("lr_schedulers"),
        "val_metrics": (_last_val(a), _last_val(b)),
    }


def _last_val(run_dir: Path) -> dict:
    import csv

    rows = []
    for f in sorted(run_dir.rglob("metrics.csv")):
        with open(f) as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("val/loss")]
    if not rows:
        return {}
    last = max(rows, key=lambda r: int(r["step"]))
    return {k: float(v) for k, v in last.items() if k.startswith("val/") and v not in ("", None)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--epoch-steps", type=int, default=3)
    parser.add_argument("--family", choices=list(FAMILIES), default="lae")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=ROOT / "logs" / "kill_resume")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import shutil

    from bench_common import RESULTS, machine_info, write_json

    shutil.rmtree(args.work, ignore_errors=True)
    data = make_images(args.work / "images")
    started = time.time()
    train_unkilled(args.work / "unkilled", data, args.family, args.steps, args.epoch_steps)
    events = train_killed(args.work / "killed", data, args.family, args.steps, args.epoch_steps, args.kills, args.seed)
    result = compare(args.work / "unkilled", args.work / "killed")
    same = (
        result["steps"][0] == result["steps"][1] == args.steps
        and not result["tensors_differing"]
        and not result["optimizer_entries_differing"]
        and result["schedulers_equal"]
        and result["val_metrics"][0] == result["val_metrics"][1]
    )
    for e in events:
        print(f"kill {e['kill']:>2}: last.ckpt loads, at step {e['last_ckpt_step']}")
    print(
        f"{args.family}: {len(events)} kills; steps {result['steps']}; tensors differing {len(result['tensors_differing'])}; "
        f"optimiser entries differing {len(result['optimizer_entries_differing'])}; schedulers equal {result['schedulers_equal']}; "
        f"final validation equal {result['val_metrics'][0] == result['val_metrics'][1]} -> {'SAME' if same else 'DIFFERENT'}"
    )
    out = RESULTS / f"kill_resume_{args.family}.json"
    write_json(
        {
            "machine": machine_info(1),
            "family": args.family,
            "steps": args.steps,
            "kills": events,
            "comparison": result,
            "same_as_unkilled": same,
            "seconds": round(time.time() - started, 1),
        },
        out,
    )
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
