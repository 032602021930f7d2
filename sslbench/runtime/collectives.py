"""Gathering tensors across ranks: rows in rank order, and a gather for a loss over the global batch."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from sslbench.runtime.process import Runtime, process_world


@torch.no_grad()
def gather_equal(x: torch.Tensor) -> torch.Tensor:
    """``x`` (the same shape on every rank) from every rank, concatenated along dim 0 in rank order,
    without gradient; ``x`` itself on one process."""
    world = process_world()
    if world == 1:
        return x
    gathered = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(gathered, x.contiguous())
    return torch.cat(gathered, dim=0)


def gather_rows(tensor: torch.Tensor, runtime: Runtime, chunk_rows: int = 65536) -> torch.Tensor:
    """Every rank's ``(n_r, ...)`` rows concatenated in rank order (``n_r`` may differ), on every rank,
    on ``tensor``'s device. Gloo and NCCL gather equal shapes only, so each round gathers a padded
    chunk of ``chunk_rows`` rows per rank (bounded device memory for a large feature matrix)."""
    if not runtime.distributed:
        return tensor
    sizes = torch.zeros(runtime.world, dtype=torch.long, device=runtime.device)
    sizes[runtime.rank] = len(tensor)
    counts = runtime.sum(sizes).tolist()
    pieces: list[list[torch.Tensor]] = [[] for _ in range(runtime.world)]
    for start in range(0, max(counts), chunk_rows):
        local = tensor[start : start + chunk_rows].to(runtime.device)
        padded = torch.zeros((chunk_rows, *tensor.shape[1:]), dtype=tensor.dtype, device=runtime.device)
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(runtime.world)]
        dist.all_gather(parts, padded)
        for rank, part in enumerate(parts):
            rows = max(0, min(chunk_rows, counts[rank] - start))
            pieces[rank].append(part[:rows].to(tensor.device))
    return torch.cat([piece for rank_pieces in pieces for piece in rank_pieces])


class _GatherForGlobalLoss(torch.autograd.Function):
    """Forward: the equal-sized ``(n, ...)`` parts of all ranks in rank order. Backward: the gradient
    of the local rows only, times the world size (see :func:`gather_for_global_loss`)."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        ctx.rank, ctx.world, ctx.rows = rank, world, len(local)
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows] * ctx.world, None, None


def gather_for_global_loss(local: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The global batch ``(world * n, ...)`` from each rank's ``(n, ...)``, for a loss that every rank
    computes over the whole global batch (Core-tuning's hard pairs and contrastive term).

    The other ranks' rows carry no gradient here; the local rows keep theirs, scaled by the world
    size, because DDP averages gradients over the ranks: the average of ``world * dL/dz_r dz_r/dw``
    over ranks is the one-process ``dL/dw``, while parameters applied after the gather (the heads)
    already get the whole ``dL/dw`` on every rank and are averaged to it unchanged."""
    if not runtime.distributed:
        return local
    return _GatherForGlobalLoss.apply(local, runtime.rank, runtime.world)
