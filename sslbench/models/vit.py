"""The canonical ViT backbone: timm's ``VisionTransformer`` without a classifier.

Its forward returns the final-norm class token (DINO ``eval_knn.py``'s feature), so every probe
reads a ViT the way it reads a ResNet's pooled feature. Position embeddings are stored at the
checkpoint's own patch grid and resized to the evaluation grid when the backbone is built
(:func:`resize_pos_embed`). timm is imported here only (the optional ``vit`` extra).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.errors import CheckpointError
from sslbench.models.vit_archs import VitSpec, parse_vit_arch

MLP_RATIO = 4.0  # every ViT sslbench reads (DINO, MoCo v3, MAE, timm's standard sizes)
LAYERNORM_EPS = 1e-6  # timm's ViT default; DINO and MAE build theirs with the same eps

# How each source resizes its position embeddings at evaluation (DINO's differs from MAE's/timm's).
POS_EMBED_METHODS = {
    "dino": "bicubic on the patch grid with scale_factor (new+0.1)/old, class token kept "
    "(DINO vision_transformer.py interpolate_pos_encoding)",
    "size": "bicubic on the patch grid to the new size, align_corners=False, class token kept "
    "(MAE util/pos_embed.py interpolate_pos_embed)",
    "torchvision": "bicubic on the patch grid to the new size, align_corners=True, class token kept "
    "(torchvision models/vision_transformer.py interpolate_embeddings)",
}


def _timm_vit(spec: VitSpec, image_size: int, drop_path: float = 0.0) -> nn.Module:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise CheckpointError(
            "reading a ViT needs timm: pip install 'sslbench[vit]' (or pip install timm)"
        ) from None
    return VisionTransformer(
        img_size=image_size,
        patch_size=spec.patch,
        embed_dim=spec.width,
        depth=spec.depth,
        num_heads=spec.heads,
        mlp_ratio=MLP_RATIO,
        qkv_bias=True,
        num_classes=0,
        global_pool="token",
        drop_path_rate=drop_path,  # stochastic depth, linear in depth from 0 (MAE: timm's drop_path_rate)
    )


def vit_shapes(arch: str, grid: int) -> dict[str, torch.Size]:
    """Canonical key -> shape of ``arch`` with a ``grid x grid`` patch grid (built on the meta device)."""
    spec = parse_vit_arch(arch)
    with torch.device("meta"):
        model = _timm_vit(spec, grid * spec.patch)
    return {k: v.shape for k, v in model.state_dict().items()}


def pos_embed_grid(pos_embed: torch.Tensor, where: str) -> int:
    """Side of the square patch grid a ``(1, 1 + g*g, D)`` position embedding covers."""
    tokens = pos_embed.shape[1] - 1 if pos_embed.dim() == 3 else -1
    side = math.isqrt(tokens) if tokens > 0 else 0
    if side * side != tokens or pos_embed.shape[0] != 1:
        raise CheckpointError(
            f"{where}: pos_embed {tuple(pos_embed.shape)} is not (1, 1 + g*g, width) for a square patch grid"
        )
    return side


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: int, method: str) -> torch.Tensor:
    """Resize ``(1, 1 + g*g, D)`` position embeddings to ``new_grid``; the class token's is kept.

    ``dino``: bicubic with ``scale_factor=(new + 0.1) / old`` (DINO adds 0.1 against floating-point
    rounding of the output size, which also sets the sampling scale); ``size``: bicubic to the
    output size (MAE); ``torchvision``: the same with ``align_corners=True``. The same grid is
    returned unchanged by all three.
    """
    old_grid = pos_embed_grid(pos_embed, "pos_embed")
    if old_grid == new_grid:
        return pos_embed
    width = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    grid = patch_pos.float().reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    if method == "dino":
        scale = (new_grid + 0.1) / old_grid
        grid = F.interpolate(grid, scale_factor=(scale, scale), mode="bicubic", align_corners=False)
    elif method in ("size", "torchvision"):
        corners = method == "torchvision"
        grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=corners)
    else:
        raise ValueError(
            f"unknown position embedding method {method!r}; expected one of {list(POS_EMBED_METHODS)}"
        )
    if grid.shape[-2:] != (new_grid, new_grid):
        raise RuntimeError(
            f"resizing the position embeddings gave a {tuple(grid.shape[-2:])} grid, not {new_grid}"
        )
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, width).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


def pos_embed_method(source_format: str) -> str:
    """DINO and torchvision checkpoints resize as their own code does; every other source as MAE/timm do."""
    return {"dino": "dino", "torchvision-vit": "torchvision"}.get(source_format, "size")


def resized_state(
    arch: str, state_dict: dict[str, torch.Tensor], image_size: int, method: str
) -> dict[str, torch.Tensor]:
    """``state_dict`` with its position embeddings resized by ``method`` to ``image_size``'s patch grid:
    what :func:`build_vit` loads."""
    spec = parse_vit_arch(arch)
    if image_size % spec.patch:
        raise CheckpointError(
            f"{arch}: --image-size {image_size} is not a multiple of the patch size {spec.patch}"
        )
    if "pos_embed" not in state_dict:
        raise CheckpointError(f"{arch}: the state dict has no pos_embed")
    state = dict(state_dict)
    state["pos_embed"] = resize_pos_embed(state["pos_embed"], image_size // spec.patch, method)
    return state


def build_vit(
    arch: str, state_dict: dict[str, torch.Tensor], image_size: int, method: str, drop_path: float = 0.0
) -> nn.Module:
    """The canonical ViT for ``image_size`` px inputs, loaded strictly from ``state_dict`` (its
    position embeddings resized to the evaluation grid by ``method``); forward gives the CLS token.
    ``drop_path``: timm's ``drop_path_rate`` (stochastic depth while training; fine-tuning only)."""
    model = _timm_vit(parse_vit_arch(arch), image_size, drop_path)
    model.load_state_dict(resized_state(arch, state_dict, image_size, method), strict=True)
    return model


def last_block_patch_tokens(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(B, N, D)`` patch tokens (class token left out) after the last block, before the final norm:
    what MAE's global pooling averages (models_vit.py ``x[:, 1:, :].mean(dim=1)``)."""
    return model.forward_intermediates(  # type: ignore[operator]
        images, indices=1, norm=False, output_fmt="NLC", intermediates_only=True
    )[-1]
