"""The canonical checkpoint: a torchvision ResNet or timm ViT backbone state dict plus where it came from.

Every reader returns a :class:`CanonicalCheckpoint`; every writer takes one. Matching is strict:
the key set must equal the architecture's backbone key set and every shape must agree, otherwise
:class:`~sslbench.errors.CheckpointError` lists the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sslbench.errors import CheckpointError
from sslbench.models.archs import DEPTHS, SMALL_STEM_SUFFIX
from sslbench.models.resnet import backbone_shapes
from sslbench.models.vit_archs import VitSpec, default_heads, is_vit_arch

StateDict = dict[str, torch.Tensor]

_BN_COUNTER = "num_batches_tracked"
_SHOWN = 8  # keys listed per category in a mismatch message


@dataclass(frozen=True)
class CanonicalCheckpoint:
    """A backbone in torchvision (ResNet, no ``fc``) or timm (ViT, no ``head``) names and its provenance."""

    state_dict: StateDict
    arch: str
    source_format: str
    source_path: str
    sha256: str
    key: str | None = None
    container: str = "torch"
    dropped: dict[str, int] = field(default_factory=dict)  # dropped group -> number of tensors
    other_entries: tuple[str, ...] = ()  # non-weight top-level entries (optimizer, epoch, ...)
    filled: tuple[str, ...] = ()  # keys absent from the source and filled (BN counters only)
    zoo: str | None = None  # the zoo entry's name when the checkpoint was given as zoo:NAME

    @property
    def num_parameters(self) -> int:
        """Learnable parameters (BN running statistics and counters excluded)."""
        return sum(
            t.numel()
            for k, t in self.state_dict.items()
            if not k.endswith(("running_mean", "running_var", _BN_COUNTER))
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able provenance, as stored in result records (``zoo``: only for a zoo:NAME checkpoint)."""
        described = {
            "path": self.source_path,
            "sha256": self.sha256,
            "format": self.source_format,
            "key": self.key,
            "arch": self.arch,
        }
        return described | ({"zoo": self.zoo} if self.zoo is not None else {})


def _preview(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def looks_like_vit(state_dict: StateDict) -> bool:
    """Canonical ViT keys: a class token, position embeddings and ``blocks.*``."""
    has_blocks = any(k.startswith("blocks.") for k in state_dict)
    return "cls_token" in state_dict and "pos_embed" in state_dict and has_blocks


def infer_vit_arch(state_dict: StateDict, where: str, source_format: str | None = None) -> str:
    """Name the ViT ``state_dict`` (canonical names) belongs to: width from ``cls_token``, patch from
    ``patch_embed.proj``, depth from ``blocks.N``, heads by :func:`default_heads`."""
    width = state_dict["cls_token"].shape[-1]
    proj = state_dict.get("patch_embed.proj.weight")
    if proj is None or proj.dim() != 4 or proj.shape[-1] != proj.shape[-2]:
        raise CheckpointError(f"{where}: a ViT without a square patch_embed.proj.weight convolution")
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    heads = default_heads(width, source_format)
    if heads is None:
        raise CheckpointError(
            f"{where}: a ViT of width {width}, whose number of heads no rule gives (the file does not "
            f"store it); name it with --arch vit_d{width}_l{depth}_h<HEADS>_p{proj.shape[-1]}"
        )
    return VitSpec(width, depth, heads, proj.shape[-1]).name


def infer_arch(state_dict: StateDict, where: str, source_format: str | None = None) -> str:
    """Name the torchvision ResNet or timm ViT that ``state_dict`` (canonical names) belongs to."""
    keys = set(state_dict)
    if looks_like_vit(state_dict):
        return infer_vit_arch(state_dict, where, source_format)
    if "conv1.weight" not in keys or not any(k.startswith("layer4.") for k in keys):
        raise CheckpointError(
            f"{where}: no backbone found (expected a ResNet's conv1.weight and layer1..layer4.*, or a "
            f"ViT's cls_token, pos_embed and blocks.*; found {_preview(sorted(keys))})."
        )
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(max(indices) + 1 if indices else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in keys else "basic"
    # The closest depth of the same block type; an inexact match then fails strict matching,
    # which names the missing or unexpected blocks.
    candidates = [(name, depths) for name, (depths, block) in DEPTHS.items() if block == kind]
    name, _ = min(candidates, key=lambda c: sum(abs(a - b) for a, b in zip(c[1], blocks, strict=True)))
    small = state_dict["conv1.weight"].shape[-1] == 3
    return name + (SMALL_STEM_SUFFIX if small else "")


def _expected_shapes(state_dict: StateDict, arch: str, where: str) -> dict[str, torch.Size]:
    if not is_vit_arch(arch):
        return backbone_shapes(arch)
    from sslbench.models.vit import pos_embed_grid, vit_shapes

    # A ViT's position embeddings may cover any square grid (the pretraining resolution).
    pos = state_dict.get("pos_embed")
    return vit_shapes(arch, pos_embed_grid(pos, where) if pos is not None else 1)


def match_backbone(
    state_dict: StateDict, arch: str, where: str, file_key: Callable[[str], str] | None = None
) -> tuple[StateDict, tuple[str, ...]]:
    """Check ``state_dict`` against ``arch`` strictly; return it in canonical key order.

    Missing BatchNorm ``num_batches_tracked`` counters (absent from some exporters) are filled with
    zeros and reported; anything else missing, unexpected or mis-shaped is an error. ``file_key``
    gives a renamed format's own name of a canonical key: messages then show both.
    """

    def shown(key: str) -> str:
        original = file_key(key) if file_key is not None else key
        return key if original == key else f"{original} (canonical {key})"

    expected = _expected_shapes(state_dict, arch, where)
    missing = [k for k in expected if k not in state_dict]
    unexpected = sorted(shown(k) for k in state_dict if k not in expected)
    misshaped = [
        f"{shown(k)}: checkpoint {tuple(state_dict[k].shape)} vs {arch} {tuple(shape)}"
        for k, shape in expected.items()
        if k in state_dict and state_dict[k].shape != shape
    ]
    filled = tuple(k for k in missing if k.endswith(_BN_COUNTER))
    missing = [shown(k) for k in missing if not k.endswith(_BN_COUNTER)]
    if missing or unexpected or misshaped:
        lines = [f"{where} does not match {arch}:"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                lines.append(f"  {label} ({len(items)}): {_preview(items)}")
        raise CheckpointError("\n".join(lines))
    ordered = {k: (state_dict[k] if k in state_dict else torch.zeros((), dtype=torch.long)) for k in expected}
    return ordered, filled


def check_values(state_dict: StateDict, where: str) -> None:
    """Refuse weights no trained ResNet holds: complex numbers, NaN or infinite values."""
    complex_keys = [k for k, v in state_dict.items() if v.is_complex()]
    if complex_keys:
        raise CheckpointError(f"{where}: complex-valued tensors: {_preview(complex_keys)}")
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{where}: NaN or infinite values in {_preview(bad)}")


def tensors_differing(module: torch.nn.Module, reference: StateDict) -> list[str]:
    """Keys where ``module``'s state dict is not exactly ``reference`` (missing or extra keys too),
    sorted: the check behind "the backbone is the checkpoint's" guarantees (MoCo's sanity_check)."""
    current = module.state_dict()
    differ = set(current) ^ set(reference)
    differ |= {
        k
        for k in set(current) & set(reference)
        if not torch.equal(current[k].detach().cpu(), reference[k].cpu())
    }
    return sorted(differ)
