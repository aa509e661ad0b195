"""Training throughput: compressml's Lightning system against a bare PyTorch loop over the same
model, batch and data (images/s, and their ratio; target >= 0.97).

Both sides train the same LAE (``LAESystem``: mean-scale hyperprior at the premade size, 64/96
channels, by default) on the same DataLoader (``ImageFolderDataModule`` on the BSDS500 training
photos: random 128x128 crops, batch 8):
- Lightning: ``Trainer.fit`` as ``train.py`` runs it (automatic optimisation, every term logged to a
  CSV logger every 50 steps and averaged over the epoch, gradient clipping of the main group, and
  train.py's default callbacks: checkpointing, RNG state, LR monitor, progress bar, CPU-time budget),
  without validation; timed by a callback between step ``--warmup`` and the last step;
- bare: ``for x in loader: terms = system.compute_losses(x); (loss + aux).backward();
  clip; optimizer.step(); zero_grad()`` with the same optimizer groups.
The two alternate ``--rounds`` times from the same initial weights; the table gives the median of each
and the median of the per-round ratios. Data as the premade recipes read it: decoded images cached in
memory, no loader workers (``--workers 2 --no-cache`` reads the files in two worker processes).
``benchmarks/lightning_overhead.py`` breaks the difference down by feature.

    .venv/bin/python benchmarks/train_throughput.py
    .venv/bin/python benchmarks/train_throughput.py --steps 60 --rounds 3 --channels 128 --latent 192
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
from bench_common import RESULTS, ROOT, finish, machine_info

TRAIN = (ROOT / ".." / "shared" / "data" / "train" / "bsd200").resolve()


def make_system(channels: int, latent: int, seed: int, **options):
    import torch

    from compressml.systems import LAESystem

    torch.manual_seed(seed)
    return LAESystem(
        net={"arch": "mean_scale", "channels": channels, "latent_channels": latent},
        g={"_target_": "compressml.g.RateDistortion", "lmbda": 0.0067},
        optimizer={"_target_": "torch.optim.Adam", "lr": 1e-4},
        scheduler=None,
        log_images=0,
        real_bpp_images=0,
        **options,
    )


class _StepTimer:
    """Lightning callback: wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int):
        from pytorch_lightning import Callback

        outer = self

        class Timer(Callback):
            def on_train_batch_start(self, trainer, *args):
                if trainer.global_step == outer.warmup:
                    outer.start = time.perf_counter()

            def on_train_batch_end(self, trainer, *args):
                outer.end = time.perf_counter()

        self.warmup, self.start, self.end = warmup, None, None
        self.callback = Timer()


def lightning_images_per_s(system, datamodule, steps: int, warmup: int, device: str, precision: str = "32-true") -> float:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger

    from compressml.callbacks import CPUTimeBudget, ModelCheckpoint, PlateauOnResume, RNGState

    timer = _StepTimer(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        # train.py's default callbacks (conf/callbacks/default.yaml) and logging interval
        callbacks = [
            ModelCheckpoint(dirpath=tmp, monitor="val/loss", save_last=True),
            RNGState(),
            PlateauOnResume(),
            LearningRateMonitor(logging_interval="step"),
            TQDMProgressBar(refresh_rate=10),
            CPUTimeBudget(seconds=1e9),
            timer.callback,
        ]
        trainer = pl.Trainer(
            accelerator=device,
            devices=1,
            precision=precision,
            max_steps=warmup + steps,
            max_epochs=-1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_model_summary=False,
            logger=CSVLogger(tmp),
            log_every_n_steps=50,
            callbacks=callbacks,
        )
        trainer.fit(system, datamodule=datamodule)
    return steps * datamodule.batch_size / (timer.end - timer.start)


def bare_images_per_s(system, loader, steps: int, warmup: int, device: str) -> float:
    import torch

    system = system.to(device).train()
    opt = system.configure_optimizers()["optimizer"]
    main = system._main_parameters()
    done, start = 0, None
    while done < warmup + steps:
        for x in loader:
            if done == warmup:
                start = time.perf_counter()
            x = x.to(device)
            terms = system.compute_losses(x)
            (terms["loss"] + terms["aux_loss"]).backward()
            torch.nn.utils.clip_grad_norm_(main, system.hparams.clip_max_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done == warmup + steps:
                break
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * loader.batch_size / (time.perf_counter() - start)


def print_tables(results: dict) -> None:
    print(
        f"\nTraining throughput, {results['settings']['model']} batch {results['settings']['batch']} "
        f"crop {results['settings']['crop']} on {results['device']} ({results['settings']['steps']} timed steps, median of {len(results['rounds'])})"
    )
    print(f"{'':<12} {'images/s':>9}")
    print(f"{'Lightning':<12} {results['lightning_images_per_s']:9.2f}")
    print(f"{'bare loop':<12} {results['bare_images_per_s']:9.2f}")
    print(
        f"ratio Lightning / bare: {results['ratio']:.3f} (per round: median {results['ratio_median_of_rounds']:.3f}, "
        f"lowest {results['ratio_min_of_rounds']:.3f}; target >= 0.97)"
    )


def throughput_parser(doc: str, out: Path, rounds: int) -> argparse.ArgumentParser:
    """The options every training-throughput benchmark takes (steps, warm-up, rounds, batch, crop, data, output)."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0].replace("\n", " "),
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--train-root", type=Path, default=TRAIN)
    p.add_argument("--out", type=Path, default=out)
    return p


def main(argv: list[str] | None = None) -> int:
    import torch

    from compressml.data import ImageFolderDataModule

    p = throughput_parser(__doc__, RESULTS / "train_throughput.json", rounds=3)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--latent", type=int, default=96)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dm = ImageFolderDataModule(
        root=args.train_root,
        split="ratio",
        val_ratio=0.05,
        batch_size=args.batch,
        crop_size=args.crop,
        val_crop_size=args.crop,
        num_workers=args.workers,
        cache=args.cache,
        repeat=20,
    )
    dm.setup("fit")
    base = make_system(args.channels, args.latent, seed=0)
    rounds = []
    for r in range(args.rounds):
        order = ("lightning", "bare") if r % 2 == 0 else ("bare", "lightning")
        row = {}
        for side in order:
            system = copy.deepcopy(base)
            if side == "lightning":
                row[side] = lightning_images_per_s(system, dm, args.steps, args.warmup, "gpu" if device == "cuda" else "cpu")
            else:
                row[side] = bare_images_per_s(system, dm.train_dataloader(), args.steps, args.warmup, device)
        print(f"round {r + 1}: Lightning {row['lightning']:.2f}, bare {row['bare']:.2f} images/s", flush=True)
        rounds.append(row)
    lightning = statistics.median(r["lightning"] for r in rounds)
    bare = statistics.median(r["bare"] for r in rounds)
    results = {
        "benchmark": "train_throughput",
        "machine": machine_info(),
        "device": device,
        "settings": {
            "model": f"mean_scale {args.channels}/{args.latent}",
            "batch": args.batch,
            "crop": args.crop,
            "steps": args.steps,
            "warmup": args.warmup,
            "workers": args.workers,
            "cache": args.cache,
            "data": str(args.train_root),
        },
        "rounds": rounds,
        "lightning_images_per_s": lightning,
        "bare_images_per_s": bare,
        "ratio": lightning / bare,
        "ratio_median_of_rounds": statistics.median(r["lightning"] / r["bare"] for r in rounds),
        "ratio_min_of_rounds": min(r["lightning"] / r["bare"] for r in rounds),
    }
    return finish(results, args.out, print_tables, started)


if __name__ == "__main__":
    sys.exit(main())
