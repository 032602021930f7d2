"""Defaults of the evaluation protocols, each naming its source.

Plain values with no torch, FAISS or scikit-learn import: the command line reads them to build its
options (and show them in ``--help``) without loading the probes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# (k, T): DINO eval_knn (k in 10, 20, 100, 200; T=0.07) and InstDisc (k=200, T=0.1)
KNN_SETTINGS: tuple[tuple[int, float], ...] = ((10, 0.07), (20, 0.07), (100, 0.07), (200, 0.07), (200, 0.1))
PRIMARY_SETTING = (20, 0.07)  # DINO: "20 is usually working the best"
QUERY_CHUNK = 4096  # queries per search: FAISS's own BLAS query block size

WD_RANGE = (-6.0, 5.0)  # ssl-transfer: wd = 1/C over logspace(-6, 5, 45)
C_GRID_SIZE = 45
LBFGS_MAX_ITER = 100  # scikit-learn's default, which ssl-transfer keeps


@dataclass
class SgdSettings:
    """MoCo main_lincls defaults; ``milestones`` are fractions of ``epochs`` (60 and 80 of 100)."""

    epochs: int = 100
    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256
    milestones: tuple[float, ...] = (0.6, 0.8)
    gamma: float = 0.1
    crop_scale: tuple[float, float] = (0.08, 1.0)  # torchvision default; the FT repo uses (0.2, 1)
    seed: int = 0

    def milestone_epochs(self) -> list[int]:
        return [round(f * self.epochs) for f in self.milestones]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["milestones"] = list(self.milestones)
        data["crop_scale"] = list(self.crop_scale)
        data["milestone_epochs"] = self.milestone_epochs()
        return data


LR_REFERENCE_BATCH = 256  # DINO and MAE: lr = base lr x global batch / 256 (the linear scaling rule)
DINO_WIDE_VIT = 768  # DINO eval_linear.py help: n=4 for ViT-Small, n=1 + avgpool for ViT-Base (width 768)


class ScaledLrSettings:
    """A recipe whose lr, unless ``lr`` gives one, is ``base_lr x batch_size / 256`` (DINO, MAE)."""

    lr: float | None
    base_lr: float
    batch_size: int
    crop_scale: tuple[float, float]

    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / LR_REFERENCE_BATCH

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]  # the subclasses are dataclasses
        data["crop_scale"] = list(self.crop_scale)
        data["effective_lr"] = self.effective_lr()
        return data


@dataclass
class DinoLinearSettings(ScaledLrSettings):
    """DINO eval_linear.py (Caron et al. 2021) argparse defaults: base lr 0.001 per 256 images,
    128 images per GPU (one process: the global batch; the README's 8 GPUs make 1024), 100 epochs,
    SGD momentum 0.9 with weight decay 0, CosineAnnealingLR(epochs, eta_min=0) stepped per epoch,
    RandomResizedCrop (bilinear, torchvision's scale 0.08-1) + flip. ``lr``: an absolute lr that
    replaces the scaling rule (None: base lr x batch / 256, as DINO computes it). On a ResNet
    (eval_linear.py's torchvision path, ``fc = Identity``) the feature is the pooled one and the
    block layout is None."""

    epochs: int = 100
    base_lr: float = 0.001
    lr: float | None = None
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 0.0
    n_last_blocks: int | None = 4  # None on a ResNet: eval_linear.py reads its pooled feature
    avgpool_patchtokens: bool | None = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    seed: int = 0


def dino_recipe_for_width(width: int) -> tuple[int, bool]:
    """``(n_last_blocks, avgpool_patchtokens)`` DINO used at this width: its ViT-Base recipe (1, True)
    from width 768 on, else its ViT-Small recipe (4, False), the argparse default."""
    return (1, True) if width >= DINO_WIDE_VIT else (4, False)


DINO_RECIPE_RULE = (
    f"by width (DINO eval_linear.py help): width >= {DINO_WIDE_VIT} (ViT-B and wider) -> n_last_blocks 1 "
    "+ avgpool_patchtokens (DINO's ViT-B recipe); narrower -> n_last_blocks 4, no avgpool (its ViT-S "
    "recipe, the argparse default)"
)


@dataclass
class MaeLinearSettings(ScaledLrSettings):
    """MAE main_linprobe.py (He et al. 2022) argparse defaults: blr 0.1 per 256 images, 512 images
    per GPU (one process: the global batch; the README's 32 GPUs make 16384), 90 epochs, 10 warm-up
    epochs then half-cycle cosine to min_lr 0 set every iteration (util/lr_sched.py), LARS momentum
    0.9, trust coefficient 0.001, weight decay 0 (util/lars.py), BatchNorm1d(affine=False, eps=1e-6)
    before the head, the last incomplete batch dropped, RandomResizedCrop (bicubic, MAE's
    util/crop.py, scale 0.08-1) + flip. ``lr``: MAE's ``--lr`` (absolute; None: blr x batch / 256)."""

    epochs: int = 90
    warmup_epochs: int = 10
    base_lr: float = 0.1
    lr: float | None = None
    min_lr: float = 0.0
    batch_size: int = 512
    momentum: float = 0.9
    weight_decay: float = 0.0
    trust_coefficient: float = 0.001
    bn_eps: float = 1e-6
    crop_scale: tuple[float, float] = (0.08, 1.0)
    seed: int = 0
