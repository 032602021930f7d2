"""Does SplitBatchNorm2d copy its channels_last input, and what does that cost against BatchNorm2d?

Suspicion (issue 17): on one GPU pretraining runs channels_last, and ``SplitBatchNorm2d`` reshapes
its input ``(N, C, H, W) -> (N/s, s*C, H, W)``; in channels_last memory N and C are not adjacent, so
the reshape (and the one back) copies the activation at every BN layer. This prints, per ResNet-50
BN shape, whether each reshape is a view or a copy (data pointers) and the forward+backward time of
SplitBatchNorm2d (``--splits``) over plain BatchNorm2d on the same input, in the same process: a
ratio near 1 settles the suspicion, a large one says the copy matters. Exit status 0 either way
(it measures; the table is the answer).

    python benchmarks/split_bn_layout.py [--batch 128] [--splits 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from sslbench.pretrain.moco import SplitBatchNorm2d

# (channels, side) of ResNet-50's BN inputs at 224 px, one per stage, and the stem
SHAPES = ((64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(layer: nn.Module, x: torch.Tensor, steps: int) -> float:
    """Median seconds of one forward + backward of ``layer`` on ``x``."""
    times = []
    for i in range(steps + 1):
        inp = x.detach().requires_grad_()
        _sync(x.device)
        start = time.perf_counter()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out = layer(inp)
        out.float().sum().backward()
        _sync(x.device)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128 if cuda else 16)
    parser.add_argument("--splits", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20 if cuda else 3)
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    print(f"device {device}, batch {args.batch}, splits {args.splits}, input {dtype}, channels_last")
    print(f"{'C x H':>12}  {'reshape in':>10}  {'reshape out':>11}  {'BN ms':>8}  {'split ms':>8}  ratio")
    ratios = []
    for channels, side in SHAPES:
        x = torch.randn(args.batch, channels, side, side, device=device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        folded = x.reshape(n // args.splits, args.splits * c, h, w)
        unfolded = folded.reshape(n, c, h, w)
        copied_in = folded.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        copied_out = unfolded.untyped_storage().data_ptr() != folded.untyped_storage().data_ptr()
        plain = nn.BatchNorm2d(channels).to(device).train()
        split = SplitBatchNorm2d(channels, args.splits).to(device).train()
        plain_s, split_s = _time(plain, x, args.steps), _time(split, x, args.steps)
        ratios.append(split_s / plain_s)
        print(
            f"{channels:>6} x {side:<3}  {'copy' if copied_in else 'view':>10}  "
            f"{'copy' if copied_out else 'view':>11}  {plain_s * 1e3:8.3f}  {split_s * 1e3:8.3f}  "
            f"{split_s / plain_s:.2f}"
        )
    print(f"split BN / BN (median over shapes): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
