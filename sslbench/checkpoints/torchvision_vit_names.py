"""torchvision ``VisionTransformer`` <-> timm ViT parameter names (the canonical ViT backbone).

Read from torchvision 0.29 ``models/vision_transformer.py``: the patch projection is ``conv_proj``,
the class token ``class_token``, the position embeddings ``encoder.pos_embedding`` (class token
first, as in timm), block ``N`` is ``encoder.layers.encoder_layer_N`` with ``ln_1``, a
``nn.MultiheadAttention`` ``self_attention`` (``in_proj_weight`` stacks q, k, v like timm's ``qkv``),
``ln_2`` and an MLP whose linear layers are ``mlp.0`` / ``mlp.3`` (``mlp.linear_1`` / ``mlp.linear_2``
in files written before pytorch/vision PR 6053, which ``MLPBlock._load_from_state_dict`` still
renames), and the final norm is ``encoder.ln``; ``heads.*`` is the classifier::

    conv_proj.weight                                     <-> patch_embed.proj.weight
    encoder.layers.encoder_layer_3.self_attention.in_proj_bias <-> blocks.3.attn.qkv.bias
    encoder.layers.encoder_layer_3.mlp.linear_2.weight  -> blocks.3.mlp.fc2.weight
"""

from __future__ import annotations

import re

# (torchvision, timm) name prefixes outside the blocks, and inside block N (after its prefix).
_TOP = (
    ("conv_proj.", "patch_embed.proj."),
    ("class_token", "cls_token"),
    ("encoder.pos_embedding", "pos_embed"),
    ("encoder.ln.", "norm."),
)
_BLOCK = (
    ("ln_1.", "norm1."),
    ("self_attention.in_proj_weight", "attn.qkv.weight"),
    ("self_attention.in_proj_bias", "attn.qkv.bias"),
    ("self_attention.out_proj.", "attn.proj."),
    ("ln_2.", "norm2."),
    ("mlp.0.", "mlp.fc1."),
    ("mlp.3.", "mlp.fc2."),
)
_LEGACY_MLP = (("mlp.linear_1.", "mlp.fc1."), ("mlp.linear_2.", "mlp.fc2."))  # MLPBlock version 1

_TV_BLOCK = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _swap(name: str, pairs: tuple[tuple[str, str], ...], reverse: bool = False) -> str | None:
    for tv, timm in pairs:
        old, new = (timm, tv) if reverse else (tv, timm)
        if name.startswith(old):
            return new + name.removeprefix(old)
    return None


def from_torchvision_vit(key: str) -> str:
    """A torchvision ViT key in timm's naming; keys it does not know (``heads.*``, a conv stem) are
    returned unchanged, so strict matching names them."""
    if m := _TV_BLOCK.match(key):
        inner = _swap(m.group(2), _BLOCK + _LEGACY_MLP)
        return key if inner is None else f"blocks.{m.group(1)}.{inner}"
    return _swap(key, _TOP) or key


def to_torchvision_vit(key: str) -> str:
    """Inverse of :func:`from_torchvision_vit` (current torchvision names), for messages."""
    if m := _TIMM_BLOCK.match(key):
        inner = _swap(m.group(2), _BLOCK, reverse=True)
        return key if inner is None else f"encoder.layers.encoder_layer_{m.group(1)}.{inner}"
    return _swap(key, _TOP, reverse=True) or key
