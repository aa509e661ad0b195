"""Training speed options of the LAE system, one added at a time, and what bf16 costs in fidelity.

Throughput (images/s of ``Trainer.fit``, as in train_throughput.py) of the premade LAE recipe's
model and batch (mean-scale 64/96, random 128x128 crops of the BSDS500 training photos, batch 8):
1. float32, images decoded from files by 2 DataLoader workers (the first premade recipe);
2. + ``data.cache=true`` with ``data.num_workers=0`` (decoded images kept in memory);
3. + ``model.channels_last=true``;
4. + ``trainer.precision=bf16-mixed`` (entropy models stay float32);
5. + ``model.quantization=ste``;
6. float32 and the cache (row 2) + ``model.compile=true`` (``torch.compile`` of the transforms; its
   compilation happens in the warm-up steps, before the timing starts), and 7. the same with channels_last.
Fidelity of bf16-mixed against float32 on the premade lae-q2 model, on the same batch and the same
noise draw: the bpp estimate, the MSE, and the cosine between the two gradients of the loss.

    .venv/bin/python benchmarks/train_options.py
    .venv/bin/python benchmarks/train_options.py --steps 60 --rounds 3
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, finish, machine_info
from train_throughput import lightning_images_per_s, make_system, throughput_parser

# (label, data options, system options, trainer precision): each row adds one option
SETTINGS = [
    ("float32, files, 2 workers", {"num_workers": 2}, {}, "32-true"),
    ("+ data.cache, 0 workers", {"num_workers": 0, "cache": True}, {}, "32-true"),
    ("+ channels_last", {"num_workers": 0, "cache": True}, {"channels_last": True}, "32-true"),
    ("+ bf16-mixed", {"num_workers": 0, "cache": True}, {"channels_last": True}, "bf16-mixed"),
    ("+ quantization=ste", {"num_workers": 0, "cache": True}, {"channels_last": True, "quantization": "ste"}, "bf16-mixed"),
    # torch.compile of the transforms, on the float32 rows above (this CPU has no bf16 units)
    ("float32, cache, + torch.compile", {"num_workers": 0, "cache": True}, {"compile": True}, "32-true"),
    (
        "float32, cache, channels_last, + torch.compile",
        {"num_workers": 0, "cache": True},
        {"channels_last": True, "compile": True},
        "32-true",
    ),
]


def fidelity(batch, lmbda: float = 0.0067) -> dict:
    """bf16-mixed against float32 on the premade lae-q2 weights: same batch, same noise."""
    import torch

    from compressml import metrics
    from compressml.codec.bundle import load_bundle
    from compressml.models.lae import forward_padded
    from compressml.premade import HERE

    net, _ = load_bundle(HERE / "lae-q2")
    net.train()
    n, _, h, w = batch.shape

    def run(bf16: bool):
        net.zero_grad()
        torch.manual_seed(0)
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward_padded(net, batch)
        bpp = metrics.bpp_from_likelihoods(out["likelihoods"], n * h * w)
        mse = torch.mean((out["x_hat"] - batch) ** 2)
        (lmbda * 255**2 * mse + bpp).backward()
        grad = torch.cat([p.grad.flatten() for name, p in net.named_parameters() if p.grad is not None and not name.endswith("quantiles")])
        return bpp.item(), mse.item(), grad

    bpp32, mse32, g32 = run(False)
    bpp16, mse16, g16 = run(True)
    return {
        "bpp_float32": bpp32,
        "bpp_bf16": bpp16,
        "mse_float32": mse32,
        "mse_bf16": mse16,
        "gradient_cosine": torch.nn.functional.cosine_similarity(g32, g16, dim=0).item(),
        "gradient_norm_ratio": (g16.norm() / g32.norm()).item(),
    }


def print_tables(results: dict) -> None:
    s = results["settings"]
    print(
        f"\nLAE training speed options, {s['model']} batch {s['batch']} crop {s['crop']} on {results['device']} "
        f"({s['steps']} timed steps, median of {s['rounds']})"
    )
    print(f"{'setting':<28} {'images/s':>9} {'steps/s':>8} {'speed-up':>9}")
    first = results["rows"][0]["images_per_s"]
    for row in results["rows"]:
        print(
            f"{row['setting']:<28} {row['images_per_s']:9.1f} {row['images_per_s'] / s['batch']:8.2f} {row['images_per_s'] / first:8.2f}x"
        )
    f = results["fidelity"]
    print(
        f"bf16-mixed vs float32 on lae-q2: bpp {f['bpp_bf16']:.4f} vs {f['bpp_float32']:.4f}, "
        f"MSE {f['mse_bf16']:.6f} vs {f['mse_float32']:.6f}, gradient cosine {f['gradient_cosine']:.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    import torch

    from compressml.data import ImageFolderDataModule

    p = throughput_parser(__doc__, RESULTS / "train_options.json", rounds=2)
    p.add_argument("--rows", type=int, nargs="+", default=None, help="only these rows (1-based), e.g. --rows 2 6")
    args = p.parse_args(argv)
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    modules = {}
    rows = []
    for index, (label, data, options, precision) in enumerate(SETTINGS, 1):
        if args.rows and index not in args.rows:
            continue
        key = tuple(sorted(data.items()))
        if key not in modules:
            modules[key] = ImageFolderDataModule(
                root=args.train_root,
                split="ratio",
                val_ratio=0.05,
                batch_size=args.batch,
                crop_size=args.crop,
                val_crop_size=args.crop,
                repeat=20,
                **data,
            )
            modules[key].setup("fit")
        speeds = []
        for _ in range(args.rounds):
            system = make_system(64, 96, seed=0, **options)  # the same seed: the same initial weights
            speeds.append(
                lightning_images_per_s(system, modules[key], args.steps, args.warmup, "gpu" if device == "cuda" else "cpu", precision)
            )
        rows.append(
            {
                "setting": label,
                "data": data,
                "model": options,
                "precision": precision,
                "rounds": speeds,
                "images_per_s": statistics.median(speeds),
            }
        )
        print(f"{label}: {rows[-1]['images_per_s']:.1f} images/s", flush=True)
    batch = next(iter(next(iter(modules.values())).train_dataloader()))[: args.batch]
    results = {
        "benchmark": "train_options",
        "machine": machine_info(),
        "device": device,
        "settings": {
            "model": "mean_scale 64/96",
            "batch": args.batch,
            "crop": args.crop,
            "steps": args.steps,
            "rounds": args.rounds,
            "data": str(args.train_root),
        },
        "rows": rows,
        "fidelity": fidelity(batch),
    }
    return finish(results, args.out, print_tables, started)


if __name__ == "__main__":
    sys.exit(main())
