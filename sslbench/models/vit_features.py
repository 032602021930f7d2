"""DINO's linear-probe feature of a ViT: CLS tokens of the last blocks, optionally with pooled patches.

DINO ``eval_linear.py`` (Caron et al. 2021) reads ``get_intermediate_layers(x, n)`` of its
``vision_transformer.py``: the tokens after each of the last ``n`` blocks, each passed through the
final LayerNorm. Its feature is the concatenation of those CLS tokens in block order, ``(B, n*D)``.
With ``avgpool_patchtokens`` it stacks that with the mean of the last block's (normed) patch tokens
on a new last axis and flattens, ``cat((cls.unsqueeze(-1), avg.unsqueeze(-1)), -1).reshape(B, -1)``:
the two are interleaved element by element, ``[cls_0, avg_0, cls_1, avg_1, ...]``. That cat only
has matching shapes for ``n = 1`` (DINO's ViT-B recipe), so avgpool with ``n > 1`` is refused here.

:class:`DinoLinearFeatures` computes it with timm's ``forward_intermediates`` (``norm=True`` applies
the model's final ``norm`` to every taken block, as DINO does).
"""

from __future__ import annotations

import torch
from torch import nn

DINO_FEATURE_SOURCE = "DINO eval_linear.py + vision_transformer.py get_intermediate_layers"


def check_dino_layout(depth: int, n_last_blocks: int, avgpool_patchtokens: bool) -> None:
    """ValueError unless ``1 <= n_last_blocks <= depth`` and avgpool comes with ``n_last_blocks == 1``."""
    if not 1 <= n_last_blocks <= depth:
        raise ValueError(f"n_last_blocks {n_last_blocks} is not in 1..{depth} (the ViT's depth)")
    if avgpool_patchtokens and n_last_blocks != 1:
        raise ValueError(
            f"avgpool_patchtokens needs n_last_blocks 1 (DINO's cat of (B, n*D) CLS tokens with the "
            f"(B, D) pooled patches fails for n={n_last_blocks})"
        )


def dino_feature_dim(width: int, n_last_blocks: int, avgpool_patchtokens: bool) -> int:
    """``width * (n + avgpool)``, as DINO sizes its linear classifier."""
    return width * (n_last_blocks + int(avgpool_patchtokens))


def describe_dino_layout(n_last_blocks: int, avgpool_patchtokens: bool) -> str:
    text = (
        f"CLS tokens of the last {n_last_blocks} blocks, each after the final LayerNorm, concatenated "
        "in block order"
    )
    if avgpool_patchtokens:
        text += (
            " + the mean of the last block's normed patch tokens, interleaved element by element with "
            "the CLS token ([cls_0, avg_0, cls_1, avg_1, ...], DINO's cat/reshape)"
        )
    return f"{text} ({DINO_FEATURE_SOURCE})"


class DinoLinearFeatures(nn.Module):
    """``(B, 3, H, W) -> (B, D * (n + avgpool))``: DINO's linear-probe feature of a timm ViT ``vit``."""

    def __init__(self, vit: nn.Module, n_last_blocks: int, avgpool_patchtokens: bool) -> None:
        super().__init__()
        check_dino_layout(len(vit.blocks), n_last_blocks, avgpool_patchtokens)  # type: ignore[arg-type]
        self.vit = vit
        self.n_last_blocks = n_last_blocks
        self.avgpool_patchtokens = avgpool_patchtokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        taken = self.vit.forward_intermediates(  # type: ignore[operator]
            images,
            indices=self.n_last_blocks,
            norm=True,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )  # [(patch tokens (B, L, D), prefix tokens (B, 1, D))] for the last n blocks, in block order
        feature = torch.cat([prefix[:, 0] for _, prefix in taken], dim=-1)
        if self.avgpool_patchtokens:
            pooled = taken[-1][0].mean(dim=1)
            feature = torch.stack((feature, pooled), dim=-1).flatten(1)
        return feature
