"""Rate control: the file of a given size, bits per pixel or quality, by bisection on real coding.

A *ladder* is a list of ways to code an image, ordered from the fewest bits to the most: the
qualities 0, 0.5, ..., 100 of a variable-rate LAE, or the models of a fixed-rate family (the premade
``lae-q1`` .. ``lae-q4``). Sizes and qualities grow along it (for a learned codec nearly always;
the search relies on it, and every answer is checked on the file it returns):

``max_bytes``  the highest rung whose file has at most N bytes: a guarantee (the returned file is
               one that was measured), and a one-line error when even the lowest rung is larger;
``bpp``        the file whose bits per pixel are closest to B;
``psnr`` / ``ms_ssim``  the lowest rung whose decoded image reaches the target (decoded for real),
               an error when even the highest rung does not.

Each coding pass codes (and for quality targets decodes) the whole image; the result says how many
passes it took, which rung won and the value it achieved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from compressml import metrics
from compressml.codec.container import Container
from compressml.errors import CompressMLError

TARGETS = ("max_bytes", "bpp", "psnr", "ms_ssim")
QUALITY_STEP = 0.5  # a variable-rate model's ladder: qualities 0, 0.5, ..., 100


class RateControlError(CompressMLError):
    """The target cannot be met by any rung of the ladder."""


@dataclass
class Rung:
    """One way to code: a label for reports (``q 62.5``, ``lae-q3``) and how to code and decode with it."""

    label: str
    encode: Callable[[], Container]
    decode: Callable[[Container], torch.Tensor]  # the container -> RGB (3, H, W) in [0, 1]


@dataclass
class Outcome:
    container: Container
    rung: str
    passes: int
    bytes: int
    bpp: float
    achieved: float  # the target's measure on the returned file (bytes, bpp, dB or MS-SSIM)


def quality_ladder(step: float = QUALITY_STEP) -> list[float]:
    n = round(100 / step)
    return [i * step for i in range(n + 1)]


def control(rungs: Sequence[Rung], target: str, value: float, rgb: torch.Tensor) -> Outcome:
    """The file of ``rungs`` that meets ``target`` (see the module docstring) for the image ``rgb``
    (3, H, W), by bisection on real coding."""
    if target not in TARGETS:
        raise CompressMLError(f"unknown rate-control target {target!r}; choose from {', '.join(TARGETS)}")
    if not rungs:
        raise CompressMLError("nothing to choose from")
    if not value > 0 or (target == "ms_ssim" and value > 1):
        raise CompressMLError(
            f"--{target.replace('_', '-')} must be a number > 0{' and <= 1' if target == 'ms_ssim' else ''}, got {value:g}"
        )
    h, w = rgb.shape[-2:]
    seen: dict[int, tuple[Container, int, float]] = {}  # rung -> (file, bytes, quality measure)
    passes = 0

    def code(i: int) -> tuple[Container, int, float]:
        nonlocal passes
        if i not in seen:
            passes += 1
            container = rungs[i].encode()
            size = len(container.to_bytes())
            measure = float("nan")
            if target in ("psnr", "ms_ssim"):
                decoded = rungs[i].decode(container).clamp(0, 1)[None].float()
                reference = rgb[None].float()
                measure = float(metrics.psnr(decoded, reference) if target == "psnr" else metrics.ms_ssim(decoded, reference))
            seen[i] = (container, size, measure)
        return seen[i]

    def ok(i: int) -> bool:
        _, size, measure = code(i)
        if target == "max_bytes":
            return size <= value
        return measure >= value

    last = len(rungs) - 1
    if target == "bpp":
        goal = value * h * w / 8
        fits = lambda i: code(i)[1] <= goal
        if not fits(0):
            best = 0
        elif fits(last):
            best = last
        else:  # the last rung at most the goal, or the next one, whichever is closer
            lo = _last_true(fits, 0, last)
            best = min((lo, lo + 1), key=lambda i: abs(code(i)[1] - goal))
        return _outcome(rungs, best, seen, passes, h, w, 8 * seen[best][1] / (h * w))
    if target == "max_bytes":  # the highest rung that fits
        if not ok(0):
            raise RateControlError(f"even the lowest quality ({rungs[0].label}) needs {code(0)[1]} bytes, more than {int(value)}")
        best = last if ok(last) else _last_true(ok, 0, last)
        return _outcome(rungs, best, seen, passes, h, w, seen[best][1])
    # a quality target: the lowest rung that reaches it
    unit = "dB" if target == "psnr" else "MS-SSIM"
    if not ok(last):
        raise RateControlError(f"even the highest quality ({rungs[last].label}) reaches {code(last)[2]:.4g} {unit}, below {value:g}")
    best = 0 if ok(0) else _last_true(lambda i: not ok(i), 0, last) + 1
    return _outcome(rungs, best, seen, passes, h, w, seen[best][2])


def _last_true(holds: Callable[[int], bool], lo: int, hi: int) -> int:
    """Bisection: the last index in lo..hi where ``holds``, given that it holds at lo and not at hi."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo


def _outcome(rungs, i, seen, passes, h, w, achieved) -> Outcome:
    container, size, _ = seen[i]
    return Outcome(container=container, rung=rungs[i].label, passes=passes, bytes=size, bpp=8 * size / (h * w), achieved=float(achieved))
