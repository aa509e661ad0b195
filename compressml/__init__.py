"""compressml: learned image compression and super-resolution, config-driven.

The library is importable from plain Python; Hydra and Lightning only drive it.
"""

import warnings

# compressai scripts its entropy coder at import; recent torch calls that deprecated. Not actionable here.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)

import os

from omegaconf import OmegaConf

from compressml.errors import CompressMLError, ConfigError, DataError

# ${cwd:} in conf/paths: the directory a job was started from, resolvable before Hydra's own
# runtime config exists (the multirun sweeper resolves its sweep dir that early).
if not OmegaConf.has_resolver("cwd"):
    OmegaConf.register_new_resolver("cwd", os.getcwd)

__version__ = "0.1.0"

__all__ = ["CompressMLError", "ConfigError", "DataError", "__version__"]
