"""The Detectron2 config of a detection task: our shipped YAML, the run's settings, the user's overrides.

Order (later wins): Detectron2's defaults -> ``configs/<task>.yaml`` (MoCo's recipe) -> device,
weights, output folder, seed -> linear scaling for ``--scale-batch`` -> the user's ``KEY VALUE``
pairs -> on CPU, plain BN in place of synchronised BN.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import DefaultTrainer

import sslbench.transfer.heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm before any model is built)
from sslbench.errors import ConfigError
from sslbench.transfer.tasks import TASKS

# ResNets with bottleneck blocks: the C4 head builds res5 from Detectron2's BottleneckBlock.
DEPTHS = {"resnet50": 50, "resnet101": 101, "resnet152": 152}
_SYNC_NORMS = ("SyncBN", "naiveSyncBN", "nnSyncBN")


def scale_to_batch(cfg: CfgNode, total_batch: int) -> CfgNode:
    """The linear scaling rule (Goyal et al. 2017; Kaiming He in facebookresearch/moco#11).

    lr x B/16; iterations, LR steps, warm-up, checkpoint and eval periods x 16/B; e.g. B=8 gives lr
    0.01 and VOC's 48k iterations with steps at 36k/44k. This is Detectron2's own rule
    (``DefaultTrainer.auto_scale_workers``), applied with one image per "worker".
    """
    if total_batch <= 0:
        raise ConfigError(f"--scale-batch must be a positive number of images, got {total_batch}")
    batch = cfg.SOLVER.IMS_PER_BATCH
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = batch
    cfg = DefaultTrainer.auto_scale_workers(cfg, total_batch)
    cfg.defrost()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0  # applied: the trainer must not rescale for its world size
    return cfg


def _merge_overrides(cfg: CfgNode, overrides: Sequence[str]) -> None:
    if len(overrides) % 2:
        raise ConfigError(
            f"config overrides come in KEY VALUE pairs; got an odd number: {' '.join(overrides)}"
        )
    for key, value in zip(overrides[0::2], overrides[1::2], strict=True):
        try:
            cfg.merge_from_list([key, value])
        except (KeyError, ValueError, AssertionError, SyntaxError) as exc:
            raise ConfigError(f"config override {key} {value}: {exc}") from None


def build_config(
    task: str,
    *,
    weights: str | Path = "",
    output_dir: str | Path = "output",
    seed: int = 0,
    arch: str = "resnet50",
    total_batch: int | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> CfgNode:
    """The frozen Detectron2 config for ``task`` (``voc``, ``coco-1x``, ``coco-2x``).

    ``device`` defaults to ``cuda`` where a GPU is visible, else ``cpu``. On CPU the synchronised BN
    of the recipe (naiveSyncBN) becomes plain BN: there is no cross-GPU batch to synchronise over.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown detection task {task!r}; expected one of {', '.join(TASKS)}")
    if arch not in DEPTHS:
        raise ConfigError(
            f"the R-C4 detectors need a bottleneck ResNet ({', '.join(DEPTHS)}); the checkpoint is {arch}"
        )
    cfg = get_cfg()
    cfg.merge_from_file(str(TASKS[task].config_path))
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = seed
    cfg.MODEL.RESNETS.DEPTH = DEPTHS[arch]
    if total_batch is not None:
        cfg = scale_to_batch(cfg, total_batch)
    _merge_overrides(cfg, overrides)
    if cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.RESNETS.NORM in _SYNC_NORMS:
        cfg.MODEL.RESNETS.NORM = "BN"
    cfg.freeze()
    return cfg


def check_world_size(cfg: CfgNode, world_size: int) -> None:
    """``IMS_PER_BATCH`` is the total batch: it must split evenly over the processes."""
    batch = cfg.SOLVER.IMS_PER_BATCH
    if batch % world_size:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {batch} does not divide over {world_size} processes (GPUs x machines); "
            f"use --scale-batch with a multiple of {world_size}"
        )


def protocol_settings(cfg: CfgNode, task: str, world_size: int, overrides: Sequence[str]) -> dict[str, Any]:
    """The settings a result record quotes (the full config is ``OUTPUT_DIR/config.yaml``)."""
    return {
        "task": task,
        "config": TASKS[task].config,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "roi_heads": cfg.MODEL.ROI_HEADS.NAME,
        "mask_on": cfg.MODEL.MASK_ON,
        "norm": cfg.MODEL.RESNETS.NORM,
        "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
        "stride_in_1x1": cfg.MODEL.RESNETS.STRIDE_IN_1X1,
        "input_format": cfg.INPUT.FORMAT,
        "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
        "pixel_std": list(cfg.MODEL.PIXEL_STD),
        "min_size_train": list(cfg.INPUT.MIN_SIZE_TRAIN),
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "base_lr": cfg.SOLVER.BASE_LR,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "steps": list(cfg.SOLVER.STEPS),
        "warmup_iters": cfg.SOLVER.WARMUP_ITERS,
        "precise_bn": cfg.TEST.PRECISE_BN.ENABLED,
        "train_datasets": list(cfg.DATASETS.TRAIN),
        "test_datasets": list(cfg.DATASETS.TEST),
        "device": cfg.MODEL.DEVICE,
        "world_size": world_size,
        "overrides": list(overrides),
    }
