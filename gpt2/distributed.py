"""Which process of a ``torchrun`` job this is, and the collectives every layer may call.

Each helper is a no-op (or returns its input) without a process group, so that single-process code calls them
unconditionally. Joining the group and sharding the model are training's (:mod:`gpt2.training.parallel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks, in place (SUM then divide: gloo has no AVG)."""
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (picklable; ``value`` itself without a process group)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
