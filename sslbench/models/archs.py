"""ResNet architecture names and shapes of their stages; no torch import, so the CLI starts fast.

Names are torchvision's (``resnet18`` ... ``resnet152``); the ``_small_stem`` variants (e.g.
``resnet18_small_stem``) swap the 7x7/2 stem and max-pool for one 3x3/1 convolution, the usual
CIFAR-style stem, so 32-64 px images keep a useful spatial size through ``layer4``.
"""

from __future__ import annotations

SMALL_STEM_SUFFIX = "_small_stem"

# Blocks per stage and block type, as in torchvision (He et al. 2016).
DEPTHS: dict[str, tuple[tuple[int, int, int, int], str]] = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet101": ((3, 4, 23, 3), "bottleneck"),
    "resnet152": ((3, 8, 36, 3), "bottleneck"),
}

ARCHS: tuple[str, ...] = tuple(DEPTHS) + tuple(name + SMALL_STEM_SUFFIX for name in DEPTHS)


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
    return DEPTHS[base_arch(check_arch(arch))]


def feature_dim(arch: str) -> int:
    """Width of the pooled feature: 512 for ResNet-18/34, 2048 for ResNet-50/101/152."""
    return 512 if stage_depths(arch)[1] == "basic" else 2048
