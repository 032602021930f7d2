"""Feature-extraction throughput: the whole data path against the bare model forward, same run.

* ``whole``: :func:`sslbench.evaluate.features.extract_split` on JPEG files of an ImageFolder: decode,
  bicubic Resize + CenterCrop (DINO eval_knn's transform), DataLoader workers, pinned copy to the
  device, forward in the runtime's precision, features back on the CPU. What ``knn`` and
  ``linear --protocol lbfgs`` pay per image.
* ``bare``: the same model's forward on the same images, already decoded, transformed and on the
  device (the tensors the data path produced, kept), in the same precision.

The ratio ``whole / bare`` says how much of the model's speed the data path delivers (1.0: the
GPU never waits for data). On CUDA the bare forward is also timed in float32 without channels_last,
to show what bf16 + channels_last buys (``--fp32`` forces it elsewhere too).

    python benchmarks/extraction.py                 # CUDA: ResNet-50, 224 px, 512 images
    python benchmarks/extraction.py --images 64     # CPU default: small-stem ResNet-18, 64 px
    python benchmarks/extraction.py --arch vit_base_patch16   # the canonical timm ViT (random weights)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sslbench.data.fixtures import write_imagefolder
from sslbench.data.registry import build_dataset
from sslbench.data.transforms import eval_transform
from sslbench.evaluate.features import extract_split
from sslbench.models.resnet import build_backbone
from sslbench.models.vit import build_vit, vit_shapes
from sslbench.models.vit_archs import is_vit_arch, parse_vit_arch
from sslbench.runtime.precision import Precision
from sslbench.runtime.process import Runtime


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(model: torch.nn.Module, batches: list[torch.Tensor], precision: Precision) -> float:
    """Images per second of ``model`` on ``batches`` (already on the device), after one warm-up batch."""
    model = precision.model(model.eval())
    with torch.inference_mode():
        with precision.autocast():
            model(batches[0])
        _sync(precision.device)
        start = time.perf_counter()
        for batch in batches:
            with precision.autocast():
                model(batch).float().cpu()
        _sync(precision.device)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def build_model(arch: str, size: int) -> torch.nn.Module:
    """The backbone every probe runs: a torchvision ResNet, or the canonical ViT (CLS output) built the
    way checkpoints are read, from a state dict (random weights here)."""
    if not is_vit_arch(arch):
        return build_backbone(arch)
    grid = size // parse_vit_arch(arch).patch
    state = {name: 0.02 * torch.randn(shape) for name, shape in vit_shapes(arch, grid).items()}
    return build_vit(arch, state, size, "size")


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50" if cuda else "resnet18_small_stem")
    parser.add_argument("--size", type=int, default=224 if cuda else 64, help="crop side, px")
    parser.add_argument("--images", type=int, default=512 if cuda else 128)
    parser.add_argument("--batch", type=int, default=128 if cuda else 32)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()

    device = torch.device("cuda" if cuda else "cpu")
    runtime = Runtime(device=device)
    precision = Precision(device)
    torch.manual_seed(0)
    model = build_model(args.arch, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        per_class = max(1, round(args.images * 1.5 / 10))  # a third of each class goes to val
        # JPEGs a little larger than the crop, so that Resize does real work
        write_imagefolder(Path(tmp), num_classes=10, per_class=per_class, size=round(args.size * 1.2))
        data = build_dataset("imagefolder", tmp, "trainval", eval_transform(args.size))
        extract_split(model, data, args.batch, args.workers, runtime, progress=False)  # warm-up
        _sync(device)
        start = time.perf_counter()
        extract_split(model, data, args.batch, args.workers, runtime, progress=False)
        _sync(device)
        whole = len(data) / (time.perf_counter() - start)
        loader = DataLoader(data, batch_size=args.batch, num_workers=args.workers)
        batches = [precision.images(images) for images, _ in loader]

    bare = bare_forward(model, batches, precision)
    print(
        f"device {device}, {args.arch} at {args.size} px, {len(data)} images, batch {args.batch}, "
        f"{args.workers} workers, {precision.name}"
    )
    print(
        f"extraction  whole data path {whole:9.1f} images/s   bare forward {bare:9.1f} images/s   "
        f"ratio {whole / bare:.3f}"
    )
    if cuda:
        fp32 = bare_forward(model, [b.contiguous() for b in batches], Precision(device, False, False))
        print(
            f"forward     fp32 {fp32:9.1f} images/s   bf16+channels_last {bare:9.1f} images/s   "
            f"speed-up x{bare / fp32:.2f}"
        )


if __name__ == "__main__":
    main()
