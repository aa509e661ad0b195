"""One LightningModule per model family: training only (optimisers, logging, validation)."""

from compressml.systems.base import CodecSystem
from compressml.systems.lae import LAESystem, load_lae
from compressml.systems.loading import load_system, save_checkpoint
from compressml.systems.mllae import MLLAESystem

__all__ = ["CodecSystem", "LAESystem", "MLLAESystem", "load_lae", "load_system", "reserved_family", "save_checkpoint"]


def reserved_family(family: str, **_):
    """Config target of model groups reserved for families this version does not ship yet."""
    from compressml.errors import ConfigError

    raise ConfigError(f"model={family} is reserved for a model family this version does not ship yet; use model=lae")
