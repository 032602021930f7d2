"""``sslbench finetune``: fine-tune the whole backbone (ssl-transfer protocol, optionally Core-tuning).

The protocol comes from ``--config`` (a YAML file, or a name under ``sslbench/configs/finetune/``:
``ssl_transfer`` by default, ``inat18_vissl``, ``mae``: MAE's ViT recipe); flags override its keys.
ResNets and ViTs both fine-tune; the ViT-only keys (layer decay, drop path, avg pooling) refuse a
ResNet. The run folder ``--out`` holds the grid's sub-runs, the final run, the kept weights
``best.pth`` and ``result.json``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslbench.checkpoints.cli import add_checkpoint_arguments
from sslbench.commandline import add_out_argument, add_overrides_argument, deprecated
from sslbench.data.cli import add_dataset_arguments
from sslbench.errors import ConfigError
from sslbench.evaluate.reporting import dataset_record, print_metrics
from sslbench.options import image_size
from sslbench.run_folder import refuse_previous_run
from sslbench.runtime.arguments import add_runtime_arguments

if TYPE_CHECKING:  # annotations only: the command's module stays light for --help
    from sslbench.checkpoints.canonical import CanonicalCheckpoint
    from sslbench.evaluate.finetune_grid import FinetuneConfig, Outcome, Protocol, Splits
    from sslbench.tools.records import ResultRecord

DEFAULT_CONFIG = "ssl_transfer"

# flag -> config key; each flag given on the command line overrides the config file
_FLAG_KEYS = {
    "method": "method",
    "lr": "lr",
    "wd": "weight_decay",
    "steps": "steps",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "image_size": "image_size",
    "grid_size": "grid_size",
    "grid_lr": "grid_lr",
    "grid_wd": "grid_wd",
    "save_every": "save_every",
}


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        text = "[" + ",".join(repr(float(v)) for v in value) + "]" if isinstance(value, list) else value
        overrides.append(f"{key}={text}")
    if args.steps is not None and args.epochs is None:
        overrides.append("epochs=0")  # --steps alone means a step budget, whatever the config says
    if args.set:
        deprecated("finetune", "--set KEY=VALUE", "a trailing KEY=VALUE")
    return overrides + list(args.set or []) + list(args.overrides)


PREVIOUS_RUN_MARKERS = ("grid", "final", "best.pth")  # what a started fine-tune run leaves in --out


def _build_splits(
    args: argparse.Namespace, config: FinetuneConfig, options: dict[str, Any]
) -> tuple[Splits, dict[str, Any]]:
    """The four splits with the protocol's transforms (augmented train/trainval, plain val/test), and
    the part of the resume fingerprint that describes them."""
    from torchvision.transforms import InterpolationMode

    from sslbench.data.registry import build_dataset
    from sslbench.data.transforms import (
        describe_transform,
        eval_transform,
        lbfgs_transform,
        timm_train_transform,
        train_transform,
    )
    from sslbench.evaluate.finetune_grid import Splits

    interpolation = (
        InterpolationMode.BICUBIC if config.interpolation == "bicubic" else InterpolationMode.BILINEAR
    )
    scale = (config.crop_scale[0], config.crop_scale[1])
    if config.randaug or config.reprob > 0:  # MAE's augmentation, through timm
        augment: Any = timm_train_transform(
            config.image_size, scale, config.interpolation, config.randaug, config.reprob
        )
    else:
        augment = train_transform(config.image_size, scale, interpolation)
    plain = (lbfgs_transform if config.test_resize == "full" else eval_transform)(config.image_size)
    parts = {
        split: build_dataset(
            args.dataset, args.root, split, augment if split in ("train", "trainval") else plain, **options
        )
        for split in ("train", "val", "trainval", "test")
    }
    for split, data in parts.items():
        if len(data) == 0:
            raise ConfigError(f"{args.dataset}: the {split} split is empty under {args.root}")
    splits = Splits(parts["train"], parts["val"], parts["trainval"], parts["test"], parts["test"].num_classes)
    described = {
        "dataset": args.dataset,
        "root": str(Path(args.root).resolve()) if args.root is not None else None,
        "options": {k: v for k, v in options.items() if v is not None},
        "sizes": {split: len(data) for split, data in parts.items()},
        "train_transform": describe_transform(augment),
        "test_transform": describe_transform(plain),
    }
    return splits, described


def _print_outcome(outcome: Outcome, method: str, select: str) -> None:
    for row in outcome.grid:
        print(
            f"lr {row['lr']:<9.3g} wd {row['weight_decay']:<9.3g} val top1 {row['val_top1']:6.2f}  "
            f"mean/class {row['val_mean_per_class']:6.2f}" + ("  (done earlier)" if row["skipped"] else "")
        )
    how = f"chosen on val {select}" if outcome.grid else "given: no grid"
    effective = outcome.final["effective_lr"]
    scaled = f"; effective lr {effective:.3g}, scaled with the batch" if effective != outcome.lr else ""
    print(f"lr {outcome.lr:.3g} wd {outcome.weight_decay:.3g} ({how}{scaled})")
    print_metrics(f"finetune {method}", outcome.metrics)


def _recipe_record(protocol: Protocol, outcome: Outcome) -> dict[str, Any]:
    """The optimizer, schedule, feature, loss and mixing the final run actually used, in words."""
    from sslbench.evaluate.finetune import optimizer_record
    from sslbench.models.vit import POS_EMBED_METHODS, pos_embed_method
    from sslbench.models.vit_archs import is_vit_arch, parse_vit_arch

    config, ckpt = protocol.config, protocol.ckpt
    trainval = len(protocol.splits.trainval)  # type: ignore[arg-type]
    run = config.run_settings(outcome.lr, outcome.weight_decay, trainval, protocol.seed)
    vit = is_vit_arch(ckpt.arch)
    depth = parse_vit_arch(ckpt.arch).depth if vit else None
    if not vit:
        feature = "avgpool of the ResNet"
    elif config.pool == "avg":
        feature = (
            "mean of the last block's patch tokens through a new LayerNorm fc_norm (MAE models_vit.py "
            "global_pool); the checkpoint's final norm unused, frozen, kept unchanged in best.pth"
        )
    else:
        feature = "CLS token after the final LayerNorm"
    schedule = f"{run.schedule} over {run.steps} steps, stepped every step"
    if run.warmup_steps:
        schedule = f"linear warmup from 0 over {run.warmup_steps} steps, then " + schedule
    if run.schedule == "cosine" and run.min_lr:
        schedule += f", half cycle down to min_lr {run.min_lr:g}"
    if run.mixes:
        loss = (
            f"soft-target cross-entropy (timm SoftTargetCrossEntropy) on timm Mixup targets: mixup alpha "
            f"{run.mixup:g}, cutmix alpha {run.cutmix:g}, prob {run.mixup_prob:g}, switch prob "
            f"{run.mixup_switch_prob:g}, mode batch, pairs within each process's batch, label smoothing "
            f"{run.label_smoothing:g}"
        )
    elif run.label_smoothing:
        loss = f"cross-entropy with label smoothing {run.label_smoothing:g}"
    else:
        loss = "cross-entropy" if config.method == "ce" else "Core-tuning"
    record: dict[str, Any] = {
        "optimizer": optimizer_record(run, depth),
        "lr_schedule": schedule,
        "warmup_steps_run": run.warmup_steps,
        "feature": feature,
        "loss": loss,
        "head_init": "torch nn.Linear default"
        if config.head_init_std is None
        else f"weight trunc_normal std {config.head_init_std:g}, bias 0",
    }
    if vit:
        record["drop_path"] = f"{config.drop_path:g} (timm drop_path_rate, linear in depth)"
        record["pos_embed"] = {
            "checkpoint_tokens": ckpt.state_dict["pos_embed"].shape[1] - 1,
            "resize": POS_EMBED_METHODS[pos_embed_method(ckpt.source_format)],
        }
    return record


def _check_recipe(
    config: FinetuneConfig, ckpt: CanonicalCheckpoint, splits: Splits, world: int, seed: int
) -> None:
    """Refuse, before anything is written, what the backbone or the splits cannot run."""
    from sslbench.models.backbones import check_image_size
    from sslbench.models.vit_archs import is_vit_arch

    if not is_vit_arch(ckpt.arch) and (keys := config.vit_only_keys()):
        raise ConfigError(
            f"fine-tune config {config.name}: {', '.join(keys)} need a ViT backbone; {ckpt.source_path} "
            f"is a {ckpt.arch} (use --config ssl_transfer for ResNets)"
        )
    check_image_size(ckpt, config.image_size)
    if (config.mixup > 0 or config.cutmix > 0) and (config.batch_size // world) % 2:
        raise ConfigError(
            f"mixup/cutmix pair each process's batch with its reverse: batch size {config.batch_size} "
            f"over {world} processes must give an even batch per process"
        )
    for split in (splits.train, splits.trainval):  # warmup and min_lr against each run's length and lr
        lrs = [lr for lr, _ in config.grid()] if config.lr is None else [config.lr]
        for lr in lrs:
            config.run_settings(lr, 0.0, len(split), seed)  # type: ignore[arg-type]


def _finetune_record(
    protocol: Protocol,
    outcome: Outcome,
    args: argparse.Namespace,
    options: dict[str, Any],
    config_path: Path,
    started_at: str,
) -> ResultRecord:
    """The run's ``result.json``: every setting that changes a number, the grid and the final run."""
    from sslbench.config import config_to_dict
    from sslbench.evaluate.finetune import LAST_PARTIAL_BATCH
    from sslbench.evaluate.finetune_grid import CORETUNING_SOURCE
    from sslbench.models.vit_archs import is_vit_arch
    from sslbench.runtime.precision import Precision
    from sslbench.tools.records import ResultRecord

    config, ckpt, splits, fingerprint = protocol.config, protocol.ckpt, protocol.splits, protocol.fingerprint
    select, device = protocol.select_metric, protocol.device
    source = config.source + (f"; loss: {CORETUNING_SOURCE}" if config.method == "coretuning" else "")
    settings = {
        **config_to_dict(config),
        "method": config.method,
        "lr": outcome.lr,
        "weight_decay": outcome.weight_decay,
        "effective_lr": outcome.final["effective_lr"],
        "steps_run": outcome.final["steps"],
        **config.grid_record(),
        "grid_points": len(outcome.grid),
        "last_partial_batch": LAST_PARTIAL_BATCH,
        "select_metric": select,
        "select_split": "val" if outcome.grid else None,
        "grid_train_split": "train",
        "final_train_split": "trainval",
        "test_split": "test",
        "train_transform": fingerprint["train_transform"],
        "test_transform": fingerprint["test_transform"],
        **_recipe_record(protocol, outcome),
        "test_metric_step": "last",
        "precision": Precision(device).name,
        "device": str(device),
        "world_size": protocol.runtime.world,
        "config_file": str(config_path),
    }
    if config.method != "coretuning":
        settings.pop("coretuning")
    return ResultRecord(
        task="finetune",
        protocol={"name": f"finetune-{config.name}-{config.method}", "source": source, "settings": settings},
        dataset={
            **dataset_record(args, splits.trainval, splits.test, options, uses_val=True),
            "sizes": fingerprint["sizes"],
        },
        metrics=outcome.metrics,
        checkpoint=ckpt.describe(),
        started_at=started_at,
        seed=args.seed,
        extra={
            "grid": outcome.grid,
            "chosen": {"lr": outcome.lr, "weight_decay": outcome.weight_decay},
            "best_checkpoint": str(outcome.best_checkpoint),
            "history": outcome.final["history"],
            "final_skipped": outcome.final["skipped"],
            "backbone_check": "every backbone tensor equals the checkpoint's at step 0 of every run"
            + (
                " (pos_embed compared after resizing to the run's patch grid, as it was loaded)"
                if is_vit_arch(ckpt.arch)
                else ""
            ),
        },
    )


def run_finetune(args: argparse.Namespace, on_step: Any = None) -> int:
    """The command; ``on_step(step, model)`` is passed to every training run (tests use it)."""
    import torch

    from sslbench.checkpoints.cli import checkpoint_from_args
    from sslbench.config import load_config, resolve_config_path
    from sslbench.data.cli import dataset_options_from_args
    from sslbench.data.registry import DATASETS
    from sslbench.evaluate.finetune_grid import FinetuneConfig, Protocol, run_protocol
    from sslbench.runtime.process import start_runtime
    from sslbench.runtime.progress import MetricsLog
    from sslbench.tools.records import utc_now, write_record

    started_at = utc_now()
    config_path = resolve_config_path(args.config, "finetune")
    config = load_config(FinetuneConfig, config_path, _overrides(args)).check()
    if args.workers < 0:
        raise ConfigError("--workers must be >= 0")
    out = Path(args.out)
    if not args.resume:
        refuse_previous_run(out, PREVIOUS_RUN_MARKERS, "fine-tune run")
    runtime = start_runtime(args.device)
    device = runtime.device
    if config.batch_size % runtime.world:
        raise ConfigError(f"batch size {config.batch_size} is not divisible by {runtime.world} processes")
    ckpt = checkpoint_from_args(args)
    options = dataset_options_from_args(args)
    splits, fingerprint = _build_splits(args, config, options)
    _check_recipe(config, ckpt, splits, runtime.world, args.seed)
    fingerprint = {"checkpoint": ckpt.sha256, "arch": ckpt.arch, **fingerprint, "world_size": runtime.world}
    select = DATASETS[args.dataset].headline_metric
    protocol = Protocol(
        ckpt=ckpt,
        config=config,
        splits=splits,
        out=out,
        device=device,
        fingerprint=fingerprint,
        select_metric=select,
        seed=args.seed,
        eval_batch_size=config.batch_size,
        workers=args.workers,
        runtime=runtime,
        on_step=on_step,
        allow_change=args.allow_config_change,
        metrics=MetricsLog(out, runtime.main, args.tensorboard),
    )
    try:
        outcome = run_protocol(protocol)
    finally:
        protocol.metrics.close()  # type: ignore[union-attr]
        if runtime.distributed:
            torch.distributed.destroy_process_group()
    if not runtime.main:
        return 0

    _print_outcome(outcome, config.method, select)
    record = _finetune_record(protocol, outcome, args, options, config_path, started_at)
    print(f"wrote {write_record(out, record)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune the whole backbone: ssl-transfer lr x wd grid on val, or Core-tuning"
    )
    add_checkpoint_arguments(p)
    add_dataset_arguments(p)
    add_out_argument(p, "finetune", "run folder: grid/, final/, best.pth, result.json", required=True)
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="protocol: a YAML file or a shipped config (ssl_transfer, inat18_vissl, mae: MAE's ViT recipe)",
    )
    p.add_argument("--method", help="loss: ce (default) or coretuning (checked with the config)")
    g = p.add_argument_group("overrides of the config")
    g.add_argument("--lr", type=float, help="with --wd: skip the grid and train at this point")
    g.add_argument("--wd", type=float, help="weight decay, with --lr")
    g.add_argument("--steps", type=int, help="optimizer steps per run (ssl-transfer: 5000)")
    g.add_argument("--epochs", type=int, help="epochs per run instead of steps (VISSL schedules)")
    g.add_argument("--batch-size", type=int, help="total batch (ssl-transfer: 64)")
    g.add_argument("--image-size", type=image_size, help="crop size (224)")
    g.add_argument("--grid-size", type=int, help="ssl-transfer grid: N lrs x (N + 1) wds (4)")
    g.add_argument("--grid-lr", type=float, nargs="+", help="explicit grid: these lrs ...")
    g.add_argument("--grid-wd", type=float, nargs="+", help="... times these (absolute) weight decays")
    g.add_argument("--save-every", type=int, help="steps between resumable states (500)")
    g.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="deprecated: write KEY=VALUE at the end")
    add_overrides_argument(p, "any config key, e.g. coretuning.eta=1", beside="checkpoint")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--seed", type=int, default=0, help="head init, data order, augmentation, mixing")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out (skips finished grid points)"
    )
    add_runtime_arguments(p)
    p.set_defaults(run=run_finetune)
