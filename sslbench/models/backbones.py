"""The frozen backbone a checkpoint evaluates as: a ResNet's pooled feature or a ViT's CLS token.

Every probe calls :func:`build_evaluated_backbone` and records :func:`feature_settings`, so the two
families go through one path and their records say which feature they used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sslbench.errors import ConfigError
from sslbench.models.vit_archs import is_vit_arch, parse_vit_arch

if TYPE_CHECKING:
    from torch import nn

    from sslbench.checkpoints.canonical import CanonicalCheckpoint

RESNET_FEATURE = "avgpool of the canonical backbone, frozen, eval mode"
VIT_FEATURE = "CLS token after the final LayerNorm (DINO eval_knn.py), frozen, eval mode"


def check_image_size(ckpt: CanonicalCheckpoint, image_size: int) -> None:
    """A ViT reads images whose side is a multiple of its patch size."""
    if is_vit_arch(ckpt.arch) and image_size % (patch := parse_vit_arch(ckpt.arch).patch):
        raise ConfigError(f"--image-size {image_size} is not a multiple of {ckpt.arch}'s patch size {patch}")


def build_evaluated_backbone(ckpt: CanonicalCheckpoint, image_size: int) -> nn.Module:
    """The checkpoint's backbone, strictly loaded, returning one feature vector per image."""
    if is_vit_arch(ckpt.arch):
        from sslbench.models.vit import build_vit, pos_embed_method

        return build_vit(ckpt.arch, ckpt.state_dict, image_size, pos_embed_method(ckpt.source_format))
    from sslbench.models.resnet import build_backbone

    model = build_backbone(ckpt.arch)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model


def feature_settings(ckpt: CanonicalCheckpoint) -> dict[str, Any]:
    """What the record says about the feature: its name, and for a ViT how positions were resized."""
    if not is_vit_arch(ckpt.arch):
        return {"features": RESNET_FEATURE}
    from sslbench.models.vit import POS_EMBED_METHODS, pos_embed_method

    grid = ckpt.state_dict["pos_embed"].shape[1] - 1
    return {
        "features": VIT_FEATURE,
        "feature": "cls",
        "pos_embed": {
            "checkpoint_tokens": grid,
            "resize": POS_EMBED_METHODS[pos_embed_method(ckpt.source_format)],
        },
    }


def feature_identity(ckpt: CanonicalCheckpoint) -> str:
    """What the features depend on beyond the images: the file, the entry read from it (teacher and
    student share a file) and, for a ViT, the heads ``--arch`` may set and how positions are resized.
    The feature cache keys on it, so none of these can return another reading's features."""
    identity = ckpt.sha256 + (f"/{ckpt.key}" if ckpt.key else "")
    if is_vit_arch(ckpt.arch):
        from sslbench.models.vit import pos_embed_method

        identity += f"/{ckpt.arch}/pos:{pos_embed_method(ckpt.source_format)}"
    return identity


def feature_width(arch: str) -> int:
    """Width of the evaluated feature (ResNet pooled feature or ViT embedding width)."""
    if is_vit_arch(arch):
        return parse_vit_arch(arch).width
    from sslbench.models.archs import feature_dim

    return feature_dim(arch)
