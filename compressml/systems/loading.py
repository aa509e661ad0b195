"""Loading any family's checkpoint safely: ``weights_only=True``, dispatch on the stored family."""

from __future__ import annotations

from pathlib import Path

import torch

from compressml.checkpoints import checkpoint_family, read_checkpoint
from compressml.errors import CheckpointError, CompressMLError, first_line

__all__ = [
    "checkpoint_family",
    "init_weights",
    "load_lae",
    "load_system",
    "model_family",
    "read_checkpoint",
    "save_checkpoint",
    "system_class",
]


def model_family(path: str | Path) -> str | None:
    """The family of a checkpoint or an export bundle (folder or manifest.json), without building it."""
    import json

    from compressml.codec.bundle import MANIFEST

    path = Path(path)
    if path.is_dir() or path.name == MANIFEST:
        manifest = path / MANIFEST if path.is_dir() else path
        try:
            return json.loads(manifest.read_text()).get("family")
        except (OSError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{path}: not a readable export bundle ({first_line(e)})") from None
    return checkpoint_family(read_checkpoint(path, lazy=True))


def system_class(family: str | None):
    from compressml.systems.lae import LAESystem
    from compressml.systems.mllae import MLLAESystem
    from compressml.systems.red import REDSystem

    classes = {"lae": LAESystem, "mllae": MLLAESystem, "red": REDSystem}
    if family not in classes:
        raise CheckpointError(f"unknown model family {family!r} (this version knows {', '.join(classes)})")
    return classes[family]


def load_system(path: str | Path, family: str | None = None, map_location: str | torch.device = "cpu"):
    """The family's LightningModule with the checkpoint's weights, in eval mode, ready to code."""
    ckpt = read_checkpoint(path)
    found = checkpoint_family(ckpt)
    if family is not None and found != family:
        raise CheckpointError(f"{path}: a {found!r} checkpoint, not {family!r}")
    cls = system_class(found)
    try:
        system = cls(**(ckpt.get("hyper_parameters") or {}))
        system.load_state_dict(ckpt["state_dict"])
        system.on_load_checkpoint(ckpt)  # family state kept outside the weights (e.g. g's multiplier)
    except CompressMLError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # wrong keys or shapes: one line for the user
        raise CheckpointError(f"{path}: not a loadable compressml {found} checkpoint ({first_line(e)})") from None
    return system.to(map_location).eval()


def load_lae(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load an LAE checkpoint safely (``weights_only=True``: no arbitrary unpickling), ready to code."""
    return load_system(path, family="lae", map_location=map_location)


def save_checkpoint(system, path: str | Path) -> Path:
    """Save a freshly built system as a Trainer would (so its ``on_save_checkpoint`` runs: CDF
    tables, family, scores) without training it: an untrained but codable checkpoint."""
    import pytorch_lightning as pl

    path = Path(path)
    trainer = pl.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(system)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


def init_weights(system, path: str | Path) -> None:
    """Start ``system`` from the weights of the checkpoint or export bundle at ``path``
    (``init_from=``): same family and architecture, nothing else carried over (a new run: step 0,
    fresh optimizer, this g). A fixed-rate LAE can start a variable-rate one of the same architecture
    (its gains start on the √λ law, equal to 1 at the λ it was trained for when its g records one)."""
    from compressml.errors import ConfigError

    path = Path(path)
    if path.is_dir() or path.name == "manifest.json":
        from compressml.codec import bundle

        net, manifest = bundle.load_bundle(path)
        family, state = manifest.get("family"), {f"net.{k}": v for k, v in net.state_dict().items()}
        hparams = manifest.get("hyper_parameters") or {}
        from_bundle = True
    else:
        ckpt = read_checkpoint(path)
        family, state = checkpoint_family(ckpt), dict(ckpt["state_dict"])
        hparams = ckpt.get("hyper_parameters") or {}
        from_bundle = False
    if family != system.family:
        raise ConfigError(f"init_from={path}: a {family or 'non-compressml'} checkpoint cannot start a {system.family} model")
    state = _fixed_into_variable_rate(system, state, _trained_lmbda(hparams))
    if from_bundle:
        # A float16 bundle holds CompressAI's constant bounds in float16, where the likelihood bound
        # 1e-9 is 0: a run started from it met log(0) (infinite bits) after 163 steps. They are the
        # architecture's constants, not learnt: keep the fresh model's.
        fresh = system.state_dict()
        state.update({k: fresh[k].clone() for k in state if k in fresh and _is_constant_bound(k)})
    try:
        system.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ConfigError(f"init_from={path}: its weights do not fit this model ({first_line(e)})") from None


def _is_constant_bound(key: str) -> bool:
    """CompressAI's fixed bounds (likelihood and scale lower bounds, GDN reparametrisation bounds)."""
    return key.endswith((".bound", ".scale_bound", ".pedestal"))


def _trained_lmbda(hparams) -> float | None:
    """The λ of a fixed-rate model's g (``g.lmbda`` in its hyper-parameters), if it has one."""
    g = hparams.get("g") if isinstance(hparams, dict) else None
    value = g.get("lmbda") if isinstance(g, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _fixed_into_variable_rate(system, state: dict, lmbda: float | None = None) -> dict:
    """A fixed-rate LAE's weights renamed for a variable-rate model (g_a, g_s inside their gain
    wrappers) with gains that start on the √λ law, 1 at ``lmbda`` (the λ it was trained for; None:
    the model's own initialisation); anything else unchanged."""
    gain = getattr(getattr(system, "net", None), "rate_gain", None)
    if gain is None or any(k.startswith("net.rate_gain.") for k in state):
        return state
    if lmbda is not None:
        gain.start_at(lmbda)
    out = {}
    for k, v in state.items():
        for part in ("net.g_a.", "net.g_s."):
            if k.startswith(part):
                k = part + "inner." + k[len(part) :]
        out[k] = v
    out.update({f"net.rate_gain.{k}": v.detach().clone() for k, v in gain.state_dict().items()})
    return out
