"""Many files in one command: each file's job runs on its own (a failure is reported and the rest go
on), with a progress bar on a terminal and a summary at the end."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compressml.errors import CompressMLError, DataError


@dataclass
class BatchResult:
    """What a batch did: per-file records (``input``, ``output``, ``bytes_in``, ``bytes_out``, and
    ``bpp`` / ``psnr`` where known) and the failures as (path, message)."""

    records: list[dict] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> dict:
        r = self.records
        total_in, total_out = sum(x["bytes_in"] for x in r), sum(x["bytes_out"] for x in r)
        out = {
            "files": len(r),
            "failed": len(self.failures),
            "bytes_in": total_in,
            "bytes_out": total_out,
            "ratio": total_in / total_out if total_out else float("nan"),
        }
        for key in ("bpp", "psnr"):
            values = [x[key] for x in r if x.get(key) is not None]
            out[key] = float(np.mean(values)) if values else None
        return out


def run_batch(jobs: Sequence[tuple[Path, Path]], work: Callable[[Path, Path], dict], line: Callable[[dict], str], what: str) -> BatchResult:
    """``work(src, dst)`` for every job; a :class:`CompressMLError` on one file of several is printed as
    one line (``error: ...``) and the batch goes on (a single file's error is raised as it is).
    ``line`` formats a done file's line."""
    result = BatchResult()
    with _progress(len(jobs), what) as advance:
        for src, dst in jobs:
            try:
                record = work(src, dst)
            except (CompressMLError, OSError) as e:
                if len(jobs) == 1:
                    if isinstance(e, OSError):  # a file that cannot be read or written: one line too
                        raise DataError(f"{src}: {e.strerror or e}") from None
                    raise
                text = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
                message = text if str(src) in text else f"{src}: {text}"
                result.failures.append((src, message))
                print(f"error: {message}", file=sys.stderr)
            else:
                result.records.append(record)
                print(line(record))
            advance()
    return result


class _progress:
    """A transient progress bar on stderr when it is a terminal and there are several files."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.bar = total, what, None

    def __enter__(self) -> Callable[[], None]:
        if self.total > 1 and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.bar.start()
            task = self.bar.add_task(self.what, total=self.total)
            return lambda: self.bar.advance(task)
        return lambda: None

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_summary(result: BatchResult, title: str) -> None:
    """The batch's totals as a table (stdout)."""
    from rich.console import Console
    from rich.table import Table

    s = result.summary()
    table = Table(title=title, header_style="bold")
    columns = (
        ["files", "failed", "bytes in", "bytes out", "ratio"]
        + (["mean bpp"] if s["bpp"] is not None else [])
        + (["mean PSNR dB"] if s["psnr"] is not None else [])
    )
    for col in columns:
        table.add_column(col, justify="right")
    row = [str(s["files"]), str(s["failed"]), f"{s['bytes_in']:,}", f"{s['bytes_out']:,}", f"{s['ratio']:.2f}"]
    row += [f"{s['bpp']:.4f}"] if s["bpp"] is not None else []
    row += [f"{s['psnr']:.2f}"] if s["psnr"] is not None else []
    table.add_row(*row)
    Console(width=100).print(table)


def find_original(originals: Path, rel: Path) -> Path | None:
    """The original of a decoded file: ``originals/rel`` with any image suffix."""
    from compressml.data.images import IMAGE_SUFFIXES

    stem = originals / rel.with_suffix("")
    for suffix in IMAGE_SUFFIXES:
        for candidate in (stem.with_name(stem.name + suffix), stem.with_name(stem.name + suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def psnr_against(decoded: Path, original: Path) -> float:
    """PSNR (dB) of a decoded image file against its original, both as 8-bit RGB."""
    from compressml.data.images import open_image

    with open_image(original) as a, open_image(decoded) as b:
        x = np.asarray(a.convert("RGB"), dtype=np.float64)
        y = np.asarray(b.convert("RGB"), dtype=np.float64)
    if x.shape != y.shape:
        raise DataError(f"{original}: {x.shape[1]}x{x.shape[0]}, the decoded image {y.shape[1]}x{y.shape[0]}")
    mse = float(np.mean((x - y) ** 2))
    return 100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)
