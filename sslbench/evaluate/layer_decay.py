"""AdamW parameter groups with layer-wise lr decay, as MAE fine-tunes a ViT.

Rule (facebookresearch/mae ``util/lr_decay.py`` ``param_groups_lrd`` and ``get_layer_id_for_vit``,
after BEiT): with ``L = depth + 1`` layers, ``cls_token``, ``pos_embed`` and ``patch_embed.*`` are
layer 0, ``blocks.i.*`` layer ``i + 1`` and every other parameter (final norms, the head) layer ``L``;
a parameter's lr is the schedule's lr times ``layer_decay ** (L - layer)``. Weight decay is 0 for every
1-d parameter (biases, norms) and for MAE's ``no_weight_decay_list`` (timm's
``VisionTransformer.no_weight_decay()``: ``pos_embed``, ``cls_token``), the configured value elsewhere.

timm's ``param_groups_layer_decay`` (1.0.31) is not used: it groups by the ViT's own
``group_matcher``, so it needs the bare ViT (ours carries its heads beside the backbone), and on a
CLS-token ViT it puts the final ``norm`` in the last block's layer (scale ``layer_decay``) where MAE's
rule puts it at the top (scale 1). On timm's avg-pooled ViT its scales equal MAE's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

NO_WEIGHT_DECAY = ("pos_embed", "cls_token")  # timm VisionTransformer.no_weight_decay(), as MAE passes it
BACKBONE_PREFIX = "backbone."


def vit_layer_id(name: str, num_layers: int) -> int:
    """MAE's layer of a ViT parameter ``name`` (a name inside the ViT, e.g. ``blocks.3.mlp.fc1.weight``)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def layer_scales(depth: int, layer_decay: float) -> list[float]:
    """lr multiplier of layers ``0 .. depth + 1``: ``layer_decay ** (depth + 1 - layer)``."""
    num_layers = depth + 1
    return [layer_decay ** (num_layers - layer) for layer in range(num_layers + 1)]


def param_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    weight_decay: float,
    layer_decay: float,
    vit_depth: int | None,
) -> list[dict[str, Any]]:
    """Optimizer groups ``{"params", "weight_decay", "lr_scale", "names"}`` of a fine-tuned model whose
    ViT backbone (``vit_depth`` blocks) sits under ``backbone.``; parameters outside it (heads) are in
    the top layer. Without a ViT (``vit_depth`` None) every parameter has scale 1. Parameters that do
    not require a gradient are left out (as MAE's ``param_groups_lrd``)."""
    scales = layer_scales(vit_depth, layer_decay) if vit_depth is not None else [1.0]
    top = len(scales) - 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        inner = name[len(BACKBONE_PREFIX) :] if name.startswith(BACKBONE_PREFIX) else None
        layer = vit_layer_id(inner, top) if inner is not None and vit_depth is not None else top
        decays = not (parameter.ndim == 1 or inner in NO_WEIGHT_DECAY)
        group = groups.setdefault(
            (layer, decays),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decays else 0.0,
                "lr_scale": scales[layer],
            },
        )
        group["params"].append(parameter)
        group["names"].append(name)
    return list(groups.values())
