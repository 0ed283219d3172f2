"""Multi-process training under torchrun (DDP): gloo on CPU, nccl on CUDA.

Each rank takes every world-th sample of the same global permutation, with batch_size/world
samples per step, so a run of N processes follows the single-process run with the same global
batch. Gradients are averaged by DDP; every pruner decision is then computed from identical
weights on every rank (no extra broadcast needed), and only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "cpu") -> World:
    """Join the process group torchrun describes in the environment; a plain run is a world of 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def sum_across(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (identity in a world of 1)."""
    if current().size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def from_main(values: list[float]) -> list[float]:
    """Rank 0's values on every rank (identity in a world of 1)."""
    if current().size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(t, 0)
    return t.tolist()


def barrier() -> None:
    if current().size > 1:
        dist.barrier()
