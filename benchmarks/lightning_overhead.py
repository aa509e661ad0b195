"""Where Lightning's per-step time goes: milliseconds per training step of the machinery around the
model (loop, hooks, logging, callbacks), measured on a model too small to cost anything, one
feature added at a time, against a bare PyTorch loop over the same system and batches.

The model is compressml's ``LAESystem`` (the same ``training_step``, the same logged terms, the
same optimizer groups and gradient clipping as ``train.py``) with a 4-channel mean-scale network
on 16x16 crops of one cached image, so that a step costs about a millisecond of computation and
what is left is the overhead each feature adds. Each row is the median of ``--rounds`` runs of
``--steps`` steps (after ``--warmup``); the last column divides the overhead by the step time of
the premade-size model (``--step-ms``, or measured by ``benchmarks/train_throughput.py``).

    .venv/bin/python benchmarks/lightning_overhead.py
    .venv/bin/python benchmarks/lightning_overhead.py --steps 400 --rounds 5 --step-ms 200
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, finish, machine_info


def tiny_system():
    import torch

    from compressml.systems import LAESystem

    torch.manual_seed(0)
    return LAESystem(
        net={"arch": "mean_scale", "channels": 4, "latent_channels": 4},
        g={"_target_": "compressml.g.RateDistortion", "lmbda": 0.0067},
        optimizer={"_target_": "torch.optim.Adam", "lr": 1e-4},
        scheduler=None,
        log_images=0,
        real_bpp_images=0,
    )


class Batches:
    """A DataLoader stand-in of fixed random batches (no data-loading cost on either side)."""

    def __init__(self, n: int, batch: int, crop: int):
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        g = torch.Generator().manual_seed(0)
        self.data = torch.rand(n * batch, 3, crop, crop, generator=g)
        self.loader = DataLoader(TensorDataset(self.data), batch_size=batch, collate_fn=lambda items: torch.stack([t[0] for t in items]))


def features(name: str, tmp: str) -> dict:
    """The Trainer arguments of one row: each row adds what train.py's default configs turn on."""
    from pytorch_lightning.callbacks import LearningRateMonitor, TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger

    from compressml.callbacks import CPUTimeBudget, ModelCheckpoint, PlateauOnResume, RNGState

    rows = ["minimal", "+ csv logger", "+ progress bar", "+ lr monitor", "+ cpu budget", "+ checkpoint, rng, plateau"]
    upto = rows.index(name)
    kw = {"logger": False, "enable_progress_bar": False, "callbacks": [], "enable_checkpointing": False}
    if upto >= 1:
        kw["logger"] = CSVLogger(tmp)
        kw["log_every_n_steps"] = 50
    if upto >= 2:
        kw["enable_progress_bar"] = True
        kw["callbacks"].append(TQDMProgressBar(refresh_rate=100))
    if upto >= 3:
        kw["callbacks"].append(LearningRateMonitor(logging_interval="step"))
    if upto >= 4:
        kw["callbacks"].append(CPUTimeBudget(seconds=1e9))
    if upto >= 5:
        kw["enable_checkpointing"] = True
        kw["callbacks"] += [ModelCheckpoint(dirpath=tmp, monitor="val/loss", save_last=True), RNGState(), PlateauOnResume()]
    return kw


ROWS = ["minimal", "+ csv logger", "+ progress bar", "+ lr monitor", "+ cpu budget", "+ checkpoint, rng, plateau"]


def lightning_ms(system, batches: Batches, steps: int, warmup: int, row: str) -> float:
    import pytorch_lightning as pl
    from train_throughput import _StepTimer

    timer = _StepTimer(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        kw = features(row, tmp)
        kw["callbacks"].append(timer.callback)
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=warmup + steps,
            max_epochs=-1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_model_summary=False,
            **kw,
        )
        trainer.fit(system, train_dataloaders=batches.loader)
    return 1000 * (timer.end - timer.start) / steps


def bare_ms(system, batches: Batches, steps: int, warmup: int) -> float:
    import torch

    system.train()
    opt = system.configure_optimizers()["optimizer"]
    done, start = 0, None
    while done < warmup + steps:
        for x in batches.loader:
            if done == warmup:
                start = time.perf_counter()
            terms = system.compute_losses(x)
            (terms["loss"] + terms["aux_loss"]).backward()
            torch.nn.utils.clip_grad_norm_(system._main_parameters(), system.hparams.clip_max_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done == warmup + steps:
                break
    return 1000 * (time.perf_counter() - start) / steps


def print_tables(results: dict) -> None:
    s = results["settings"]
    print(f"\nLightning per-step overhead ({s['steps']} steps, median of {s['rounds']}; tiny model, batch {s['batch']} of {s['crop']}²)")
    print(f"{'':<30} {'ms/step':>8} {'overhead ms':>12} {'of a ' + str(s['step_ms']) + ' ms step':>18}")
    for row in results["rows"]:
        print(f"{row['row']:<30} {row['ms']:8.2f} {row['overhead_ms']:12.2f} {100 * row['fraction']:17.1f}%")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=16)
    p.add_argument("--step-ms", type=float, default=200.0, help="the premade-size model's step time, for the last column")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "lightning_overhead.json")
    args = p.parse_args(argv)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    batches = Batches(args.warmup + args.steps, args.batch, args.crop)
    base = tiny_system()
    times: dict[str, list[float]] = {"bare loop": [], **{r: [] for r in ROWS}}
    for r in range(args.rounds):
        for row in times:
            system = copy.deepcopy(base)
            ms = (
                bare_ms(system, batches, args.steps, args.warmup)
                if row == "bare loop"
                else lightning_ms(system, batches, args.steps, args.warmup, row)
            )
            times[row].append(ms)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()), flush=True)
    bare = statistics.median(times["bare loop"])
    rows = []
    for row, values in times.items():
        ms = statistics.median(values)
        rows.append({"row": row, "ms": ms, "rounds": values, "overhead_ms": ms - bare, "fraction": (ms - bare) / args.step_ms})
    results = {
        "benchmark": "lightning_overhead",
        "machine": machine_info(),
        "settings": {k: getattr(args, k) for k in ("steps", "warmup", "rounds", "batch", "crop", "step_ms", "threads")},
        "rows": rows,
    }
    return finish(results, args.out, print_tables, started)


if __name__ == "__main__":
    sys.exit(main())
