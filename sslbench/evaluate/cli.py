"""``sslbench knn`` and ``sslbench linear``: thin commands around the probes of ``evaluate/``.

Each reads any checkpoint, computes (or reads from the feature cache) the features of the splits
its protocol needs, runs the probe and writes ``--out/result.json``. Under ``torchrun`` the features
are extracted by every rank (each its shard) and the SGD probe trains in DDP; rank 0 runs the
kNN / L-BFGS probe and writes the record.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslbench.checkpoints.cli import add_checkpoint_arguments
from sslbench.data.cli import add_dataset_arguments
from sslbench.errors import ConfigError
from sslbench.evaluate.protocol_defaults import (
    C_GRID_SIZE,
    KNN_SETTINGS,
    LBFGS_MAX_ITER,
    PRIMARY_SETTING,
    QUERY_CHUNK,
    SgdSettings,
)
from sslbench.runtime.arguments import add_runtime_arguments

KNN_SOURCE = "DINO eval_knn.py (Caron et al. 2021); k=200, T=0.1 from InstDisc (Wu et al. 2018)"
LBFGS_SOURCE = "ssl-transfer linear.py (Ericsson et al. CVPR 2021)"
SGD_SOURCE = "MoCo main_lincls.py (He et al. 2020)"
WD_TEXT = "-6, 5"


def _knn_setting(text: str) -> tuple[int, float]:
    try:
        k, t = text.split(":")
        return int(k), float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K:T such as 20:0.07, got {text!r}") from None


@dataclass
class _Run:
    """What every evaluation command sets up: checkpoint, device, cache, dataset options."""

    args: argparse.Namespace
    ckpt: Any  # CanonicalCheckpoint
    runtime: Any  # Runtime
    device: Any  # torch.device
    cache: Any  # FeatureCache | None
    options: dict[str, Any]
    model: Any  # () -> nn.Module, built at most once
    started_at: str  # when the command began, for the record

    def split(self, split: str, transform: Any) -> tuple[Any, Any]:
        """The dataset split and its features (from the cache when there)."""
        from sslbench.data.registry import build_dataset
        from sslbench.data.transforms import describe_transform
        from sslbench.evaluate.features import FeatureKey, split_features
        from sslbench.models.backbones import feature_identity
        from sslbench.runtime.precision import Precision

        args = self.args
        dataset = build_dataset(args.dataset, args.root, split, transform, **self.options)
        if len(dataset) == 0:
            raise ConfigError(f"{args.dataset}: the {split} split is empty under {args.root}")
        precision = Precision(self.device).name
        key = FeatureKey.of(
            feature_identity(self.ckpt),
            dataset,
            args.root,
            self.options,
            describe_transform(transform),
            precision,
        )
        features = split_features(
            dataset, key, self.model, self.cache, self.runtime, args.batch_size, args.workers
        )
        return dataset, features


def _open_run(args: argparse.Namespace, runtime: Any) -> _Run:
    import torch

    from sslbench.checkpoints.cli import checkpoint_from_args
    from sslbench.data.cli import dataset_options_from_args
    from sslbench.evaluate.features import FeatureCache, lazy
    from sslbench.models.backbones import build_evaluated_backbone, check_image_size
    from sslbench.tools.records import utc_now

    started_at = utc_now()
    if args.image_size < 8 or args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--image-size must be >= 8, --batch-size >= 1 and --workers >= 0")
    ckpt = checkpoint_from_args(args)
    check_image_size(ckpt, args.image_size)

    def backbone() -> torch.nn.Module:
        return build_evaluated_backbone(ckpt, args.image_size)

    cache_dir = (
        args.cache_dir if args.cache_dir is not None else Path(args.out).resolve().parent / ".feature_cache"
    )
    cache = None if args.no_cache else FeatureCache(cache_dir)
    options = dataset_options_from_args(args)
    return _Run(args, ckpt, runtime, runtime.device, cache, options, lazy(backbone), started_at)


def _dataset_record(
    args: argparse.Namespace, train: Any, test: Any, options: dict[str, Any], uses_val: bool = False
) -> dict[str, Any]:
    """The record's ``dataset``; ``uses_val``: the protocol selects on ``val``, so say how it is made."""
    from sslbench.data.registry import DATASETS
    from sslbench.data.splits import describe_val_split

    record = {
        "name": args.dataset,
        "root": str(args.root) if args.root is not None else None,
        "split": test.split,
        "train_split": train.split,
        "num_classes": test.num_classes,
        "num_train": len(train),
        "num_test": len(test),
        "options": {k: v for k, v in options.items() if v is not None},
    }
    if uses_val:
        record["val_split"] = describe_val_split(DATASETS[args.dataset].official_val)
    return record


def _common_settings(run: _Run, transform: Any) -> dict[str, Any]:
    from sslbench.data.transforms import describe_transform
    from sslbench.models.backbones import feature_settings
    from sslbench.runtime.precision import Precision

    return {
        "image_size": run.args.image_size,
        "transform": describe_transform(transform),
        **feature_settings(run.ckpt),
        "precision": Precision(run.device).name,
        "device": str(run.device),
        "world_size": run.runtime.world,
    }


def _print_metrics(label: str, metrics: dict[str, float]) -> None:
    print(
        f"{label:24s} top1 {metrics['top1']:6.2f}  top5 {metrics['top5']:6.2f}  "
        f"mean/class {metrics['mean_per_class']:6.2f}"
    )


def run_knn(args: argparse.Namespace) -> int:
    from sslbench.runtime.process import launched

    with launched(args.device) as runtime:
        return _run_knn(args, runtime)


def _run_knn(args: argparse.Namespace, runtime: Any) -> int:
    from sslbench.data.transforms import eval_transform, resize_for_crop
    from sslbench.evaluate.features import describe_splits
    from sslbench.evaluate.knn import index_description, knn_classify, use_gpu_index
    from sslbench.tools.records import ResultRecord, write_record

    settings = list(dict.fromkeys(args.knn))
    primary = args.primary
    if primary not in settings:
        raise ConfigError(f"--primary {primary[0]}:{primary[1]} is not among the --knn settings")
    run = _open_run(args, runtime)
    transform = eval_transform(args.image_size)
    train_ds, train = run.split("trainval", transform)
    test_ds, test = run.split("test", transform)
    if not runtime.main:
        return 0
    outcomes = knn_classify(
        train.features, train.labels, test.features, test.labels, settings, args.chunk_size, progress=True
    )
    table = [{"k": o.k, "T": o.temperature, "k_used": o.k_used, **o.metrics} for o in outcomes.values()]
    for row in table:
        _print_metrics(f"k={row['k']} T={row['T']}", row)
    record = ResultRecord(
        task="knn",
        protocol={
            "name": "knn",
            "source": KNN_SOURCE,
            "settings": {
                "knn": [list(s) for s in settings],
                "primary": list(primary),
                "vote": "sum of exp(cos/T) over the k nearest, per class",
                "normalise": "l2",
                "index": index_description(use_gpu_index()),
                "query_chunk": args.chunk_size,
                "resize": resize_for_crop(args.image_size),
                "train_split": "trainval",
                "test_split": "test",
                **_common_settings(run, transform),
            },
        },
        dataset=_dataset_record(args, train_ds, test_ds, run.options),
        metrics=outcomes[primary].metrics,
        checkpoint=run.ckpt.describe(),
        started_at=run.started_at,
        seed=args.seed,
        extra={"knn": table, "features": describe_splits([("trainval", train), ("test", test)])},
    )
    print(f"wrote {write_record(args.out, record)}")
    return 0


def _linear_lbfgs(args: argparse.Namespace, run: _Run) -> Any:
    import numpy as np

    from sslbench.data.registry import DATASETS
    from sslbench.data.transforms import lbfgs_transform
    from sslbench.evaluate.features import describe_splits
    from sslbench.evaluate.linear import C_GRID_ARITHMETIC, c_grid, lbfgs_probe

    transform = lbfgs_transform(args.image_size)
    parts = {split: run.split(split, transform) for split in ("train", "val", "trainval", "test")}
    test_ds = parts["test"][0]
    if not run.runtime.main:
        return None

    def arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
        features = parts[split][1]
        return features.features.numpy(), features.labels.numpy()

    select = DATASETS[args.dataset].headline_metric
    result = lbfgs_probe(
        arrays("train"),
        arrays("val"),
        arrays("trainval"),
        arrays("test"),
        test_ds.num_classes,
        c_grid(args.c_grid_size),
        select_metric=select,
        max_iter=args.max_iter,
        progress=True,
    )
    print(f"best C {result.best_c:.4g} (chosen on val {select})")
    settings = {
        "solver": "sklearn LogisticRegression(solver='lbfgs'), multinomial, warm_start",
        "wd_grid": f"logspace({WD_TEXT}, {args.c_grid_size})",
        "c_grid_size": args.c_grid_size,
        "c_grid_arithmetic": C_GRID_ARITHMETIC,
        "max_iter": args.max_iter,
        "select_metric": select,
        "select_split": "val",
        "refit_split": "trainval",
        "test_split": "test",
        "best_C": result.best_c,
        **_common_settings(run, transform),
    }
    extra = {
        "c_sweep": result.sweep,
        "features": describe_splits([(s, parts[s][1]) for s in parts]),
    }
    return ("linear-lbfgs", LBFGS_SOURCE, settings), parts["trainval"][0], test_ds, result.metrics, extra


def _linear_sgd(args: argparse.Namespace, run: _Run) -> Any:

    from sslbench.data.registry import build_dataset
    from sslbench.data.transforms import describe_transform, eval_transform, train_transform
    from sslbench.evaluate.features import describe_splits
    from sslbench.evaluate.linear import (
        SgdSettings,
        check_backbone_unchanged,
        epoch_loaders,
        head_scores,
        train_linear_head,
    )
    from sslbench.evaluate.metrics import accuracy_metrics
    from sslbench.models.archs import feature_dim
    from sslbench.runtime.progress import MetricsLog

    settings = SgdSettings(
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        milestones=tuple(args.milestones),
        crop_scale=(args.crop_scale, 1.0),
        seed=args.seed,
    )
    augment = train_transform(args.image_size, settings.crop_scale)
    trainval = build_dataset(args.dataset, args.root, "trainval", augment, **run.options)

    runtime = run.runtime
    loader_for_epoch = epoch_loaders(trainval, settings, runtime, args.workers)
    backbone = run.model()
    state_path = Path(args.out) / "linear_state.pth"
    fingerprint = {
        "checkpoint": run.ckpt.sha256,
        "dataset": args.dataset,
        "options": {k: v for k, v in run.options.items() if v is not None},
        "transform": describe_transform(augment),
    }
    sgd = train_linear_head(
        backbone,
        feature_dim(run.ckpt.arch),
        trainval.num_classes,
        loader_for_epoch,
        settings,
        run.device,
        state_path,
        fingerprint,
        runtime=runtime,
        allow_change=args.allow_config_change,
        metrics=MetricsLog(Path(args.out), runtime.main, args.tensorboard),
    )
    check_backbone_unchanged(backbone, run.ckpt.state_dict)
    test_ds, test = run.split("test", eval_transform(args.image_size))  # a collective under DDP
    if not runtime.main:
        return None
    metrics = accuracy_metrics(head_scores(sgd.head, test.features), test.labels)
    protocol_settings = {
        **settings.as_dict(),
        "optimizer": "SGD on the head only; backbone frozen in eval mode",
        "head_init": "N(0, 0.01), bias 0",
        "train_split": "trainval",
        "test_split": "test",
        "train_transform": describe_transform(augment),
        "test_metric_epoch": "last",
        **_common_settings(run, eval_transform(args.image_size)),
    }
    extra = {
        "history": sgd.history,
        "resumed_from_epoch": sgd.resumed_from,
        "sanity_check": "backbone unchanged",
        "config_changes": sgd.config_changes,
        "state": str(state_path),
        "features": describe_splits([("test", test)]),
    }
    return ("linear-sgd", SGD_SOURCE, protocol_settings), trainval, test_ds, metrics, extra


def refuse_vit_sgd_probe(arch: str) -> None:
    """MoCo's SGD recipe is a ResNet recipe; the ViT ones (DINO, MAE) are not in sslbench yet."""
    from sslbench.models.vit_archs import is_vit_arch

    if is_vit_arch(arch):
        raise ConfigError(
            f"linear --protocol sgd on a ViT ({arch}): MoCo's ResNet recipe does not apply and DINO's / "
            "MAE's ViT linear recipes are not implemented yet; use --protocol lbfgs"
        )


def run_linear(args: argparse.Namespace) -> int:
    from sslbench.runtime.process import launched

    with launched(args.device) as runtime:
        return _run_linear(args, runtime)


def _run_linear(args: argparse.Namespace, runtime: Any) -> int:
    from sslbench.tools.records import ResultRecord, write_record

    run = _open_run(args, runtime)
    if args.protocol == "sgd":
        refuse_vit_sgd_probe(run.ckpt.arch)
    probe = _linear_lbfgs if args.protocol == "lbfgs" else _linear_sgd
    outcome = probe(args, run)
    if outcome is None:  # not the main rank: its share is done
        return 0
    (name, source, settings), train_ds, test_ds, metrics, extra = outcome
    _print_metrics(f"linear {args.protocol}", metrics)
    record = ResultRecord(
        task="linear",
        protocol={"name": name, "source": source, "settings": settings},
        dataset=_dataset_record(args, train_ds, test_ds, run.options, uses_val=args.protocol == "lbfgs"),
        metrics=metrics,
        checkpoint=run.ckpt.describe(),
        started_at=run.started_at,
        seed=args.seed,
        extra=extra,
    )
    print(f"wrote {write_record(args.out, record)}")
    return 0


def _add_common(p: argparse.ArgumentParser, batch_size: int) -> None:
    add_checkpoint_arguments(p)
    add_dataset_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="run folder: result.json is written there")
    p.add_argument("--image-size", type=int, default=224, help="crop size (224 in the protocols)")
    p.add_argument("--batch-size", type=int, default=batch_size, help="images per batch")
    p.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader worker processes"
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--cache-dir", type=Path, help="feature cache folder (default: <--out>/../.feature_cache)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    p.add_argument("--seed", type=int, default=0, help="recorded; seeds the SGD probe's data order")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("knn", help="weighted kNN probe on frozen features (DINO / InstDisc protocol)")
    _add_common(p, batch_size=256)
    p.add_argument(
        "--knn",
        type=_knn_setting,
        nargs="+",
        default=list(KNN_SETTINGS),
        metavar="K:T",
        help="(k, temperature) pairs; default 10:0.07 20:0.07 100:0.07 200:0.07 200:0.1",
    )
    p.add_argument(
        "--primary",
        type=_knn_setting,
        default=PRIMARY_SETTING,
        metavar="K:T",
        help="setting reported as the record's metrics (default: {}:{})".format(*PRIMARY_SETTING),
    )
    p.add_argument("--chunk-size", type=int, default=QUERY_CHUNK, help="queries per FAISS search")
    p.set_defaults(run=run_knn)

    d = SgdSettings()
    p = subparsers.add_parser("linear", help="linear probe: L-BFGS (ssl-transfer) or SGD (MoCo)")
    _add_common(p, batch_size=d.batch_size)
    p.add_argument(
        "--protocol", choices=("lbfgs", "sgd"), required=True, help="lbfgs (ssl-transfer) or sgd (MoCo)"
    )
    g = p.add_argument_group("lbfgs (ssl-transfer)")
    g.add_argument(
        "--c-grid-size", type=int, default=C_GRID_SIZE, help="points of logspace(-6, 5, N) for wd=1/C"
    )
    g.add_argument("--max-iter", type=int, default=LBFGS_MAX_ITER, help="L-BFGS iterations per fit")
    g = p.add_argument_group("sgd (MoCo main_lincls)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    g.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate (MoCo: 30 at batch 256)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay")
    g.add_argument(
        "--milestones",
        type=float,
        nargs="+",
        default=list(d.milestones),
        help="lr x0.1 at these fractions of training",
    )
    g.add_argument(
        "--crop-scale", type=float, default=d.crop_scale[0], help="RandomResizedCrop min scale (FT repo: 0.2)"
    )
    add_runtime_arguments(g)
    p.set_defaults(run=run_linear)
