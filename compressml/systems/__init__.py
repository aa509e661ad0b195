"""One LightningModule per model family: training only (optimisers, logging, validation)."""

from compressml.systems.base import CodecSystem
from compressml.systems.lae import LAESystem
from compressml.systems.loading import load_lae, load_system, save_checkpoint
from compressml.systems.mllae import MLLAESystem
from compressml.systems.red import REDSystem

__all__ = ["CodecSystem", "LAESystem", "MLLAESystem", "REDSystem", "load_lae", "load_system", "save_checkpoint"]
