"""Step time of plain MoCo vs MoCo+FT, in the same process on the same model, and their ratio.

One optimisation step (forward, InfoNCE loss, backward, SGD step, enqueue) with FT off and on,
alternating so that both see the same machine load. Defaults: K=65536, D=128, MoCo v2 head; on a
CPU the small-stem ResNet-18 at 32 px, on a GPU ResNet-50 at 224 px with bf16 autocast and
channels_last. Goal: FT adds at most 3% to the step.

Besides the full steps it times FT's own extra work alone (drawing lambda/mu/perm, mixing the
queue, the positive pair, the logits against the mixed queue and the plain scores kept for the
statistics), which a noisy shared CPU resolves better than the difference of two step times.

    python benchmarks/pretrain_step.py [--batch 256] [--steps 5] [--dim-mask none|both]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sslbench.pretrain.config import FeatureTransformConfig
from sslbench.pretrain.feature_transform import contrast_scores, feature_transform_scores, sample_draws
from sslbench.pretrain.moco import MoCo
from sslbench.pretrain.scores import batch_score_stats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50" if cuda else "resnet18_small_stem")
    parser.add_argument("--size", type=int, default=224 if cuda else 32, help="image side, px")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--queue", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (after one warm-up)")
    parser.add_argument("--bn-splits", type=int, default=8)
    parser.add_argument("--dim-mask", default="none", choices=["none", "pos", "neg", "both"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    ft = FeatureTransformConfig(enabled=True, dim_mask=args.dim_mask)
    model = MoCo(
        args.arch,
        dim=args.dim,
        queue_size=args.queue,
        temperature=0.2,
        mlp=True,
        bn_splits=args.bn_splits,
        ft=ft,
    ).to(device)
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.query_parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(2, args.batch, 3, args.size, args.size, device=device)
    im_q = images[0].contiguous(memory_format=memory_format)
    im_k = images[1].contiguous(memory_format=memory_format)
    labels = torch.zeros(args.batch, dtype=torch.long, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def step(apply_ft: bool) -> float:
        _sync(device)
        start = time.perf_counter()
        with autocast:
            output = model(im_q, im_k, apply_ft=apply_ft)
        loss = F.cross_entropy(output.logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        return time.perf_counter() - start

    q = F.normalize(torch.randn(args.batch, args.dim, device=device), dim=1).requires_grad_(True)
    k = F.normalize(torch.randn(args.batch, args.dim, device=device), dim=1)

    def scores_only(apply_ft: bool) -> float:
        """The logits-side work of one step (forward and backward), FT on or off."""
        _sync(device)
        start = time.perf_counter()
        queue = model.queue.clone()
        if apply_ft:
            draws = sample_draws(ft, args.batch, args.dim, args.queue, device)
            with torch.no_grad():
                before = batch_score_stats(contrast_scores(q, k, queue))
            scores = feature_transform_scores(q, k, queue, ft, draws)
            after = batch_score_stats(scores)
        else:
            scores = contrast_scores(q, k, queue)
            before = after = batch_score_stats(scores)
        F.cross_entropy(scores / 0.2, labels).backward()
        (before + after).sum().item()
        _sync(device)
        return time.perf_counter() - start

    print(
        f"device {device} ({torch.get_num_threads()} CPU threads), {args.arch} at {args.size} px, "
        f"batch {args.batch}, K={args.queue}, D={args.dim}, FT posneg dim_mask={args.dim_mask}"
    )
    step(False), step(True)  # warm-up: allocator, oneDNN/cuDNN kernels
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.steps):
        for apply_ft in (False, True):
            times[apply_ft].append(step(apply_ft))
    plain, with_ft = statistics.median(times[False]), statistics.median(times[True])
    print(f"full step   plain MoCo {plain:8.3f} s   MoCo+FT {with_ft:8.3f} s   ratio {with_ft / plain:.3f}")

    extra: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(max(20, args.steps)):
        for apply_ft in (False, True):
            extra[apply_ft].append(scores_only(apply_ft))
    logits_plain, logits_ft = statistics.median(extra[False]), statistics.median(extra[True])
    overhead = (logits_ft - logits_plain) / plain
    print(
        f"logits part plain MoCo {logits_plain * 1e3:8.2f} ms  MoCo+FT {logits_ft * 1e3:8.2f} ms"
        f"   FT's extra work = {100 * overhead:.2f}% of a plain step (goal <= 3%)"
    )


if __name__ == "__main__":
    main()
