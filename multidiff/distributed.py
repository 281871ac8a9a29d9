"""Data-parallel training under ``torchrun``, with PyTorch's own machinery (``torch.distributed``).

``torchrun --nproc_per_node=N -m multidiff train CONFIG`` starts N processes; each finds its rank in
the environment torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...), joins
the process group (NCCL between GPUs, gloo between CPU processes) and trains a slice of every batch.
Several machines join through torchrun's rendezvous (``--nnodes``, ``--rdzv-backend=c10d``,
``--rdzv-endpoint=HOST:PORT``); nothing here depends on how the processes were placed.

**The global batch is the config's.** ``train.batch_size`` is the batch of one optimizer micro-step
summed over all processes; process ``r`` of ``N`` trains rows ``[r B/N, (r+1) B/N)`` of it. Every
per-example random draw (noise level, noise, label dropout, augmentation) is drawn for the whole
global batch from the step's seeded generator and sliced, so a run computes the same weights on 1,
2 or 8 processes (up to float summation order), and a checkpoint resumes under any process count.
Dropout masks inside the network are the one exception: each process draws its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "Rows",
    "World",
    "current_rows",
    "global_rows",
    "launched_by_torchrun",
    "setup",
]


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes; ``local_rank`` on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    distributed: bool = False  # a process group is in use (torchrun, even with one process)
    owns_group: bool = False  # this process created the process group (and destroys it in close())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over processes (itself on one)."""
        if not self.distributed:
            return x
        y = x.detach().clone()
        dist.all_reduce(y)
        return y / self.size

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    """True when the environment describes a process of a torchrun (or any launcher that sets
    ``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR``), also with one process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes, if any, and pick this process's device.

    On CUDA each process takes ``cuda:LOCAL_RANK`` (a configured ``cuda:K`` is ignored under
    torchrun: one process per GPU); the backend is NCCL there and gloo on the CPU. Without torchrun
    this returns a world of one, without a process group, and ``device`` unchanged.
    """
    if dist.is_initialized():  # the caller set the group up itself
        world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), distributed=True)
    elif launched_by_torchrun():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            if local >= torch.cuda.device_count():
                raise RuntimeError(
                    f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA devices: "
                    "start at most one process per GPU (torchrun --nproc_per_node)"
                )
            torch.cuda.set_device(local)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        world = World(dist.get_rank(), dist.get_world_size(), local, distributed=True, owns_group=True)
    else:
        return World(), device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    return world, device


# --- per-example random draws over the global batch ----------------------------------------


@dataclass(frozen=True)
class Rows:
    """This process's rows ``[start, stop)`` of a global batch of ``total`` examples."""

    start: int
    stop: int
    total: int

    @classmethod
    def of(cls, total: int, world: World) -> Rows:
        if total % world.size:
            raise ValueError(
                f"train.batch_size={total} must be divisible by the number of processes ({world.size}); "
                f"it is the global batch, split evenly across them"
            )
        n = total // world.size
        return cls(world.rank * n, (world.rank + 1) * n, total)

    def draw(self, fn, shape: tuple[int, ...], generator: torch.Generator, **kw) -> torch.Tensor:
        """``fn((total, *shape), generator=...)[start:stop]``: the same values a single process drawing
        the whole batch would see in these rows."""
        out = fn((self.total, *shape), generator=generator, device=generator.device, **kw)
        return out[self.start : self.stop]


_ROWS: ContextVar[Rows | None] = ContextVar("multidiff_rows", default=None)


def current_rows(n: int) -> Rows:
    """The rows of the global batch a tensor of ``n`` examples holds: those set by :func:`global_rows`
    (in the Trainer, while it augments a batch) or, outside it, all ``n``."""
    rows = _ROWS.get()
    if rows is None or rows.stop - rows.start != n:
        return Rows(0, n, n)
    return rows


@contextlib.contextmanager
def global_rows(rows: Rows) -> Iterator[None]:
    """Within this block, per-example draws (:func:`multidiff.modality.example_rand`, ``coin_flips``)
    draw for the whole global batch and keep ``rows``, so augmentation does not depend on the
    number of processes."""
    token = _ROWS.set(rows)
    try:
        yield
    finally:
        _ROWS.reset(token)
