"""Where this process runs: one process, or one rank of a ``torchrun`` launch.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; each rank uses the GPU of its local
rank with NCCL, or the CPU with Gloo when no GPU is visible (or ``device="cpu"`` is asked for).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from sslbench.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    """This process's rank among ``world`` processes and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wrap(self, model: nn.Module, **ddp_options: object) -> nn.Module:
        """``model`` in DistributedDataParallel when there are several ranks, else itself."""
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_options)  # type: ignore[arg-type]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place; itself with one rank)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is True on any rank (a collective: every rank must call it)."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


def process_world() -> int:
    """Ranks in the initialised process group (1 without one): how a module that is not handed a
    :class:`Runtime` (MoCo's shuffle BN) learns whether it runs under DDP."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def pick_device(device: str | torch.device | None) -> torch.device:
    """``device`` as asked, else CUDA when visible, else the CPU; refuses CUDA where there is none."""
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible")
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def start_runtime(device: str | torch.device | None = None) -> Runtime:
    """One process, or join the ``torchrun`` process group (``WORLD_SIZE > 1``): NCCL with the GPU of
    ``LOCAL_RANK`` on CUDA, Gloo on the CPU."""
    chosen = pick_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime(0, 1, 0, chosen)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Runtime(dist.get_rank(), dist.get_world_size(), local_rank, chosen)


@contextmanager
def launched(device: str | torch.device | None = None) -> Iterator[Runtime]:
    """:func:`start_runtime` for the duration of the block; leaves the process group it joined."""
    owned = not (dist.is_available() and dist.is_initialized())
    runtime = start_runtime(device)
    try:
        yield runtime
    finally:
        if owned and runtime.distributed and dist.is_initialized():
            dist.destroy_process_group()
