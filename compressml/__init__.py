"""compressml: learned image compression and super-resolution, config-driven.

The library is importable from plain Python; Hydra and Lightning only drive it.
"""

import sys
import warnings

from compressml import _imports
from compressml.errors import CompressMLError, ConfigError, DataError

# compressai scripts its entropy coder at import; recent torch calls that deprecated. Not actionable here.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)

_imports.install()  # CompressAI's point-cloud parts load when used, not at import (see _imports)

if "omegaconf" in sys.modules:  # an entry point that composes configs (train.py: hydra first)
    from compressml.resolvers import register_resolvers

    register_resolvers()

__version__ = "0.1.0"

_API = ("Codec", "compress", "decompress", "load", "upscale")

__all__ = ["Codec", "CompressMLError", "ConfigError", "DataError", "__version__", "compress", "decompress", "load", "upscale"]


def __getattr__(name: str):
    """The API (:mod:`compressml.api`) loads at its first use: ``import compressml`` stays light."""
    if name in _API:
        from compressml import api

        return getattr(api, name)
    raise AttributeError(f"module 'compressml' has no attribute {name!r}")
