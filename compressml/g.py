"""Reward functions g(L, N): what an LAE maximises. The training system minimises -g.

A g is any callable ``g(distortion, rate, **context) -> reward`` returning a scalar
tensor, higher is better. ``distortion`` is the value of the distortion measure the
g names in its ``distortion`` attribute (default ``"mse"``), computed by the system
on images in [0, 1]; ``rate`` is the estimated bits per pixel. ``context`` carries
extras (``x``, ``x_hat``, ``step``) that a g may use or ignore.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from compressml.errors import ConfigError

DISTORTIONS = ("mse", "ms-ssim")


class RateDistortion:
    """g = -(lmbda * D + R): CompressAI's rate-distortion trade-off, as a reward.

    For ``distortion="mse"`` D is 255^2 * MSE (CompressAI's scaling, so its lambda
    values carry over: 0.0018 ... 0.0932 for its quality levels 1 ... 8); for
    ``"ms-ssim"`` D is 1 - MS-SSIM.
    """

    def __init__(self, lmbda: float = 0.01, distortion: str = "mse"):
        if not isinstance(lmbda, (int, float)) or isinstance(lmbda, bool):
            raise ConfigError(f"g.lmbda must be a number, got {lmbda!r}")
        if lmbda <= 0:
            raise ConfigError(f"g.lmbda must be > 0, got {lmbda}")
        if distortion not in DISTORTIONS:
            raise ConfigError(f"g.distortion must be one of {', '.join(DISTORTIONS)}, got {distortion!r}")
        self.lmbda = float(lmbda)
        self.distortion = distortion

    def weighted_distortion(self, distortion: torch.Tensor) -> torch.Tensor:
        return self.lmbda * (255**2 * distortion if self.distortion == "mse" else 1 - distortion)

    def __call__(self, distortion: torch.Tensor, rate: torch.Tensor, **context) -> torch.Tensor:
        return -(self.weighted_distortion(distortion) + rate)

    def __repr__(self) -> str:
        return f"RateDistortion(lmbda={self.lmbda}, distortion={self.distortion!r})"


def check_g(g: Callable) -> Callable:
    """Fail early, with a clear message, for a g that cannot be called as g(distortion, rate, **context)."""
    if not callable(g):
        raise ConfigError(f"g must be callable as g(distortion, rate, **context), got {type(g).__name__}")
    try:
        sig = inspect.signature(g)
        sig.bind(torch.tensor(0.0), torch.tensor(0.0))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"g {g!r} cannot be called as g(distortion, rate, **context): {e}") from None
    distortion = getattr(g, "distortion", "mse")
    if distortion not in DISTORTIONS:
        raise ConfigError(f"g.distortion must be one of {', '.join(DISTORTIONS)}, got {distortion!r}")
    return g


def evaluate_g(g: Callable, distortion: torch.Tensor, rate: torch.Tensor, **context) -> torch.Tensor:
    """Call g and insist on a finite scalar tensor (a user's g gets a clear error, not a shape mismatch)."""
    reward = g(distortion, rate, **context)
    if not isinstance(reward, torch.Tensor) or reward.numel() != 1:
        shape = tuple(reward.shape) if isinstance(reward, torch.Tensor) else type(reward).__name__
        raise ConfigError(f"g must return a scalar tensor, got {shape}")
    return reward.reshape(())
