"""torchvision <-> Detectron2 ResNet parameter names, following MoCo's detection converter.

``layerN`` -> ``res{N+1}``, ``bnK`` -> ``convK.norm``, ``downsample.0`` / ``downsample.1`` ->
``shortcut`` / ``shortcut.norm``, and the stem (``conv1``, ``bn1``) under ``stem.``:

    conv1.weight              <-> stem.conv1.weight
    bn1.running_mean          <-> stem.conv1.norm.running_mean
    layer3.4.bn2.weight       <-> res4.4.conv2.norm.weight
    layer1.0.downsample.1.bias <-> res2.0.shortcut.norm.bias
"""

from __future__ import annotations

import re

_STAGE = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_D2_STAGE = re.compile(r"^res([2-5])\.(\d+)\.(.+)$")


def _block_to_d2(name: str) -> str:
    if m := re.match(r"^bn([1-3])\.(.+)$", name):
        return f"conv{m.group(1)}.norm.{m.group(2)}"
    if m := re.match(r"^downsample\.([01])\.(.+)$", name):
        return ("shortcut." if m.group(1) == "0" else "shortcut.norm.") + m.group(2)
    return name


def _block_from_d2(name: str) -> str:
    if m := re.match(r"^conv([1-3])\.norm\.(.+)$", name):
        return f"bn{m.group(1)}.{m.group(2)}"
    if name.startswith("shortcut.norm."):
        return "downsample.1." + name.removeprefix("shortcut.norm.")
    if name.startswith("shortcut."):
        return "downsample.0." + name.removeprefix("shortcut.")
    return name


def to_detectron2(key: str) -> str:
    """A canonical (torchvision) backbone key in Detectron2's ResNet naming."""
    if m := _STAGE.match(key):
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.{_block_to_d2(m.group(3))}"
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key.removeprefix("bn1.")
    return "stem." + key


def from_detectron2(key: str) -> str:
    """Inverse of :func:`to_detectron2`; keys outside the backbone are returned unchanged."""
    if m := _D2_STAGE.match(key):
        return f"layer{int(m.group(1)) - 1}.{m.group(2)}.{_block_from_d2(m.group(3))}"
    if key.startswith("stem.conv1.norm."):
        return "bn1." + key.removeprefix("stem.conv1.norm.")
    if key.startswith("stem."):
        return key.removeprefix("stem.")
    return key
