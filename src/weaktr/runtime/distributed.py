"""torchrun / DDP plumbing that degrades to no-ops in a single process.

Every stage runs unchanged under ``python -m weaktr ...`` and ``torchrun --nproc_per_node=N -m weaktr
...``: the rank and world size come from torchrun's environment variables (RANK, WORLD_SIZE,
LOCAL_RANK), never from ``--local_rank`` flags, which broke the authors' launchers on torch >= 2.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from weaktr.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size and the device it computes on."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    is_main: bool


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' takes CUDA when present; 'cuda' without a GPU is a user error, not a crash later on."""
    if device not in {"auto", "cpu", "cuda"}:
        raise InputError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is available")
    return torch.device("cuda", local_rank)


def is_distributed() -> bool:
    """Whether a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Rank 0, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU); one process needs no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev, is_main=rank == 0)


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(total_batch: int, world: int) -> int:
    """The configs give total batch sizes (as the authors' flags); each rank takes an equal share."""
    if total_batch % world:
        raise InputError(f"total batch size {total_batch} is not divisible by the {world} processes")
    return total_batch // world


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's share of ``items`` (every ``world``-th from ``rank``): all ranks together see each once."""
    return list(items[rank::world])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (e.g. confusion matrices); returns it for chaining."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_value(value: T) -> T:
    """Rank 0's value on every rank (a no-op in one process)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for all ranks (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def wrap_ddp(model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """DDP around ``model`` when several ranks run; the model itself otherwise."""
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (for saving and evaluation)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch (all devices) with ``seed + rank``, as the authors do; returns it."""
    value = seed + rank
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)  # also seeds every CUDA device
    return value
