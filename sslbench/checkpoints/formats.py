"""The checkpoint formats sslbench reads, each described by where its backbone lives.

A format names the top-level entries that may hold the model's state dict (the first is the
default; ``--key`` picks another), the prefixes its backbone keys carry, and the structural marker
that identifies it. Markers are mutually exclusive on the files the real sources write, so
auto-detection finds exactly one format or says why it could not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sslbench.checkpoints.detectron2_names import from_detectron2
from sslbench.checkpoints.torchvision_vit_names import from_torchvision_vit, to_torchvision_vit

SSLBENCH_FORMAT = "sslbench"
SSLBENCH_FORMAT_VERSION = 1


def _is_state_dict(obj: Any) -> bool:
    import torch  # here, so that listing the formats (the CLI's choices) does not load torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in obj.values())
    )


def _keys_start(obj: Any, *prefixes: str) -> bool:
    return _is_state_dict(obj) and any(k.startswith(prefixes) for k in obj)


def _is_vit_state(obj: Any) -> bool:
    """A plain timm-named ViT state dict (optionally 'module.'-prefixed)."""
    return (
        _is_state_dict(obj)
        and any(k in obj for k in ("cls_token", "module.cls_token"))
        and any(k.endswith("patch_embed.proj.weight") for k in obj)
    )


def _is_torchvision_vit(obj: Any) -> bool:
    """A torchvision ``VisionTransformer`` state dict (optionally 'module.'-prefixed)."""
    return (
        _is_state_dict(obj)
        and any(k in obj for k in ("class_token", "module.class_token"))
        and any(k.endswith("encoder.pos_embedding") for k in obj)
    )


@dataclass(frozen=True)
class Format:
    name: str
    source: str  # who writes it and where the backbone lives, for --help and messages
    entries: tuple[str | None, ...]  # top-level entries holding a state dict; None: the file is one
    prefixes: tuple[str, ...]  # backbone key prefixes, tried in order
    detect: Callable[[Mapping[str, Any]], bool]
    heads: tuple[str, ...] = ()  # canonical-space groups that are heads, dropped (e.g. "fc.")
    rename: Callable[[str], str] | None = None  # applied after prefix removal
    file_key: Callable[[str], str] | None = None  # inverse of rename: the file's name, for messages


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            SSLBENCH_FORMAT,
            "sslbench pretraining: 'model', under the prefix its 'backbone_prefix' entry names",
            ("model",),
            (),
            lambda o: o.get("format") == SSLBENCH_FORMAT,
        ),
        Format(
            "moco",
            "MoCo v1/v2 (facebookresearch/moco): 'state_dict', prefix 'module.encoder_q.'; fc dropped",
            ("state_dict",),
            ("module.encoder_q.", "encoder_q."),
            lambda o: _keys_start(o.get("state_dict"), "module.encoder_q.", "encoder_q."),
            heads=("fc.",),
        ),
        Format(
            "mocov3",
            "MoCo v3 ResNet/ViT (facebookresearch/moco-v3): 'state_dict', prefix 'module.base_encoder.'; "
            "projector (fc / head), predictor and momentum encoder dropped",
            ("state_dict",),
            ("module.base_encoder.", "base_encoder."),
            lambda o: _keys_start(o.get("state_dict"), "module.base_encoder.", "base_encoder."),
            heads=("fc.", "head."),
        ),
        Format(
            "pycontrast",
            "PyContrast / FT repo: 'model' (or 'model_ema'), prefix 'encoder.' after 'module.'",
            ("model", "model_ema"),
            ("module.encoder.", "encoder."),
            lambda o: _keys_start(o.get("model"), "module.encoder.", "encoder."),
        ),
        Format(
            "dino",
            "DINO ResNet/ViT: 'teacher' (or 'student'), prefix 'backbone.' after 'module.'; head dropped",
            ("teacher", "student"),
            ("module.backbone.", "backbone."),
            lambda o: (
                _keys_start(o.get("teacher"), "module.backbone.", "backbone.")
                or _keys_start(o.get("student"), "module.backbone.", "backbone.")
            ),
        ),
        Format(
            "lightning",
            "PyTorch Lightning (solo-learn, lightly): 'state_dict', prefix 'backbone.'",
            ("state_dict",),
            ("backbone.",),
            lambda o: "pytorch-lightning_version" in o and _keys_start(o.get("state_dict"), "backbone."),
        ),
        Format(
            "openmmlab",
            "OpenMMLab (mmselfsup, mmpretrain): 'state_dict' with 'meta', prefix 'backbone.'",
            ("state_dict",),
            ("backbone.",),
            lambda o: "meta" in o and _keys_start(o.get("state_dict"), "backbone."),
        ),
        Format(
            "detectron2",
            "Detectron2 .pkl (MoCo's converter, our writer): 'model', stem./res2-5. names",
            ("model",),
            ("",),
            lambda o: _keys_start(o.get("model"), "stem.") and _keys_start(o.get("model"), "res2."),
            rename=from_detectron2,
        ),
        Format(
            "mae",
            "MAE (facebookresearch/mae): 'model', timm ViT names; decoder and mask_token dropped",
            ("model",),
            ("",),
            lambda o: o.get("format") != SSLBENCH_FORMAT and _is_vit_state(o.get("model")),
            heads=("decoder", "mask_token"),
        ),
        Format(
            "timm",
            "timm ViT (and DINO's released ViT backbones): a plain state dict; head dropped",
            (None,),
            ("module.", ""),
            _is_vit_state,
            heads=("head.",),
        ),
        Format(
            "torchvision-vit",
            "torchvision VisionTransformer (vit_b_16, ...): a plain state dict, renamed to timm's ViT; "
            "heads dropped",
            (None,),
            ("module.", ""),
            _is_torchvision_vit,
            heads=("heads.",),
            rename=from_torchvision_vit,
            file_key=to_torchvision_vit,
        ),
        Format(
            "torchvision",
            "torchvision: a plain state dict (optionally 'module.'-prefixed); fc dropped",
            (None,),
            ("module.", ""),
            lambda o: _is_state_dict(o) and ("conv1.weight" in o or "module.conv1.weight" in o),
            heads=("fc.",),
        ),
    )
}


def detect_format(obj: Mapping[str, Any]) -> list[str]:
    """Names of every format whose marker ``obj`` carries (one, on well-formed files)."""
    return [f.name for f in FORMATS.values() if f.detect(obj)]
