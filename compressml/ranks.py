"""Collectives over the processes of a DDP run, usable by any layer (the models' MLLAE prior counts,
g's adapted multiplier): plain torch.distributed, nothing of Lightning or Hydra."""

from __future__ import annotations

import torch


def is_distributed() -> bool:
    """Whether a torch.distributed process group is up (a DDP run, between its set-up and its end)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over every process of the default group (the value itself outside DDP).

    A collective: every rank must call it, in the same order.
    """
    if not is_distributed():
        return value
    import torch.distributed as dist

    total = value.detach().clone()
    if dist.get_backend() == "nccl" and not total.is_cuda:
        total = total.cuda()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(value.device)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """``value`` averaged over every process of the default group (the value itself outside DDP).

    A collective: every rank must call it, in the same order.
    """
    if not is_distributed():
        return value
    import torch.distributed as dist

    return sum_over_ranks(value) / dist.get_world_size()
