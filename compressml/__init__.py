"""compressml: learned image compression and super-resolution, config-driven.

The library is importable from plain Python; Hydra and Lightning only drive it.
"""

import warnings

# compressai scripts its entropy coder at import; recent torch calls that deprecated. Not actionable here.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)

from compressml.errors import CompressMLError, ConfigError, DataError

__version__ = "0.1.0"

__all__ = ["CompressMLError", "ConfigError", "DataError", "__version__"]
