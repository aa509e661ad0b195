"""One LightningModule per model family: training only (optimisers, logging, validation)."""

from compressml.systems.lae import LAESystem, load_lae

__all__ = ["LAESystem", "load_lae", "reserved_family"]


def reserved_family(family: str, **_):
    """Config target of model groups reserved for families this version does not ship yet."""
    from compressml.errors import ConfigError

    raise ConfigError(f"model={family} is reserved for a model family this version does not ship yet; use model=lae")
