"""Reading Lightning checkpoints safely (``weights_only=True``: no arbitrary unpickling), below every
layer that needs one: the codec and the export build networks from them without a LightningModule."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from compressml.errors import CheckpointError, first_line


def read_checkpoint(path: str | Path, lazy: bool = False) -> dict:
    """A Lightning checkpoint as a dict, loaded with ``weights_only=True`` (no arbitrary unpickling).

    ``lazy`` maps the tensors from the file instead of reading them (for a look at the metadata).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    except Exception as e:  # corrupt file, or one that needs unpickling arbitrary objects
        if lazy:  # an old (non-zip) file cannot be mapped: read it whole
            return read_checkpoint(path)
        raise CheckpointError(f"{path}: not a loadable checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def checkpoint_family(ckpt: dict) -> str | None:
    hparams = ckpt.get("hyper_parameters") or {}
    return (ckpt.get("compressml") or {}).get("family", hparams.get("family"))
