"""Every LAE architecture of CompressAI's registry, measured: speed at CompressAI's default widths, then
rate-distortion per CPU hour for the most promising ones.

Three steps (each writes its part of benchmarks/results/architectures.json and prints its table):

``speed``   per architecture at CompressAI's default widths (conf/model/lae/<variant>.yaml): parameters,
            the time of one training step (batch 8 of 128x128 crops; float32, and with --bf16 bf16 autocast), and
            the encode and decode time per Kodak image through compressml's codec beside CompressAI's own
            ``compress``/``decompress`` on the same (untrained) weights. Run it while nothing else runs.
``train``   the chosen architectures (``--variants``, at small CPU widths) trained for the same CPU time
            each (``--budget`` CPU seconds, one thread per run, ``--parallel`` runs at once) with
            conf/experiment/architectures/cpu_budget.yaml on ../shared/data/train; ``--extend`` continues
            runs that exist to a larger budget (the CPU time used travels in the checkpoint), keeping
            each earlier budget's checkpoint as ``cpu<seconds>.ckpt``.
``kodak``   every kept checkpoint of those runs coded for real on Kodak: bpp, PSNR, and the objective
            it was trained for (lambda * 255^2 * MSE + bpp); which architecture gives the lowest at each
            budget, and which improves fastest per CPU hour.

    .venv/bin/python benchmarks/architectures.py speed
    .venv/bin/python benchmarks/architectures.py train --budget 1200
    .venv/bin/python benchmarks/architectures.py train --extend --budget 4800 --variants elic2022_official mean_scale
    .venv/bin/python benchmarks/architectures.py kodak [--only-new]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_common import RESULTS, ROOT, machine_info, median, write_json

OUT = RESULTS / "architectures.json"
RUNS = ROOT / "logs" / "architectures"
KODAK = (ROOT / ".." / "shared" / "data" / "kodak").resolve()
LMBDA = 0.0067  # conf/experiment/architectures/cpu_budget.yaml
# small widths that train on a CPU (N, M; M = N for cheng2020): the premade family's 64/96 class
CPU_WIDTHS = {
    "mean_scale": (64, 96),
    "hyperprior": (64, 96),
    "factorized": (64, 96),
    "bmshj2018_factorized_relu": (64, 96),
    "mbt2018": (64, 96),
    "cheng2020_anchor": (64, None),
    "cheng2020_attn": (64, None),
    "cheng2020_anchor_checkerboard": (64, None),
    "elic2022_official": (64, 128),
    "elic2022_chandelier": (64, 128),
}
DEFAULT_TRAINED = ["mean_scale", "mbt2018", "cheng2020_anchor_checkerboard", "elic2022_official"]


def load_results() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {}


def save_results(part: str, value) -> None:
    results = load_results()
    results[part] = value
    write_json(results, OUT)
    print(f"wrote {OUT.relative_to(ROOT)} ({part})")


def variant_widths(variant: str) -> tuple[int, int | None]:
    """CompressAI's default widths, as the variant's YAML sets them."""
    from omegaconf import OmegaConf

    net = OmegaConf.load(ROOT / "conf" / "model" / "lae" / f"{variant}.yaml").net
    return int(net.channels), (None if net.latent_channels is None else int(net.latent_channels))


# -- speed -------------------------------------------------------------------------------------------


def step_seconds(net, precision: str, repeats: int) -> float:
    import torch

    from compressml.models.lae import architecture_of, forward_padded

    quantization = "ste" if architecture_of(net).quantization_refusal("noise") else "noise"

    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(8, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = forward_padded(net, x, quantization)
            bits = sum(-torch.log2(v.float().clamp_min(1e-9)).sum() for v in out["likelihoods"].values())
            loss = bits / x[:, 0].numel() + LMBDA * 255**2 * torch.mean((out["x_hat"] - x) ** 2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms the allocator and the kernels
            times.append(time.perf_counter() - start)
    return median(times)


def coding_seconds(net, images: list, repeats: int) -> dict:
    import torch

    from compressml.codec import container as cml
    from compressml.codec import lae as lae_codec
    from compressml.models.padding import pad_to_multiple

    net.eval()
    net.update(force=True)
    fingerprint = lae_codec.weights_fingerprint(net)
    with torch.no_grad():  # once per model and process: the decoder's shape template (expected_layout)
        lae_codec.decode(net, lae_codec.encode(net, lae_codec.SourceImage(rgb=images[0][..., :64, :64]), fingerprint), fingerprint)
    ours_enc, ours_dec, cai_enc, cai_dec, same = [], [], [], [], True
    for rgb in images:
        source = lae_codec.SourceImage(rgb=rgb)
        padded, _ = pad_to_multiple(rgb[None], lae_codec.stride_of(net))
        for _ in range(repeats):
            with torch.no_grad():
                t = time.perf_counter()
                container = lae_codec.encode(net, source, fingerprint)
                data = container.to_bytes()
                ours_enc.append(time.perf_counter() - t)
                t = time.perf_counter()
                lae_codec.decode(net, cml.parse(data), fingerprint)
                ours_dec.append(time.perf_counter() - t)
                t = time.perf_counter()
                out = net.compress(padded)
                cai_enc.append(time.perf_counter() - t)
                t = time.perf_counter()
                net.decompress(out["strings"], out["shape"])
                cai_dec.append(time.perf_counter() - t)
            same &= lae_codec.coded_strings(container) == [s[0] for s in out["strings"]]
        del data
    n = len(images)
    per = lambda v: sum(v) / n / repeats
    return {
        "encode_s": per(ours_enc),
        "decode_s": per(ours_dec),
        "compressai_encode_s": per(cai_enc),
        "compressai_decode_s": per(cai_dec),
        "encode_ratio": sum(ours_enc) / sum(cai_enc),
        "decode_ratio": sum(ours_dec) / sum(cai_dec),
        "same_strings": bool(same),
    }


def kodak_tensors(count: int) -> list:
    from compressml.codec.files import read_source

    files = sorted(KODAK.glob("kodim*.png"))[:count]
    if not files:
        sys.exit(f"no Kodak images in {KODAK}")
    return [read_source(f).rgb for f in files]


def speed(args) -> None:
    import torch

    from compressml.models.lae import build_lae, variants

    torch.set_num_threads(args.threads)
    rows = []
    for spec in variants():
        n, m = variant_widths(spec.variant)
        torch.manual_seed(0)
        net = build_lae(spec.name, n, m)
        row = {
            "variant": spec.variant,
            "compressai": spec.registry_name,
            "context": spec.context,
            "N": n,
            "M": m if m else n,
            "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
        }
        row["step_s_fp32"] = step_seconds(net, "fp32", args.repeats)
        if args.bf16:  # emulated (and ~14x slower) on a CPU without AVX512-BF16
            row["step_s_bf16"] = step_seconds(net, "bf16", args.repeats)
        images = kodak_tensors(args.serial_images if spec.serial else args.images)
        row.update(coding_seconds(net, images, 1), kodak_images=len(images))
        rows.append(row)
        bf16 = f" / {row['step_s_bf16']:.3f} s bf16" if "step_s_bf16" in row else ""
        print(
            f"{spec.variant:<31} {row['params_M']:6.2f} M  step {row['step_s_fp32']:.3f} s fp32{bf16}  "
            f"enc {row['encode_s']:.2f} s ({row['encode_ratio']:.3f}x)  dec {row['decode_s']:.2f} s ({row['decode_ratio']:.3f}x)",
            flush=True,
        )
    save_results("speed", {"machine": machine_info(args.threads), "batch": "8 x 3 x 128 x 128", "rows": rows})


# -- training at equal CPU time ---------------------------------------------------------------------------


def run_dir(variant: str) -> Path:
    return RUNS / variant


def train_command(variant: str, budget: float, resume: Path | None) -> list[str]:
    n, m = CPU_WIDTHS[variant]
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=architectures/cpu_budget",
        f"model=lae/{variant}",
        f"model.net.channels={n}",
        f"model.net.latent_channels={'null' if m is None else m}",
        f"callbacks.cpu_budget.seconds={budget}",
        f"hydra.run.dir={run_dir(variant)}",
    ]
    if resume is not None:
        cmd.append(f"ckpt_path={resume}")
    return cmd


def cpu_used(ckpt: Path) -> float:
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return float(next(v for k, v in state.get("callbacks", {}).items() if k.startswith("CPUTimeBudget"))["used"])


def train(args) -> None:
    import shutil

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline")
    pending = []
    for variant in args.variants:
        last = run_dir(variant) / "checkpoints" / "last.ckpt"
        if args.extend:
            if not last.is_file():
                sys.exit(f"{variant}: no run to extend ({last})")
            kept = run_dir(variant) / "checkpoints" / f"cpu{round(cpu_used(last))}.ckpt"
            shutil.copy2(last, kept)
            pending.append((variant, train_command(variant, args.budget, last)))
        else:
            if last.is_file():
                sys.exit(f"{variant}: {run_dir(variant)} exists (use --extend, or remove it)")
            pending.append((variant, train_command(variant, args.budget, None)))
    running: list[tuple[str, subprocess.Popen, float]] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            variant, cmd = pending.pop(0)
            run_dir(variant).mkdir(parents=True, exist_ok=True)
            log = open(run_dir(variant) / f"train_{int(time.time())}.log", "w")
            print(f"start {variant}: {' '.join(cmd[1:])}", flush=True)
            running.append((variant, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), time.time()))
        time.sleep(10)
        for item in list(running):
            variant, proc, started = item
            if proc.poll() is not None:
                running.remove(item)
                print(f"done  {variant}: exit {proc.returncode} after {(time.time() - started) / 60:.1f} min", flush=True)


# -- Kodak ---------------------------------------------------------------------------------------------


def kodak(args) -> None:
    import torch

    from compressml.codec import container as cml
    from compressml.codec.files import CodecModel, read_source
    from compressml.evaluation import EvalImage, quality

    torch.set_num_threads(args.threads)
    images = [(f.name, read_source(f)) for f in sorted(KODAK.glob("kodim*.png"))[: args.images]]
    earlier = load_results().get("kodak", {}).get("rows", []) if args.only_new else []
    known = {(r["variant"], round(r["cpu_seconds"])) for r in earlier if r["images"] == len(images)}
    rows = [r for r in earlier if (r["variant"], round(r["cpu_seconds"])) in known]
    for variant in sorted(p.name for p in RUNS.iterdir() if p.is_dir()) if RUNS.is_dir() else []:
        folder = run_dir(variant) / "checkpoints"
        ckpts = sorted(folder.glob("cpu*.ckpt"), key=lambda p: int(p.stem[3:])) + (
            [folder / "last.ckpt"] if (folder / "last.ckpt").is_file() else []
        )
        for ckpt in ckpts:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            if (variant, round(cpu_used(ckpt))) in known:
                continue
            known.add((variant, round(cpu_used(ckpt))))
            model = CodecModel.load(ckpt)
            bpp, psnr, loss, enc, dec = [], [], [], [], []
            for name, source in images:
                start = time.perf_counter()
                data = model.encode(source).to_bytes()
                enc.append(time.perf_counter() - start)
                start = time.perf_counter()
                decoded = model.decode(cml.parse(data))
                dec.append(time.perf_counter() - start)
                h, w = source.rgb.shape[-2:]
                ref, rec = EvalImage.from_tensor(name, source.rgb), EvalImage.from_tensor(name, decoded.rgb)
                q = quality(rec.rgb, ref.rgb)
                b = 8 * len(data) / (h * w)
                mse = 10 ** (-q["psnr"] / 10)
                bpp.append(b), psnr.append(q["psnr"]), loss.append(LMBDA * 255**2 * mse + b)
            mean = lambda v: sum(v) / len(v)
            row = {
                "variant": variant,
                "checkpoint": ckpt.name,
                "cpu_seconds": cpu_used(ckpt),
                "steps": int(state["global_step"]),
                "net": state["hyper_parameters"]["net"],
                "params_M": sum(
                    v.numel()
                    for k, v in state["state_dict"].items()
                    if k.startswith("net.") and v.is_floating_point() and "_cdf" not in k and "scale_table" not in k
                )
                / 1e6,
                "kodak_bpp": mean(bpp),
                "kodak_psnr": mean(psnr),
                "kodak_objective": mean(loss),
                "encode_s": mean(enc),
                "decode_s": mean(dec),
                "images": len(images),
            }
            rows.append(row)
            print(
                f"{variant:<31} {row['cpu_seconds'] / 60:6.1f} CPU-min {row['steps']:6d} steps  {row['kodak_bpp']:.4f} bpp "
                f"{row['kodak_psnr']:.2f} dB  objective {row['kodak_objective']:.4f}  dec {row['decode_s']:.2f} s",
                flush=True,
            )
    save_results(
        "kodak", {"machine": machine_info(args.threads), "lmbda": LMBDA, "data": "../shared/data/train (671 photos)", "rows": rows}
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=4, help="Kodak images coded per architecture")
    p.add_argument("--serial-images", type=int, default=1, help="for the serial context models (seconds per image)")
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast steps (fast only with AVX512-BF16 or a GPU)")
    p = sub.add_parser("train")
    p.add_argument("--variants", nargs="+", default=DEFAULT_TRAINED)
    p.add_argument("--budget", type=float, default=1200.0, help="CPU seconds per run")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--extend", action="store_true")
    p = sub.add_parser("kodak")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=24)
    p.add_argument(
        "--only-new", action="store_true", help="keep the rows already in the JSON; code only checkpoints at CPU budgets not measured yet"
    )
    args = parser.parse_args()
    {"speed": speed, "train": train, "kodak": kodak}[args.step](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
