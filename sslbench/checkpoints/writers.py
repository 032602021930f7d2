"""Write a canonical backbone as torchvision or timm ``.pth``, safetensors, or a Detectron2 ``.pkl``.

Every writer is atomic: the output path holds either the complete file or nothing new.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sslbench import __version__
from sslbench.atomic import atomic_path, torch_save
from sslbench.checkpoints.detectron2_names import to_detectron2
from sslbench.errors import CheckpointError
from sslbench.models.vit_archs import is_vit_arch

if TYPE_CHECKING:
    from sslbench.checkpoints.canonical import CanonicalCheckpoint


def _require(ckpt: CanonicalCheckpoint, vit: bool, writer: str) -> None:
    if is_vit_arch(ckpt.arch) != vit:
        family = "ViT" if vit else "ResNet"
        others = "torchvision, safetensors or detectron2" if vit else "timm or safetensors"
        raise CheckpointError(
            f"{ckpt.source_path}: --to {writer} writes {family} backbones; this one is {ckpt.arch} "
            f"(use --to {others})"
        )


def write_torchvision(ckpt: CanonicalCheckpoint, out: Path) -> None:
    """A plain state dict: ``resnetXX()`` with ``fc = nn.Identity()`` loads it with ``strict=True``."""
    _require(ckpt, vit=False, writer="torchvision")
    torch_save({k: v.clone() for k, v in ckpt.state_dict.items()}, out)


def write_timm(ckpt: CanonicalCheckpoint, out: Path) -> None:
    """A plain state dict: timm's ``VisionTransformer(num_classes=0)`` of the same shape (its
    ``img_size`` at the position embeddings' grid) loads it with ``strict=True``."""
    _require(ckpt, vit=True, writer="timm")
    torch_save({k: v.clone() for k, v in ckpt.state_dict.items()}, out)


def write_safetensors(ckpt: CanonicalCheckpoint, out: Path) -> None:
    """safetensors with the provenance (arch, source format, source sha256) in its metadata."""
    from safetensors.torch import save_file

    metadata = {
        "arch": ckpt.arch,
        "source_format": ckpt.source_format,
        "source_sha256": ckpt.sha256,
        "written_by": f"sslbench {__version__}",
    }
    tensors = {k: v.contiguous() for k, v in ckpt.state_dict.items()}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def detectron2_model_dict(ckpt: CanonicalCheckpoint) -> dict[str, object]:
    """The dict MoCo's converter pickles: numpy arrays under Detectron2 names, matched heuristically."""
    return {
        "model": {to_detectron2(k): v.detach().cpu().numpy() for k, v in ckpt.state_dict.items()},
        "__author__": f"sslbench {__version__} from {ckpt.source_format} ({ckpt.sha256[:12]})",
        "matching_heuristics": True,
    }


def write_detectron2(ckpt: CanonicalCheckpoint, out: Path) -> None:
    """Detectron2 ``.pkl`` for ``MODEL.WEIGHTS`` (R50-C4 and FPN ResNets)."""
    _require(ckpt, vit=False, writer="detectron2")
    payload = detectron2_model_dict(ckpt)
    with atomic_path(out) as tmp, tmp.open("wb") as f:
        pickle.dump(payload, f, protocol=4)  # readable by every Python 3 Detectron2


WRITERS: dict[str, Callable[[CanonicalCheckpoint, Path], None]] = {
    "torchvision": write_torchvision,
    "timm": write_timm,
    "safetensors": write_safetensors,
    "detectron2": write_detectron2,
}
