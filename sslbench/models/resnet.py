"""torchvision ResNet backbones, the architectures every checkpoint is canonicalised to.

The backbone is a torchvision ``ResNet`` whose ``fc`` is replaced by ``nn.Identity``: its forward
returns the flattened global-average-pooled feature ``(B, D)`` and its ``state_dict`` holds exactly
the canonical keys (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ..., no ``fc``).

The ``_small_stem`` variants (e.g. ``resnet18_small_stem``) swap the 7x7/2 stem convolution and the
max-pool for one 3x3/1 convolution, the usual CIFAR-style stem, so that 32-64 px images keep a
useful spatial size through ``layer4``. Only ``conv1.weight``'s shape differs from the plain model.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

SMALL_STEM_SUFFIX = "_small_stem"

# Blocks per stage and block type, as in torchvision (He et al. 2016).
_DEPTHS: dict[str, tuple[tuple[int, int, int, int], str]] = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet101": ((3, 4, 23, 3), "bottleneck"),
    "resnet152": ((3, 8, 36, 3), "bottleneck"),
}

ARCHS: tuple[str, ...] = tuple(_DEPTHS) + tuple(name + SMALL_STEM_SUFFIX for name in _DEPTHS)


def base_arch(arch: str) -> str:
    """``resnet18_small_stem`` -> ``resnet18``."""
    return arch.removesuffix(SMALL_STEM_SUFFIX)


def is_small_stem(arch: str) -> bool:
    return arch.endswith(SMALL_STEM_SUFFIX)


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    return arch


def stage_depths(arch: str) -> tuple[tuple[int, int, int, int], str]:
    """Blocks per stage and the block type (``basic`` or ``bottleneck``) of ``arch``."""
    return _DEPTHS[base_arch(check_arch(arch))]


def feature_dim(arch: str) -> int:
    """Width of the pooled feature: 512 for ResNet-18/34, 2048 for ResNet-50/101/152."""
    return 512 if stage_depths(arch)[1] == "basic" else 2048


def build_backbone(arch: str) -> nn.Module:
    """A randomly initialised backbone of ``arch`` with ``fc = Identity``; forward gives ``(B, D)``."""
    model: tvm.ResNet = getattr(tvm, base_arch(check_arch(arch)))()
    if is_small_stem(arch):
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def backbone_shapes(arch: str) -> dict[str, torch.Size]:
    """Canonical key -> shape for ``arch``, computed on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = build_backbone(arch)
    return {key: value.shape for key, value in model.state_dict().items()}
