"""torchvision ResNet backbones, the architectures every checkpoint is canonicalised to.

The backbone is a torchvision ``ResNet`` whose ``fc`` is replaced by ``nn.Identity``: its forward
returns the flattened global-average-pooled feature ``(B, D)`` and its ``state_dict`` holds exactly
the canonical keys (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ..., no ``fc``).

The ``_small_stem`` variants (names and depths in :mod:`sslbench.models.archs`) differ from the
plain model only in ``conv1.weight``'s shape.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from sslbench.models.archs import base_arch, check_arch, is_small_stem


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
