"""ViT checkpoints written the way each real source writes them, from a tiny timm ViT.

Key names and nesting follow the sources' own saving code: DINO ``main_dino.py`` (student in DDP,
teacher not, for ViTs; ``MultiCropWrapper`` -> ``backbone.`` / ``head.``), MoCo v3 ``main_moco.py``
(DDP ``MoCo_ViT``: ``base_encoder`` whose ``head`` is the projector, ``momentum_encoder``,
``predictor``), MAE ``main_pretrain.py`` (``MaskedAutoencoderViT``: encoder, ``mask_token``,
``decoder_*``), timm (``model.state_dict()`` with its classifier ``head``) and torchvision
(``VisionTransformer.state_dict()``: ``conv_proj``, ``encoder.layers.encoder_layer_N``, ``heads``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

StateDict = dict[str, torch.Tensor]
IMAGE, PATCH, WIDTH, DEPTH, HEADS = 32, 8, 128, 2, 2  # HEADS = WIDTH // 64, the inferred default
ARCH = f"vit_d{WIDTH}_l{DEPTH}_h{HEADS}_p{PATCH}"


def tiny_vit(
    seed: int = 0, width: int = WIDTH, heads: int = HEADS, num_classes: int = 0
) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=IMAGE,
        patch_size=PATCH,
        embed_dim=width,
        depth=DEPTH,
        num_heads=heads,
        num_classes=num_classes,
    )
    with torch.no_grad():  # timm starts LayerNorms at 1/0 and pos_embed near 0: make every tensor matter
        for name, p in model.named_parameters():
            if "norm" in name or name in ("pos_embed", "cls_token"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def backbone_of(model: nn.Module) -> StateDict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


def _prefixed(prefix: str, sd: StateDict) -> StateDict:
    return {prefix + k: v for k, v in sd.items()}


def _dino_head(width: int) -> StateDict:
    """DINOHead: mlp (Linear, GELU, Linear, GELU, Linear) and a weight-normed last_layer."""
    return {
        "mlp.0.weight": torch.randn(64, width),
        "mlp.0.bias": torch.zeros(64),
        "mlp.2.weight": torch.randn(64, 64),
        "mlp.2.bias": torch.zeros(64),
        "mlp.4.weight": torch.randn(16, 64),
        "mlp.4.bias": torch.zeros(16),
        "last_layer.weight_g": torch.ones(32, 1),
        "last_layer.weight_v": torch.randn(32, 16),
    }


def dino(model: nn.Module) -> dict[str, Any]:
    """main_dino.py's save_dict (checkpoint.pth)."""
    backbone = backbone_of(model)
    width = backbone["cls_token"].shape[-1]
    teacher = _prefixed("backbone.", backbone) | _prefixed("head.", _dino_head(width))
    student = _prefixed("module.", _prefixed("backbone.", backbone) | _prefixed("head.", _dino_head(width)))
    return {
        "student": student,
        "teacher": teacher,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=PATCH, out_dim=32),
        "dino_loss": {"center": torch.zeros(1, 32)},
    }


def dino_released(model: nn.Module) -> StateDict:
    """DINO's released backbone weights (dino_deitsmall16_pretrain.pth): a plain state dict."""
    return backbone_of(model)


def mocov3(model: nn.Module) -> dict[str, Any]:
    """main_moco.py's save_checkpoint: DDP MoCo_ViT, projector in base_encoder.head."""
    backbone = backbone_of(model)
    width = backbone["cls_token"].shape[-1]
    projector = {
        "0.weight": torch.randn(64, width),
        "1.weight": torch.ones(64),
        "1.bias": torch.zeros(64),
        "1.running_mean": torch.zeros(64),
        "1.running_var": torch.ones(64),
        "1.num_batches_tracked": torch.tensor(5),
        "3.weight": torch.randn(16, 64),
        "4.running_mean": torch.zeros(16),
        "4.running_var": torch.ones(16),
        "4.num_batches_tracked": torch.tensor(5),
    }
    encoder = backbone | _prefixed("head.", projector)
    state = (
        _prefixed("module.base_encoder.", encoder)
        | _prefixed("module.momentum_encoder.", {k: v + 1 for k, v in encoder.items()})
        | _prefixed("module.predictor.", {"0.weight": torch.randn(64, 16), "3.weight": torch.randn(16, 64)})
    )
    return {"epoch": 300, "arch": "vit_small", "state_dict": state, "optimizer": {}, "scaler": {}}


def mae(model: nn.Module) -> dict[str, Any]:
    """misc.save_model of main_pretrain.py: MaskedAutoencoderViT's state dict under 'model'."""
    backbone = backbone_of(model)
    width = backbone["cls_token"].shape[-1]
    tokens = backbone["pos_embed"].shape[1]
    decoder = {
        "mask_token": torch.zeros(1, 1, 32),
        "decoder_embed.weight": torch.randn(32, width),
        "decoder_embed.bias": torch.zeros(32),
        "decoder_pos_embed": torch.zeros(1, tokens, 32),
        "decoder_blocks.0.norm1.weight": torch.ones(32),
        "decoder_blocks.0.attn.qkv.weight": torch.randn(96, 32),
        "decoder_norm.weight": torch.ones(32),
        "decoder_pred.weight": torch.randn(PATCH * PATCH * 3, 32),
        "decoder_pred.bias": torch.zeros(PATCH * PATCH * 3),
    }
    return {
        "model": backbone | decoder,
        "optimizer": {},
        "epoch": 799,
        "scaler": {},
        "args": argparse.Namespace(model="mae_vit_base_patch16", norm_pix_loss=True),
    }


def timm_file(model: nn.Module) -> StateDict:
    """``torch.save(timm_model.state_dict())`` of a classifier: its head is dropped."""
    classifier = tiny_vit(num_classes=10)
    classifier.load_state_dict(backbone_of(model) | backbone_of_head(classifier))
    return classifier.state_dict()


def torchvision_file(model: nn.Module) -> StateDict:
    """``torch.save(torchvision_vit.state_dict())`` of a torchvision ``VisionTransformer`` classifier
    holding the same weights (loaded strictly: the real module's names and shapes); ``heads`` dropped."""
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

    sd = backbone_of(model)
    tv = TorchvisionViT(IMAGE, PATCH, DEPTH, HEADS, WIDTH, 4 * WIDTH, num_classes=10)
    names = {
        "class_token": "cls_token",
        "conv_proj.weight": "patch_embed.proj.weight",
        "conv_proj.bias": "patch_embed.proj.bias",
        "encoder.pos_embedding": "pos_embed",
        "encoder.ln.weight": "norm.weight",
        "encoder.ln.bias": "norm.bias",
    }
    parts = (  # torchvision's EncoderBlock -> timm's Block; in_proj_weight / in_proj_bias are qkv's
        ("ln_1.", "norm1."),
        ("self_attention.in_proj_", "attn.qkv."),
        ("self_attention.out_proj.", "attn.proj."),
        ("ln_2.", "norm2."),
        ("mlp.0.", "mlp.fc1."),
        ("mlp.3.", "mlp.fc2."),
    )
    for i in range(DEPTH):
        for theirs, ours in parts:
            for kind in ("weight", "bias"):
                names[f"encoder.layers.encoder_layer_{i}.{theirs}{kind}"] = f"blocks.{i}.{ours}{kind}"
    state = {theirs: sd[ours] for theirs, ours in names.items()}
    state |= {k: v for k, v in tv.state_dict().items() if k.startswith("heads.")}
    tv.load_state_dict(state, strict=True)
    return tv.state_dict()


def backbone_of_head(model: nn.Module) -> StateDict:
    return {k: v for k, v in model.state_dict().items() if k.startswith("head.")}


# name -> (builder, format sslbench detects, groups it reports dropped)
SOURCES: dict[str, tuple[Callable[[nn.Module], Any], str, set[str]]] = {
    "dino": (dino, "dino", {"head"}),
    "dino_released": (dino_released, "timm", set()),
    "mocov3": (mocov3, "mocov3", {"module.base_encoder.head", "module.momentum_encoder", "module.predictor"}),
    "mae": (
        mae,
        "mae",
        {
            "mask_token",
            "decoder_embed",
            "decoder_pos_embed",
            "decoder_blocks",
            "decoder_norm",
            "decoder_pred",
        },
    ),
    "timm": (timm_file, "timm", {"head"}),
    "torchvision": (torchvision_file, "torchvision-vit", {"heads"}),
}
LAYOUTS = ("dino", "mocov3", "mae", "timm", "torchvision")  # one per source (DINO's released file is timm's)


def write_layouts(model: nn.Module, folder: Path) -> dict[str, Path]:
    """``model`` saved in every source's layout of :data:`LAYOUTS`: name -> file."""
    paths = {name: folder / f"{name}.pth" for name in LAYOUTS}
    for name, path in paths.items():
        torch.save(SOURCES[name][0](model), path)
    return paths
