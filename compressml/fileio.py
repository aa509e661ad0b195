"""Writing outputs as image tools do: whole or not at all, with the permissions the umask gives.

Every output is written to a temporary ``.NAME.<host>.<pid>.<random>.part`` beside it and renamed into
place, so a reader never sees half a file and two processes writing the same output leave one of
the two complete files, never a mix. Without ``force`` the final step is a hard link, which fails if
the output appeared meanwhile: the second writer then stops with a one-line error. A process that
is killed leaves its ``.part`` behind; the next write into that folder removes the ``.part`` files of
processes of this machine that no longer run.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

from compressml.errors import CompressMLError

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_PART = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.part$")


def umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)  # elsewhere: the classic read-and-restore
    os.umask(current)
    return current


def file_mode() -> int:
    """What ``open(path, "w")`` would give a new file: 0o666 less the umask."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    return 0o777 & ~umask()


def part_name(name: str) -> str:
    return f".{name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.part"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_parts(folder: Path) -> list[Path]:
    """Remove the ``.part`` files and folders left in ``folder`` by processes of this machine that no
    longer run (a killed compress, decompress or export); returns what was removed."""
    import shutil

    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _PART.match(entry.name)
        if not m or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # another process cleaned it first, or it is not ours to remove
    return removed


def atomic_write(path: Path, write, force: bool) -> None:
    """``write(tmp_path)`` then move onto ``path``; refuses an existing ``path`` unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise CompressMLError(f"{path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path.parent)
    tmp = path.parent / part_name(path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any tool
        os.close(fd)
        write(tmp)
        os.chmod(tmp, file_mode())  # writers that recreate the file keep the same permissions
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if another process made path meanwhile
            except FileExistsError:
                raise CompressMLError(f"{path} appeared while it was being written (use --force to overwrite)") from None
            except OSError:  # no hard links here (some network or FAT file systems)
                if path.exists():
                    raise CompressMLError(f"{path} exists (use --force to overwrite)") from None
                os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def make_part_folder(out: Path) -> Path:
    """A temporary folder beside ``out`` to build it in (renamed into place when complete), with the
    permissions a new folder gets from the umask."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(out.parent)
    tmp = out.parent / part_name(out.name)
    tmp.mkdir(mode=0o777)
    return tmp
