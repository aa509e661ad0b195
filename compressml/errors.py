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


class BundleError(CompressMLError):
    """An export bundle cannot be written, or one on disk is incomplete, altered or malformed."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type name when the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def exit_on_user_error(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` for an entry point: a :class:`CompressMLError` ends as one line on stderr and its exit code."""
    import sys

    try:
        return fn(*args, **kwargs)
    except CompressMLError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
