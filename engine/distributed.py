"""Several processes (torchrun) splitting one encoding run: who am I, and waiting for the others.

Under ``torchrun --nproc-per-node N`` every process gets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` in its environment. :func:`init_from_env` joins the process group (NCCL on CUDA,
gloo on the CPU); the engine then takes shards ``rank, rank + N, rank + 2N, ...`` of the dataset,
each rank writes its own shard files, and rank 0 writes the one manifest after a barrier.
Without torchrun everything here is a no-op for a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from headwater.engine.devices import check_device
import torch.distributed as dist

# Ranks wait for each other only at the start and the end of a run; one rank may finish its
# shards long before the slowest one, so the barrier waits much longer than the default.
BARRIER_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class Rank:
    """This process's place in the run: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def current() -> Rank:
    """The rank of this process in the initialised process group (rank 0 of 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Rank()


def init_from_env(device: str | torch.device = "cpu") -> Rank:
    """Join the process group torchrun describes in the environment, if any and not done yet.

    The backend is NCCL when ``device`` is CUDA and gloo otherwise. Returns this process's rank.
    """
    if env_world_size() > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if check_device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
    return current()


def device_for(device: str | torch.device, rank: Rank) -> torch.device:
    """``cuda`` becomes ``cuda:<local_rank>`` so that each process on a node gets its own GPU."""
    device = check_device(device)
    if device.type == "cuda" and device.index is None and rank.world_size > 1:
        return torch.device("cuda", rank.local_rank)
    return device


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def sum_and_max(sums: list[float], maxes: list[float]) -> tuple[list[float], list[float]]:
    """Each of ``sums`` summed and each of ``maxes`` maximised over all ranks (unchanged in one process).

    Two all-reduces on the CPU (gloo) or the current CUDA device (NCCL): every rank must call it.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return list(sums), list(maxes)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    summed = torch.tensor(sums, dtype=torch.float64, device=device)
    maxed = torch.tensor(maxes, dtype=torch.float64, device=device)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    dist.all_reduce(maxed, op=dist.ReduceOp.MAX)
    return summed.tolist(), maxed.tolist()


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
