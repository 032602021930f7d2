"""The pretraining config schema: MoCo v1/v2 (He et al. 2020; Chen et al. 2020) with Feature Transformation.

Defaults are MoCo v2's ImageNet recipe (facebookresearch/moco ``main_moco.py`` with ``--mlp --aug-plus
--cos --moco-t 0.2``); the YAML files in ``sslbench/configs/pretrain/`` state every recipe in full. FT's keys
mirror the reference's flags (DTennant/CL-Visualizing-Feature-Transformation, DESIGN.md 4.1); their
defaults are the reference README's ImageNet command.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sslbench.config import load_config, resolve_config_path
from sslbench.errors import ConfigError
from sslbench.models.archs import ARCHS
from sslbench.options import MAX_IMAGE_SIZE

AUGMENTATIONS = ("mocov1", "mocov2")
SCHEDULES = ("cosine", "step")
FT_TARGETS = ("pos", "neg", "posneg")
FT_DIM_MASKS = ("none", "pos", "neg", "both")
FT_DISTRIBUTIONS = ("beta", "uniform")
FT_NEGATIVES = ("transformed", "both")


@dataclass
class DataConfig:
    dataset: str | None = None  # a registry name; None: "imagefolder" when root is set, else "digits"
    root: str | None = None  # dataset root as downloaded (an ImageFolder for ImageNet)
    workers: int = 8  # DataLoader worker processes per rank
    max_images: int = 0  # use only the first N images of the split (0: all), for quick runs


@dataclass
class AugmentConfig:
    recipe: str = "mocov2"  # mocov1 (MoCo v1) or mocov2 ("aug-plus": + blur, weaker hue jitter)
    size: int = 224  # RandomResizedCrop output, px
    min_scale: float = 0.2  # RandomResizedCrop scale lower bound (0.2 in main_moco.py)
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])  # v2 Gaussian blur sigma range


@dataclass
class MoCoConfig:
    arch: str = "resnet50"
    dim: int = 128  # embedding dimension D
    queue_size: int = 65536  # K negatives; a multiple of the global batch
    momentum: float = 0.999  # key encoder EMA m
    temperature: float = 0.2  # T: 0.07 for v1, 0.2 for v2
    mlp: bool = True  # v2's 2-layer MLP head (v1: one linear layer)
    bn_splits: int = 8  # single device: BN statistics per sub-batch (MoCo's CIFAR demo uses 8)


@dataclass
class FeatureTransformConfig:
    """Feature Transformation (Zhu et al. ICCV 2021), DESIGN.md 4.1; reference flag in brackets."""

    enabled: bool = False  # [--mixnorm]
    target: str = "posneg"  # pos | neg | posneg [--mixnorm_target]
    extrapolate: bool = True  # positives: lambda = 1 + Beta, in [1, 2] [--expolation_mask]
    distribution: str = "beta"  # beta | uniform [--mask_distribution]
    alpha_pos: float = 2.0  # Beta(a, a) for lambda [--pos_alpha; --beta_alpha without --sep_alpha]
    alpha_neg: float = 1.6  # Beta(a, a) for mu [--neg_alpha; --beta_alpha without --sep_alpha]
    dim_mask: str = "none"  # none: one scalar per step; pos/neg/both: per element [--dim_mask]
    renormalize: bool = False  # L2-normalise q', k' (never the queue) [--postmix_norm]
    negatives: str = "transformed"  # transformed: Q' (K negatives); both: [Q', Q] (2K negatives)
    start_epoch: int = 0  # FT from this 0-based epoch on [--mix_start_epoch: 1-based epoch > start]


@dataclass
class OptimConfig:
    lr: float = 0.03  # SGD lr for a global batch of 256, scaled linearly with the batch (MoCo)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine (v2) | step (v1: x0.1 at the milestones), set per epoch
    milestones: list[int] = field(default_factory=lambda: [120, 160])  # main_moco.py --schedule


@dataclass
class CollapseConfig:
    """The collapse alarm (``alarm.py``): it fires when, for ``patience`` logging intervals in a row,
    the collapse metric of the projector output is below ``output_std_below`` and the plain MoCo
    pos/neg gap (mean positive minus mean negative score) is below ``gap_below``."""

    output_std_below: float = 0.05  # tiny plain MoCo v2 reads >= 0.09 while its gap is small
    gap_below: float = 0.02  # tiny posneg reads < 0.01 from step ~12; tiny plain >= 0.027
    patience: int = 2  # logging intervals in a row (0: the alarm is off)
    feature_every: int = 100  # steps between collapse metrics of the backbone features (0: never)


@dataclass
class MonitorConfig:
    """The online kNN monitor (``monitor.py``): ``sslbench knn``'s primary setting (k=20, T=0.07) on
    the current query backbone, bank ``bank_split``, queries ``split``, at the end of every
    ``every``-th epoch."""

    every: int = 0  # epochs between evaluations (0: off)
    dataset: str | None = None  # a registry name; None: the built-in digits
    root: str | None = None  # the dataset's root, for datasets read from disk
    split: str = "test"  # the labelled split classified
    bank_split: str = "trainval"  # the split whose features vote
    image_size: int = 0  # eval crop size, px (0: augment.size)
    batch_size: int = 256  # images per extraction batch


@dataclass
class LoggingConfig:
    tensorboard: bool = False  # also write every logged value as a TensorBoard scalar (OUT/tensorboard)


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"  # run folder: checkpoint_last.pth, scores.csv, config.yaml
    epochs: int = 200
    batch_size: int = 256  # global batch, split evenly over the ranks
    seed: int = 0
    log_every: int = 20  # steps between score-table rows (the only host syncs of the loop)
    checkpoint_every: int = 1  # epochs between checkpoint_last.pth writes (also at the end, on SIGTERM)
    keep_every: int = 0  # also keep checkpoint_epochNNNN.pth every N epochs (0: never)
    amp: bool = True  # bf16 autocast (GPU only)
    channels_last: bool = True  # GPU only
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    moco: MoCoConfig = field(default_factory=MoCoConfig)
    ft: FeatureTransformConfig = field(default_factory=FeatureTransformConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    stop_on_collapse: bool = False  # end the run when the collapse alarm fires (checkpoint, exit 3)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(choices)}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value!r}: expected a positive number")


def validate(cfg: PretrainConfig, world_size: int = 1) -> PretrainConfig:
    """Check values the schema's types cannot; raise ConfigError naming the key."""
    _choice("augment.recipe", cfg.augment.recipe, AUGMENTATIONS)
    _choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    _choice("moco.arch", cfg.moco.arch, ARCHS)
    _choice("ft.target", cfg.ft.target, FT_TARGETS)
    _choice("ft.dim_mask", cfg.ft.dim_mask, FT_DIM_MASKS)
    _choice("ft.distribution", cfg.ft.distribution, FT_DISTRIBUTIONS)
    _choice("ft.negatives", cfg.ft.negatives, FT_NEGATIVES)
    for key, value in (
        ("epochs", cfg.epochs),
        ("batch_size", cfg.batch_size),
        ("log_every", cfg.log_every),
        ("checkpoint_every", cfg.checkpoint_every),
        ("moco.dim", cfg.moco.dim),
        ("moco.queue_size", cfg.moco.queue_size),
        ("moco.temperature", cfg.moco.temperature),
        ("moco.bn_splits", cfg.moco.bn_splits),
        ("optim.lr", cfg.optim.lr),
        ("augment.size", cfg.augment.size),
        ("ft.alpha_pos", cfg.ft.alpha_pos),
        ("ft.alpha_neg", cfg.ft.alpha_neg),
    ):
        _positive(key, value)
    if cfg.augment.size > MAX_IMAGE_SIZE:
        raise ConfigError(f"augment.size={cfg.augment.size}: expected at most {MAX_IMAGE_SIZE} pixels")
    if not 0.0 <= cfg.moco.momentum <= 1.0:
        raise ConfigError(f"moco.momentum={cfg.moco.momentum}: expected a value in [0, 1]")
    if not 0.0 < cfg.augment.min_scale <= 1.0:
        raise ConfigError(f"augment.min_scale={cfg.augment.min_scale}: expected a value in (0, 1]")
    if len(cfg.augment.blur_sigma) != 2 or not 0 < cfg.augment.blur_sigma[0] <= cfg.augment.blur_sigma[1]:
        raise ConfigError(
            f"augment.blur_sigma={cfg.augment.blur_sigma}: expected [low, high], 0 < low <= high"
        )
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the {world_size} ranks")
    if cfg.moco.queue_size % cfg.batch_size:
        raise ConfigError(
            f"moco.queue_size={cfg.moco.queue_size} must be a multiple of batch_size={cfg.batch_size} "
            "(each step enqueues one global batch of keys)"
        )
    if world_size == 1 and cfg.batch_size % cfg.moco.bn_splits:
        raise ConfigError(
            f"batch_size={cfg.batch_size} must be a multiple of moco.bn_splits={cfg.moco.bn_splits}"
        )
    for key, count in (
        ("collapse.patience", cfg.collapse.patience),
        ("collapse.feature_every", cfg.collapse.feature_every),
        ("monitor.every", cfg.monitor.every),
        ("monitor.image_size", cfg.monitor.image_size),
    ):
        if count < 0:
            raise ConfigError(f"{key}={count}: expected 0 (off) or a positive count")
    for key, value in (
        ("collapse.output_std_below", cfg.collapse.output_std_below),
        ("collapse.gap_below", cfg.collapse.gap_below),
    ):
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value}: expected a finite threshold")
    _positive("monitor.batch_size", cfg.monitor.batch_size)
    if 0 < cfg.monitor.image_size < 8:
        raise ConfigError(f"monitor.image_size={cfg.monitor.image_size}: expected 0 (augment.size) or >= 8")
    if cfg.data.max_images < 0:
        raise ConfigError(f"data.max_images={cfg.data.max_images}: expected 0 (all) or a positive count")
    return cfg


def load_pretrain_config(config: str | Path, overrides: Sequence[str] = ()) -> PretrainConfig:
    """A shipped config by name (``mocov2_tiny``) or a YAML path, with ``key=value`` overrides."""
    return load_config(PretrainConfig, resolve_config_path(config, "pretrain"), overrides)
