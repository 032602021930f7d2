"""Vision Transformer architecture names; no torch import, so the CLI starts fast.

A ViT backbone (timm's ``VisionTransformer``: class token, learned or fixed absolute position
embeddings, pre-norm blocks with MLP ratio 4, final LayerNorm) is named either after the standard
sizes of Dosovitskiy et al. 2021 / DeiT (Touvron et al. 2021), ``vit_small_patch16``, or, for any
other shape, ``vit_d<width>_l<depth>_h<heads>_p<patch>`` (e.g. ``vit_d64_l2_h4_p8``).

Width, depth and patch size are read from the tensors' shapes; the number of heads is not in
any shape (``qkv`` is ``3*width x width`` whatever the heads), so :func:`default_heads` names it:
the standard size of that width (64-dim heads, 16 for ViT-H), except MoCo v3's ViT-S, which uses
12 heads (moco-v3 ``vits.py``); ``--arch`` overrides it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VIT_PREFIX = "vit_"

# name -> (width, depth, heads): ViT-Ti/S from DeiT, ViT-B/L/H from Dosovitskiy et al. 2021.
STANDARD: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
MOCOV3_SMALL_HEADS = 12  # moco-v3 vits.py: vit_small(embed_dim=384, depth=12, num_heads=12)
HEAD_DIM = 64  # the heads' width in every standard ViT but ViT-H

_STANDARD_NAME = re.compile(r"^vit_(tiny|small|base|large|huge)_patch(\d+)$")
_GENERIC_NAME = re.compile(r"^vit_d(\d+)_l(\d+)_h(\d+)_p(\d+)$")


@dataclass(frozen=True)
class VitSpec:
    """The shape of a ViT backbone."""

    width: int
    depth: int
    heads: int
    patch: int

    @property
    def name(self) -> str:
        for size, (width, depth, heads) in STANDARD.items():
            if (width, depth, heads) == (self.width, self.depth, self.heads):
                return f"vit_{size}_patch{self.patch}"
        return f"vit_d{self.width}_l{self.depth}_h{self.heads}_p{self.patch}"


def is_vit_arch(arch: str) -> bool:
    return arch.startswith(VIT_PREFIX)


def parse_vit_arch(arch: str) -> VitSpec:
    """``vit_small_patch16`` or ``vit_d64_l2_h4_p8`` -> its :class:`VitSpec`; ValueError otherwise."""
    if m := _STANDARD_NAME.match(arch):
        width, depth, heads = STANDARD[m.group(1)]
        spec = VitSpec(width, depth, heads, int(m.group(2)))
    elif m := _GENERIC_NAME.match(arch):
        spec = VitSpec(*(int(g) for g in m.groups()))
    else:
        raise ValueError(
            f"unknown ViT architecture {arch!r}; expected vit_<tiny|small|base|large|huge>_patch<P> "
            "or vit_d<width>_l<depth>_h<heads>_p<patch>"
        )
    if min(spec.width, spec.depth, spec.heads, spec.patch) < 1 or spec.width % spec.heads:
        raise ValueError(f"{arch}: width, depth, heads and patch must be positive, width divisible by heads")
    return spec


def default_heads(width: int, source_format: str | None = None) -> int | None:
    """Heads of a ViT of this width when the checkpoint does not say (see the module docstring);
    None when no rule applies (the width is not a multiple of 64): then ``--arch`` must name them."""
    if source_format == "mocov3" and width == STANDARD["small"][0]:
        return MOCOV3_SMALL_HEADS
    for standard_width, _, heads in STANDARD.values():
        if width == standard_width:
            return heads
    return width // HEAD_DIM if width % HEAD_DIM == 0 else None
