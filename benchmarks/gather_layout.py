"""Under torchrun: does the key encoder's all_gather return the images each rank sent?

Suspicion (issue 17): ``MoCo._encode_keys_ddp`` gathers the key images with
:func:`sslbench.runtime.collectives.gather_equal`, which receives into ``torch.empty_like(x)``
buffers (these keep ``x``'s channels_last strides) while it sends ``x.contiguous()`` (NCHW-contiguous
bytes). A collective that copies raw memory (NCCL) would then fill the channels_last buffers with
NCHW bytes: images silently scrambled, training on. Each rank here sends a channels_last batch whose
every value encodes (rank, sample, channel, row, column); the gathered tensor must equal the
concatenation of all ranks' batches exactly, in both memory formats. Prints one line per case and
exits 1 on any mismatch. (gpu_check.sh follows it with a one-step 2-GPU pretraining smoke run.)

    torchrun --standalone --nproc_per_node 2 benchmarks/gather_layout.py   # NCCL on GPUs, Gloo on CPUs
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from sslbench.runtime.collectives import gather_equal


def _batch(rank: int, n: int, c: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Values that name their own position, distinct on every rank (exact in float32)."""
    index = torch.arange(n * c * h * w, device=device, dtype=torch.float32).view(n, c, h, w)
    return index + rank * n * c * h * w


def main() -> int:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    failures = 0
    for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for dtype in (torch.float32, torch.bfloat16):
            x = _batch(rank, 4, 3, 8, 8, device).to(dtype).contiguous(memory_format=fmt)
            gathered = gather_equal(x)
            expected = torch.cat([_batch(r, 4, 3, 8, 8, device).to(dtype) for r in range(world)])
            ok = torch.equal(gathered, expected)
            failures += not ok
            if rank == 0:
                print(f"gather {name:13s} {dtype!s:15s} {'ok' if ok else 'MISMATCH'} ({dist.get_backend()})")
    total = torch.tensor([failures], device=device)
    dist.all_reduce(total)
    if rank == 0:
        print(
            "gather_layout: all gathers exact"
            if not total.item()
            else f"gather_layout: {total.item()} mismatches"
        )
    dist.destroy_process_group()
    return 0 if not total.item() else 1


if __name__ == "__main__":
    sys.exit(main())
