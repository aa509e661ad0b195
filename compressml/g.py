"""Reward functions g(L, N): what an LAE maximises. The training system minimises -g.

A g is any callable ``g(distortion, rate, **context) -> reward`` returning a scalar
tensor, higher is better. ``distortion`` is the value of the distortion measure the
g names in its ``distortion`` attribute (default ``"mse"``), computed by the system
on images in [0, 1] (:data:`DISTORTIONS`); ``rate`` is the estimated bits per pixel.
``context`` carries extras (``x``, ``x_hat``, ``step``, ``training``, and for a variable-rate
model the batch's ``lmbda``) that a g may use or ignore.

A g may also expose ``logged``, a dict of its own terms (numbers or scalar tensors) set by
its last call: the system logs them as ``train/g_<name>`` / ``val/g_<name>``. A g with
state that training adapts (a Lagrange multiplier) has ``state_dict()`` /
``load_state_dict()``; the system keeps that state in checkpoints.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from compressml.errors import ConfigError

# what the system computes for a g's ``distortion``: mse = mean squared error, ms-ssim = MS-SSIM
# (higher is better), l1 = mean absolute error, l1_ssim = 0.84 (1 - SSIM) + 0.16 L1 (Zhao et al.)
DISTORTIONS = ("mse", "ms-ssim", "l1", "l1_ssim")


class RateDistortion:
    """g = -(lmbda * D + R): CompressAI's rate-distortion trade-off, as a reward.

    For ``distortion="mse"`` D is 255^2 * MSE (CompressAI's scaling, so its lambda
    values carry over: 0.0018 ... 0.0932 for its quality levels 1 ... 8); for
    ``"ms-ssim"`` D is 1 - MS-SSIM; for ``"l1"`` and ``"l1_ssim"`` D is that loss.
    """

    def __init__(self, lmbda: float = 0.01, distortion: str = "mse"):
        if not isinstance(lmbda, (int, float)) or isinstance(lmbda, bool):
            raise ConfigError(f"g.lmbda must be a number, got {lmbda!r}")
        if lmbda <= 0:
            raise ConfigError(f"g.lmbda must be > 0, got {lmbda}")
        self.lmbda = float(lmbda)
        self.distortion = _check_distortion(distortion)
        self.logged: dict = {}

    def weighted_distortion(self, distortion: torch.Tensor, lmbda: float | None = None) -> torch.Tensor:
        return (self.lmbda if lmbda is None else lmbda) * loss_units(distortion, self.distortion)

    def __call__(self, distortion: torch.Tensor, rate: torch.Tensor, **context) -> torch.Tensor:
        # a variable-rate model's system gives the λ of the batch (compressml.systems.lae)
        weighted = self.weighted_distortion(distortion, context.get("lmbda"))
        self.logged = {"weighted_distortion": weighted.detach()}
        return -(weighted + rate)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lmbda={self.lmbda}, distortion={self.distortion!r})"


def _check_distortion(distortion: str, allowed=DISTORTIONS) -> str:
    if distortion not in allowed:
        raise ConfigError(f"g.distortion must be one of {', '.join(allowed)}, got {distortion!r}")
    return distortion


def _positive(value, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"g.{name} must be a number > 0, got {value!r}")
    return float(value)


def loss_units(distortion: torch.Tensor, kind: str) -> torch.Tensor:
    """A distortion as a loss (lower is better): 255²·MSE (CompressAI's scaling), 1 − MS-SSIM, or as is."""
    if kind == "mse":
        return 255**2 * distortion
    if kind == "ms-ssim":
        return 1 - distortion
    return distortion


class Perceptual(RateDistortion):
    """g = -(lmbda * D + R) with a perceptual distortion: ``l1_ssim`` (0.84 (1 - SSIM) + 0.16 L1,
    the default) or ``ms-ssim`` (1 - MS-SSIM; CompressAI's MS-SSIM lambdas 2.40 ... 220 carry over)."""

    def __init__(self, lmbda: float = 8.73, distortion: str = "l1_ssim"):
        super().__init__(lmbda, _check_distortion(distortion, ("l1_ssim", "ms-ssim", "l1")))


class _Multiplier:
    """A Lagrange multiplier adapted by dual ascent on a relative constraint violation ``c`` (c > 0:
    violated): mu <- max(0, mu + step_size * c), once per training call. It is part of the g's state.

    Under DDP (torch.distributed initialised) c is the mean of the ranks' violations, so every rank
    adapts mu identically and keeps the same multiplier (the one rank 0 saves in checkpoints)."""

    def __init__(self, multiplier: float, step_size: float):
        if not isinstance(multiplier, (int, float)) or isinstance(multiplier, bool) or multiplier < 0:
            raise ConfigError(f"g.multiplier must be a number >= 0, got {multiplier!r}")
        self.multiplier = float(multiplier)
        self.step_size = _positive(step_size, "step_size")

    def _adapt(self, violation: torch.Tensor, context: dict) -> None:
        if context.get("training"):
            from compressml.ranks import mean_over_ranks  # a collective under DDP: every rank trains

            violation = mean_over_ranks(torch.as_tensor(violation, dtype=torch.float32).detach())
            self.multiplier = max(0.0, self.multiplier + self.step_size * float(violation))

    def state_dict(self) -> dict:
        return {"multiplier": self.multiplier}

    def load_state_dict(self, state: dict) -> None:
        self.multiplier = float(state["multiplier"])


class DistortionCap(_Multiplier):
    """Minimise the rate subject to a maximum distortion: g = -(R + mu * (D / D_max - 1)).

    The cap is ``max_distortion`` (in the units of :func:`loss_units`: 255²·MSE for mse, 1 - MS-SSIM
    for ms-ssim) or, for mse, ``min_psnr`` in dB. The multiplier mu grows while the constraint is
    violated and shrinks (to 0) while it holds with room to spare, so training settles where the
    distortion meets the cap at the lowest rate it can find.
    """

    def __init__(
        self,
        min_psnr: float | None = 32.0,
        max_distortion: float | None = None,
        distortion: str = "mse",
        multiplier: float = 1.0,
        step_size: float = 0.05,
    ):
        super().__init__(multiplier, step_size)
        self.distortion = _check_distortion(distortion)
        if (min_psnr is None) == (max_distortion is None):
            raise ConfigError("g: give exactly one of min_psnr (mse only) and max_distortion")
        if min_psnr is not None:
            if distortion != "mse":
                raise ConfigError("g.min_psnr needs g.distortion=mse (or give max_distortion)")
            max_distortion = 255**2 * 10 ** (-_positive(min_psnr, "min_psnr") / 10)
        self.max_distortion = _positive(max_distortion, "max_distortion")
        self.logged: dict = {}

    def __call__(self, distortion: torch.Tensor, rate: torch.Tensor, **context) -> torch.Tensor:
        violation = loss_units(distortion, self.distortion) / self.max_distortion - 1
        reward = -(rate + self.multiplier * violation)
        self.logged = {"multiplier": self.multiplier, "violation": violation.detach()}
        self._adapt(violation, context)
        return reward

    def __repr__(self) -> str:
        return f"DistortionCap(max_distortion={self.max_distortion:.4g}, distortion={self.distortion!r})"


class RateTarget(_Multiplier):
    """Minimise the distortion at a target rate: g = -(lmbda * D + mu * (R / target_bpp - 1)).

    mu grows while the rate is above the target and shrinks (to 0) below it, so the rate settles at
    the target and the distortion is minimised there. ``lmbda`` scales D as in ``rate_distortion``.
    """

    def __init__(
        self, target_bpp: float = 0.5, lmbda: float = 0.0130, distortion: str = "mse", multiplier: float = 1.0, step_size: float = 0.05
    ):
        super().__init__(multiplier, step_size)
        self.target_bpp = _positive(target_bpp, "target_bpp")
        self.lmbda = _positive(lmbda, "lmbda")
        self.distortion = _check_distortion(distortion)
        self.logged: dict = {}

    def __call__(self, distortion: torch.Tensor, rate: torch.Tensor, **context) -> torch.Tensor:
        violation = rate / self.target_bpp - 1
        weighted = context.get("lmbda", self.lmbda) * loss_units(distortion, self.distortion)
        reward = -(weighted + self.multiplier * violation)
        self.logged = {"multiplier": self.multiplier, "violation": violation.detach(), "weighted_distortion": weighted.detach()}
        self._adapt(violation, context)
        return reward

    def __repr__(self) -> str:
        return f"RateTarget(target_bpp={self.target_bpp}, lmbda={self.lmbda}, distortion={self.distortion!r})"


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
