"""Pure ``nn.Module`` model families; nothing here imports Lightning, Hydra or W&B."""

from compressml.models.lae import (
    LAEPayload,
    architecture,
    architectures,
    build_lae,
    compress,
    decompress,
    forward_padded,
    load_coding_state,
)
from compressml.models.padding import crop_to, pad_to_multiple

__all__ = [
    "architecture",
    "architectures",
    "LAEPayload",
    "build_lae",
    "compress",
    "crop_to",
    "decompress",
    "forward_padded",
    "load_coding_state",
    "pad_to_multiple",
]
