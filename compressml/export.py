"""Export bundles: a trained model (LAE, MLLAE or RED) as files that need neither Lightning nor pickle to use.

``export_bundle(checkpoint, out)`` writes into ``out``:

- ``weights.safetensors``: the network's state dict. For an LAE it is exactly CompressAI's
  state dict with updated CDF tables, so ``<Class>.from_state_dict`` loads it and its
  ``compress`` writes the same strings as compressml (no second copy is written); for an
  MLLAE or a RED it is the compressml module's state dict.
- ``manifest.json``: format, family, architecture, hyper-parameters, the weights
  fingerprint that ``.cml`` files carry (and ``compressml upscale`` compares), metrics at
  export time, SHA-256 of every file, library versions.
- ``encoder.pt`` / ``decoder.pt`` (codecs): the analysis transform g_a and the synthesis
  transform g_s as TorchScript; ``encoder.onnx`` / ``decoder.onnx``: the same with dynamic
  batch, height and width. GDN layers are exported as a plain equivalent with the
  reparametrized beta and gamma baked in (CompressAI's custom autograd lower bound does not
  export). An MLLAE's graphs work on blocks and include its quantizer.
- ``upscaler.pt`` / ``upscaler.onnx`` (RED, super-resolution): the whole network,
  low-resolution image in, high-resolution image out, with dynamic batch, height and width.
  The global skip's antialiased bicubic upscaling (``aten::_upsample_bicubic2d_aa``, which
  the ONNX exporter does not know, and which differs from ONNX's and PyTorch's plain bicubic:
  Keys a = -0.5 and weights renormalised at the borders) is exported as
  :class:`BicubicUpscale`, an equivalent made of transposed convolutions.

Every graph is checked against the PyTorch network when it is written (TorchScript reloaded,
ONNX run in onnxruntime).

The folder appears whole or not at all: files are written into a temporary folder
beside ``out`` and renamed into place. Reading a bundle is :mod:`compressml.codec.bundle`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressml.checkpoints import checkpoint_family, read_checkpoint
from compressml.codec.bundle import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    load_bundle,
    load_compressai,
)
from compressml.codec.families import FAMILIES, family, family_of
from compressml.errors import BundleError, CheckpointError, ConfigError
from compressml.fileio import file_mode, folder_mode, make_part_folder
from compressml.hashing import sha256_file
from compressml.models.graphs import BicubicUpscale, Graph, PlainGDN, plain_transform  # noqa: F401  (re-exported)

__all__ = ["export_bundle", "export_from_config", "load_bundle", "load_compressai", "format_summary"]

ONNX_OPSET = 17
GRAPH_TOLERANCE = 1e-3  # max |difference| to the PyTorch transform accepted when checking an exported graph


# -- reading the checkpoint -------------------------------------------------------------------


def net_from_checkpoint(ckpt: dict, path: Path) -> nn.Module:
    """The network of a checkpoint (its family builds it; no LightningModule, CDF tables included)."""
    name = checkpoint_family(ckpt)
    if name not in FAMILIES:
        raise CheckpointError(f"{path}: not a compressml checkpoint (family {name!r})")
    return family(name).net_from_checkpoint(ckpt, str(path))


def _plain_json(value: Any) -> Any:
    """Checkpoint values as strict JSON: tensors to numbers or lists, non-finite floats to null."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def checkpoint_metrics(ckpt: dict) -> dict:
    """What the checkpoint knows about training progress and quality when it was saved."""
    metrics: dict[str, Any] = {"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}
    monitored = []
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, Mapping) and state.get("monitor"):
            monitored.append(
                {"monitor": state["monitor"], "best_score": state.get("best_model_score"), "current_score": state.get("current_score")}
            )
    if monitored:
        metrics["model_checkpoint"] = monitored
    info = ckpt.get("compressml") or {}
    for key in ("best_val", "last_val"):
        if info.get(key):
            metrics[key] = info[key]
    return _plain_json(metrics)


# -- graphs -------------------------------------------------------------------


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _check_graph(what: str, diff: float) -> float:
    if not diff <= GRAPH_TOLERANCE:
        raise BundleError(f"exported {what} differs from the PyTorch transform by {diff:.3g} (> {GRAPH_TOLERANCE})")
    return diff


class NotExported(str):
    """Why a graph could not be written (an architecture whose transform does not script or trace):
    the bundle is written without it and its manifest says why."""


def _record_graphs(graphs: dict, checks: dict, key: str) -> None:
    """Measured differences into ``max_abs_diff``; graphs that could not be written out of the manifest's
    file list for that format, with the reason in their place (``<format>_error``)."""
    for file, result in checks.items():
        name = file.rsplit(".", 1)[0]
        if isinstance(result, NotExported):
            graphs[name].pop(key, None)
            graphs[name][f"{key}_error"] = str(result)
        else:
            graphs["max_abs_diff"][file] = result


def write_torchscript(specs: list[Graph], folder: Path) -> dict:
    """Script (not trace) every graph, so any input size runs; save and check them."""
    checks = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in specs:
            name, inp = f"{spec.name}.pt", spec.example
            try:
                scripted = torch.jit.script(spec.module)
            except Exception as e:  # TorchScript compiler errors have many types: the manifest says why
                checks[name] = NotExported(f"TorchScript cannot script it ({str(e).strip().splitlines()[0]})")
                continue
            torch.jit.save(scripted, str(folder / name))
            loaded = torch.jit.load(str(folder / name), map_location="cpu")
            with torch.no_grad():
                checks[name] = _check_graph(name, _max_diff(loaded(inp), spec.reference(inp)))
    return checks


def write_onnx(specs: list[Graph], folder: Path) -> dict:
    """ONNX graphs with dynamic batch/height/width, via the TorchScript-based exporter, checked in onnxruntime.

    The TorchScript-based exporter (``dynamo=False``) exports these plain conv stacks in well under a
    second and handles dynamic axes directly; the dynamo exporter needs newer onnx-ir/onnxscript than
    CompressAI's numpy<2 pin allows here, and takes several seconds per graph.
    """
    import onnxruntime as ort

    checks = {}
    for spec in specs:
        name, inp, in_name, out_name = f"{spec.name}.onnx", spec.example, spec.input_name, spec.output_name
        axes = {0: "batch", 2: "height", 3: "width"}
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    spec.module,
                    (inp,),
                    str(folder / name),
                    dynamo=False,
                    opset_version=ONNX_OPSET,
                    input_names=[in_name],
                    output_names=[out_name],
                    dynamic_axes={in_name: axes, out_name: {0: "batch", 2: f"{out_name}_height", 3: f"{out_name}_width"}},
                )
        except Exception as e:  # exporter failures have many types: the manifest says why
            (folder / name).unlink(missing_ok=True)
            checks[name] = NotExported(f"the ONNX exporter cannot export it ({str(e).strip().splitlines()[0]})")
            continue
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
        out = session.run(None, {in_name: inp.numpy()})[0]
        with torch.no_grad():
            checks[name] = _check_graph(name, _max_diff(torch.from_numpy(out), spec.reference(inp)))
    return checks


# -- writing the bundle -------------------------------------------------------------------


def _versions(with_onnx: bool) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import compressai

    import compressml

    versions = {"compressml": compressml.__version__, "torch": torch.__version__, "compressai": compressai.__version__}
    for package in ("safetensors", *(("onnx", "onnxruntime") if with_onnx else ())):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


def _check_target(out: Path, checkpoint: Path, force: bool) -> None:
    """Refuse what must not be replaced, before any work is done."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise BundleError(f"{out} exists and is not empty (use force=true to replace it)")
        if not (out / MANIFEST).is_file():
            raise BundleError(f"{out} is not empty and is not an export bundle: refusing to replace it, even with force=true")
        if checkpoint.resolve().is_relative_to(out.resolve()):
            raise BundleError(f"{out} holds the checkpoint {checkpoint}: export to another folder")


def _missing_parents(path: Path) -> list[Path]:
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder onto ``out``; an existing bundle is swapped out first and removed after."""
    if not out.exists() or not any(out.iterdir()):
        os.replace(tmp, out)  # POSIX rename replaces an empty folder
        return
    old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def build_manifest(net: nn.Module, ckpt: dict, checkpoint: Path, folder: Path, graphs: dict) -> dict:
    from compressml.codec.lae import weights_fingerprint

    hparams = ckpt.get("hyper_parameters") or {}
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **family_of(net).manifest_fields(net, hparams),
        "fingerprint": weights_fingerprint(net).hex(),
        "hyper_parameters": _plain_json(hparams),
        "metrics": checkpoint_metrics(ckpt),
        "source_checkpoint": checkpoint.name,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "graphs": graphs,
        "files": files,
        "versions": _versions(with_onnx="onnx_opset" in graphs),
    }


HALF_MAX = 65504.0  # the largest finite float16


def round_to_half(net: nn.Module) -> set[str]:
    """Round the network's floating-point weights to float16 values (kept as float32 tensors), so
    that the float16 file stores exactly the network that is then fingerprinted and exported; the
    CDF tables of an LAE are computed again from the rounded weights. Tensors with values beyond
    float16's range stay float32. Returns the names of the rounded tensors."""
    from compressai.models.base import CompressionModel

    def round_all() -> set[str]:
        rounded = set()
        with torch.no_grad():
            for name, tensor in net.state_dict(keep_vars=True).items():
                if tensor.is_floating_point() and tensor.numel() and float(tensor.detach().abs().max()) <= HALF_MAX:
                    tensor.data.copy_(tensor.data.half().float())
                    rounded.add(name)
        return rounded

    rounded = round_all()
    if isinstance(net, CompressionModel):
        net.update(force=True)  # CDF tables from the rounded weights; this also rebuilds the scale table,
        rounded = round_all()  # which is rounded in turn (both sides index scales with the stored table)
    return rounded


def export_bundle(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    force: bool = False,
    onnx: bool = True,
    torchscript: bool = True,
    dtype: str = "float32",
) -> dict:
    """Write the export bundle of a checkpoint (LAE, MLLAE or RED) into ``out_dir``; returns a summary.

    ``out_dir`` must not exist or be empty; ``force`` replaces an existing bundle (a folder
    holding a manifest.json), never another non-empty folder. Nothing partial is left on failure.
    ``dtype="float16"`` stores the weights at half the size (:func:`round_to_half`): files made
    with the bundle then differ from those of the float32 checkpoint, whose fingerprint differs.
    """
    if dtype not in ("float32", "float16"):
        raise ConfigError(f"dtype must be float32 or float16, got {dtype!r}")
    started = time.time()
    checkpoint, out = Path(checkpoint_path), Path(out_dir)
    if out.name in ("", ".."):  # "." or "..": the folder's own name is needed for the temporary sibling
        out = out.resolve()
    _check_target(out, checkpoint, force)
    ckpt = read_checkpoint(checkpoint)
    net = net_from_checkpoint(ckpt, checkpoint)
    half = round_to_half(net) if dtype == "float16" else set()

    created = _missing_parents(out)
    tmp = make_part_folder(out)
    try:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
        state = {k: v.half() if k in half else v for k, v in state.items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})

        graphs: dict[str, Any] = {}
        if torchscript or onnx:
            specs, graphs = family_of(net).export_graphs(net)
            for spec in specs:
                graphs[spec.name].update(
                    {**({"torchscript": f"{spec.name}.pt"} if torchscript else {}), **({"onnx": f"{spec.name}.onnx"} if onnx else {})}
                )
            if torchscript:
                _record_graphs(graphs, write_torchscript(specs, tmp), "torchscript")
            if onnx:
                graphs["onnx_opset"] = ONNX_OPSET
                _record_graphs(graphs, write_onnx(specs, tmp), "onnx")

        manifest = build_manifest(net, ckpt, checkpoint, tmp, graphs)
        manifest["dtype"] = dtype
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.chmod(tmp, folder_mode())
        for p in tmp.iterdir():
            os.chmod(p, file_mode())  # as the umask gives, whatever the writing library chose
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    return {
        "out": str(out),
        "architecture": manifest["architecture"],
        "fingerprint": manifest["fingerprint"],
        "files": {**{name: entry["bytes"] for name, entry in manifest["files"].items()}, MANIFEST: (out / MANIFEST).stat().st_size},
        "max_abs_diff": graphs.get("max_abs_diff", {}),
        "seconds": round(time.time() - started, 2),
    }


def export_from_config(cfg: Mapping) -> dict:
    """``export_bundle`` from export.yaml's keys; missing required values are a one-line ConfigError."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"missing required config value(s): {', '.join(missing)} (e.g. checkpoint=PATH out=DIR)")
        cfg = OmegaConf.to_container(cfg, resolve=True)
    for key in ("checkpoint", "out"):
        if not cfg.get(key):
            raise ConfigError(f"{key} is required (python export.py checkpoint=PATH out=DIR)")
    return export_bundle(
        cfg["checkpoint"],
        cfg["out"],
        force=bool(cfg.get("force", False)),
        onnx=bool(cfg.get("onnx", True)),
        torchscript=bool(cfg.get("torchscript", True)),
        dtype=str(cfg.get("dtype") or "float32"),
    )


def format_summary(summary: dict) -> str:
    lines = [
        f"export bundle written to {summary['out']} in {summary['seconds']:.1f} s "
        f"(architecture {summary['architecture']}, weights {summary['fingerprint'][:12]})"
    ]
    for name, size in summary["files"].items():
        lines.append(f"  {name:<22} {size / 1024:>10.1f} KiB")
    if summary["max_abs_diff"]:
        worst = max(summary["max_abs_diff"].values())
        lines.append(f"graphs checked against PyTorch: max |difference| {worst:.2e}")
    return "\n".join(lines)
