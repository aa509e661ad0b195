"""compressml: learned image compression and super-resolution, config-driven.

The library is importable from plain Python; Hydra and Lightning only drive it.
"""

from compressml.errors import CompressMLError, ConfigError, DataError

__version__ = "0.1.0"

__all__ = ["CompressMLError", "ConfigError", "DataError", "__version__"]
