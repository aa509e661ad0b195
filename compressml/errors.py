"""One exception family for everything a user can get wrong.

Entry points catch :class:`CompressMLError` and print its message as a single
line on stderr with a non-zero exit status; anything else is a bug and keeps
its traceback.
"""


class CompressMLError(Exception):
    """Base class of every error the library raises on purpose."""

    exit_code = 2


class ConfigError(CompressMLError, ValueError):
    """A configuration value is missing, out of range or of the wrong kind."""


class DataError(CompressMLError):
    """Input images are missing, unreadable or unusable."""


class CheckpointError(CompressMLError):
    """A checkpoint cannot be read or does not belong to this model family."""


class DownloadError(CompressMLError):
    """A file could not be fetched or failed its checksum."""
