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
from sslbench.evaluate.reporting import dataset_record, print_metrics
from sslbench.options import (
    image_size,
    knn_setting,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    unit_fraction,
)
from sslbench.run_folder import refuse_existing_record, refuse_unwritable
from sslbench.runtime.arguments import add_runtime_arguments

KNN_SOURCE = "DINO eval_knn.py (Caron et al. 2021); k=200, T=0.1 from InstDisc (Wu et al. 2018)"
LBFGS_SOURCE = "ssl-transfer linear.py (Ericsson et al. CVPR 2021)"
WD_TEXT = "-6, 5"
DINO_RESNET_FEATURE = (
    "avgpool of the canonical backbone (DINO eval_linear.py on torchvision archs: fc = Identity), frozen, "
    "eval mode"
)
MAE_FEATURE = (
    "CLS token after the final LayerNorm (MAE main_linprobe's default: global_pool off), frozen, eval mode"
)


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

    def split(
        self, split: str, transform: Any, model: Any = None, identity: str | None = None
    ) -> tuple[Any, Any]:
        """The dataset split and its features (from the cache when there); ``model`` (a factory) and
        ``identity`` (what the cache keys on) replace the checkpoint's evaluated backbone's."""
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
            identity if identity is not None else feature_identity(self.ckpt),
            dataset,
            args.root,
            self.options,
            describe_transform(transform),
            precision,
        )
        features = split_features(
            dataset, key, model or self.model, self.cache, self.runtime, args.batch_size, args.workers
        )
        return dataset, features


def _open_run(args: argparse.Namespace, runtime: Any) -> _Run:
    import torch

    from sslbench.checkpoints.cli import checkpoint_from_args
    from sslbench.data.cli import dataset_options_from_args
    from sslbench.evaluate.features import FeatureCache, lazy
    from sslbench.models.backbones import build_evaluated_backbone, check_image_size
    from sslbench.tools.records import RECORD_NAME, utc_now

    started_at = utc_now()
    if not args.overwrite:
        refuse_existing_record(Path(args.out), RECORD_NAME)
    ckpt = checkpoint_from_args(args)
    check_image_size(ckpt, args.image_size)
    refuse_unwritable(Path(args.out))  # fails now, not after the features are computed

    def backbone() -> torch.nn.Module:
        return build_evaluated_backbone(ckpt, args.image_size)

    cache_dir = (
        args.cache_dir if args.cache_dir is not None else Path(args.out).resolve().parent / ".feature_cache"
    )
    cache = None if args.no_cache else FeatureCache(cache_dir)
    options = dataset_options_from_args(args)
    return _Run(args, ckpt, runtime, runtime.device, cache, options, lazy(backbone), started_at)


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
        print_metrics(f"k={row['k']} T={row['T']}", row)
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
        dataset=dataset_record(args, train_ds, test_ds, run.options),
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


def _linear_recipe(args: argparse.Namespace, arch: str) -> Any:
    """The recipe of ``--protocol sgd|dino|mae`` from the options (defaults already resolved)."""
    from sslbench.evaluate.linear_recipes import DinoLinearRecipe, MaeLinearRecipe, MocoLinearRecipe
    from sslbench.evaluate.protocol_defaults import DinoLinearSettings, MaeLinearSettings
    from sslbench.models.vit_archs import is_vit_arch

    common = {
        "epochs": args.epochs,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "crop_scale": (args.crop_scale, 1.0),
        "seed": args.seed,
    }
    if args.protocol == "sgd":
        return MocoLinearRecipe(SgdSettings(lr=args.lr, milestones=tuple(args.milestones), **common))
    if args.protocol == "dino":
        n_last, avgpool = _dino_layout(args, arch) if is_vit_arch(arch) else _dino_resnet(args, arch)
        return DinoLinearRecipe(
            DinoLinearSettings(
                base_lr=args.base_lr,
                lr=args.lr,
                n_last_blocks=n_last,
                avgpool_patchtokens=avgpool,
                **common,
            )
        )
    return MaeLinearRecipe(
        MaeLinearSettings(base_lr=args.base_lr, lr=args.lr, warmup_epochs=args.warmup_epochs, **common)
    )


def _dino_resnet(args: argparse.Namespace, arch: str) -> tuple[None, None]:
    """DINO eval_linear.py on a torchvision ResNet: ``fc = Identity``, the pooled feature; no blocks."""
    if args.n_last_blocks is not None or args.avgpool_patchtokens is not None:
        raise ConfigError(
            f"--n-last-blocks / --avgpool-patchtokens on a ResNet ({arch}): DINO's eval_linear.py reads a "
            "ResNet's pooled feature; they are for ViTs"
        )
    return None, None


def _dino_layout(args: argparse.Namespace, arch: str) -> tuple[int, bool]:
    """``(n_last_blocks, avgpool_patchtokens)``: the options where given, else DINO's recipe for the
    ViT's width (:func:`~sslbench.evaluate.protocol_defaults.dino_recipe_for_width`), checked
    against the ViT's depth."""
    from sslbench.evaluate.protocol_defaults import dino_recipe_for_width
    from sslbench.models.vit_archs import parse_vit_arch
    from sslbench.models.vit_features import check_dino_layout

    spec = parse_vit_arch(arch)
    n_default, avgpool_default = dino_recipe_for_width(spec.width)
    n_last = args.n_last_blocks if args.n_last_blocks is not None else n_default
    avgpool = args.avgpool_patchtokens if args.avgpool_patchtokens is not None else avgpool_default
    try:
        check_dino_layout(spec.depth, n_last, avgpool)
    except ValueError as exc:
        given = "" if args.n_last_blocks is not None else " (DINO's default for this width)"
        raise ConfigError(f"--n-last-blocks {n_last}{given} on {arch}: {exc}") from None
    return n_last, avgpool


def _linear_features(args: argparse.Namespace, run: _Run, recipe: Any) -> tuple[Any, int, str | None, dict]:
    """The frozen module the head trains on, its output width, the feature cache identity of its
    test features (None: the evaluated backbone's) and what the record says about the feature."""
    from sslbench.models.backbones import feature_identity, feature_width

    backbone = run.model()
    if args.protocol == "sgd":
        return backbone, feature_width(run.ckpt.arch), None, {}
    if args.protocol == "dino" and recipe.settings.n_last_blocks is None:  # a ResNet
        record = {"features": DINO_RESNET_FEATURE, "feature_dim": feature_width(run.ckpt.arch)}
        return backbone, feature_width(run.ckpt.arch), None, record
    if args.protocol == "mae":
        record = {"features": MAE_FEATURE, "feature_dim": feature_width(run.ckpt.arch)}
        return backbone, feature_width(run.ckpt.arch), None, record
    from sslbench.evaluate.protocol_defaults import DINO_RECIPE_RULE
    from sslbench.models.vit_features import DinoLinearFeatures, describe_dino_layout, dino_feature_dim

    s = recipe.settings
    module = DinoLinearFeatures(backbone, s.n_last_blocks, s.avgpool_patchtokens)
    width = dino_feature_dim(backbone.embed_dim, s.n_last_blocks, s.avgpool_patchtokens)
    layout = f"n{s.n_last_blocks}:avgpool{int(s.avgpool_patchtokens)}"
    identity = f"{feature_identity(run.ckpt)}/dino-linear:{layout}"
    given = args.n_last_blocks is not None or args.avgpool_patchtokens is not None
    record = {
        "features": describe_dino_layout(s.n_last_blocks, s.avgpool_patchtokens),
        "feature": "dino-last-blocks-cls" + ("+avgpool" if s.avgpool_patchtokens else ""),
        "feature_dim": width,
        "layout_choice": "given by --n-last-blocks / --avgpool-patchtokens" if given else DINO_RECIPE_RULE,
    }
    return module, width, identity, record


def _train_transform(args: argparse.Namespace, crop_scale: tuple[float, float]) -> Any:
    """MoCo's and DINO's RandomResizedCrop (bilinear) + flip; MAE's bicubic single-draw crop + flip."""
    from sslbench.data.transforms import mae_train_transform, train_transform

    if args.protocol == "mae":
        return mae_train_transform(args.image_size, crop_scale)
    return train_transform(args.image_size, crop_scale)


def _linear_trained(args: argparse.Namespace, run: _Run) -> Any:
    """``--protocol sgd|dino|mae``: train the recipe's head on the frozen features over augmented
    trainval images, check the backbone did not move, score the last epoch's head on test."""
    from sslbench.data.registry import build_dataset
    from sslbench.data.transforms import describe_transform, eval_transform
    from sslbench.evaluate.linear import check_backbone_unchanged, epoch_loaders, train_linear_head
    from sslbench.evaluate.linear_recipes import LAST_EPOCH_NOTE
    from sslbench.runtime.progress import MetricsLog

    recipe = _linear_recipe(args, run.ckpt.arch)
    augment = _train_transform(args, recipe.settings.crop_scale)
    trainval = build_dataset(args.dataset, args.root, "trainval", augment, **run.options)

    runtime = run.runtime
    loader_for_epoch = epoch_loaders(trainval, recipe.settings, runtime, args.workers, recipe.drop_last)
    backbone, width, identity, feature_record = _linear_features(args, run, recipe)
    # MoCo's sanity_check compares with the checkpoint; a ViT's resized positions are compared with
    # the backbone as built, before training
    reference = (
        run.ckpt.state_dict
        if args.protocol == "sgd"
        else {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    )
    state_path = Path(args.out) / "linear_state.pth"
    fingerprint = {
        "checkpoint": run.ckpt.sha256,
        "dataset": args.dataset,
        "options": {k: v for k, v in run.options.items() if v is not None},
        "transform": describe_transform(augment),
    }
    if args.protocol != "sgd":  # MoCo's fingerprint stays what earlier states hold
        fingerprint["protocol"] = recipe.name
    trained = train_linear_head(
        backbone,
        width,
        trainval.num_classes,
        loader_for_epoch,
        recipe,
        run.device,
        state_path,
        fingerprint,
        runtime=runtime,
        allow_change=args.allow_config_change,
        metrics=MetricsLog(Path(args.out), runtime.main, args.tensorboard),
    )
    check_backbone_unchanged(backbone, reference)
    test_transform = eval_transform(args.image_size)
    model = None if identity is None else (lambda: backbone)
    test_ds, test = run.split("test", test_transform, model, identity)  # a collective under DDP
    if not runtime.main:
        return None
    metrics = _head_metrics(trained.head, test)
    protocol_settings = {
        **recipe.describe(),
        "train_split": "trainval",
        "test_split": "test",
        "train_transform": describe_transform(augment),
        "test_metric_epoch": "last",
        **_common_settings(run, test_transform),
        **feature_record,
    }
    if args.protocol != "sgd":
        protocol_settings["test_metric_note"] = LAST_EPOCH_NOTE
    return (recipe.name, recipe.source, protocol_settings), trainval, test_ds, metrics, _trained_extra(
        trained, state_path, test
    )


def _trained_extra(trained: Any, state_path: Path, test: Any) -> dict[str, Any]:
    """The record's ``extra`` of a trained probe: per-epoch history, resume and sanity-check facts."""
    from sslbench.evaluate.features import describe_splits

    return {
        "history": trained.history,
        "resumed_from_epoch": trained.resumed_from,
        "sanity_check": "backbone unchanged",
        "config_changes": trained.config_changes,
        "state": str(state_path),
        "features": describe_splits([("test", test)]),
    }


def _head_metrics(head: Any, test: Any) -> dict[str, float]:
    """Top-1, top-5 and mean per-class accuracy of ``head`` on the test split's features."""
    from sslbench.evaluate.linear import head_scores
    from sslbench.evaluate.metrics import accuracy_metrics

    return accuracy_metrics(head_scores(head, test.features), test.labels)


def refuse_protocol_for_arch(protocol: str, arch: str) -> None:
    """MoCo's SGD recipe is a ResNet recipe, MAE's a ViT one; DINO's eval_linear.py reads both."""
    from sslbench.models.vit_archs import is_vit_arch

    if protocol == "sgd" and is_vit_arch(arch):
        raise ConfigError(
            f"linear --protocol sgd on a ViT ({arch}): MoCo's ResNet recipe does not apply; use --protocol "
            "dino (DINO eval_linear.py) or --protocol mae (MAE main_linprobe.py), or lbfgs"
        )
    if protocol == "mae" and not is_vit_arch(arch):
        raise ConfigError(
            f"linear --protocol mae on a ResNet ({arch}): MAE's linear recipe is for ViT checkpoints; use "
            "--protocol sgd (MoCo main_lincls.py), dino (DINO eval_linear.py) or lbfgs"
        )


def resolve_linear_defaults(args: argparse.Namespace) -> None:
    """Fill the options left unset with the chosen protocol's defaults (each names its source);
    refuse options that do not belong to it."""
    from sslbench.evaluate.protocol_defaults import DinoLinearSettings, MaeLinearSettings

    if args.protocol == "sgd" and args.base_lr is not None:
        raise ConfigError("--base-lr is for --protocol dino|mae (MoCo's lr does not scale): use --lr")
    if args.protocol in ("dino", "mae") and args.lr is not None and args.base_lr is not None:
        raise ConfigError("--lr (absolute) and --base-lr (per 256 images) both given: choose one")
    if args.protocol != "dino" and (args.n_last_blocks is not None or args.avgpool_patchtokens is not None):
        raise ConfigError("--n-last-blocks and --avgpool-patchtokens are for --protocol dino")
    if args.protocol != "mae" and args.warmup_epochs is not None:
        raise ConfigError("--warmup-epochs is for --protocol mae")
    defaults: Any = {"sgd": SgdSettings, "dino": DinoLinearSettings, "mae": MaeLinearSettings}.get(
        args.protocol, SgdSettings
    )()
    if args.batch_size is None:
        args.batch_size = defaults.batch_size  # lbfgs: the feature-extraction batch
    if args.epochs is None:
        args.epochs = defaults.epochs
    if args.protocol == "sgd" and args.lr is None:
        args.lr = defaults.lr
    if args.protocol in ("dino", "mae") and args.base_lr is None:
        args.base_lr = defaults.base_lr
    if args.protocol == "mae" and args.warmup_epochs is None:
        args.warmup_epochs = defaults.warmup_epochs
        given = " (MAE's default, as --warmup-epochs was not given)"
    else:
        given = ""
    if args.protocol == "mae" and args.warmup_epochs >= args.epochs:
        raise ConfigError(
            f"--warmup-epochs {args.warmup_epochs}{given} is not shorter than --epochs {args.epochs}: the lr "
            "would never leave its warm-up; give fewer warm-up epochs (0 for none)"
        )


def run_linear(args: argparse.Namespace) -> int:
    from sslbench.runtime.process import launched

    resolve_linear_defaults(args)
    with launched(args.device) as runtime:
        return _run_linear(args, runtime)


def _run_linear(args: argparse.Namespace, runtime: Any) -> int:
    from sslbench.tools.records import ResultRecord, write_record

    run = _open_run(args, runtime)
    refuse_protocol_for_arch(args.protocol, run.ckpt.arch)
    probe = _linear_lbfgs if args.protocol == "lbfgs" else _linear_trained
    outcome = probe(args, run)
    if outcome is None:  # not the main rank: its share is done
        return 0
    (name, source, settings), train_ds, test_ds, metrics, extra = outcome
    print_metrics(f"linear {args.protocol}", metrics)
    record = ResultRecord(
        task="linear",
        protocol={"name": name, "source": source, "settings": settings},
        dataset=dataset_record(args, train_ds, test_ds, run.options, uses_val=args.protocol == "lbfgs"),
        metrics=metrics,
        checkpoint=run.ckpt.describe(),
        started_at=run.started_at,
        seed=args.seed,
        extra=extra,
    )
    print(f"wrote {write_record(args.out, record)}")
    return 0


def _add_common(p: argparse.ArgumentParser, batch_size: int | None) -> None:
    """``batch_size`` None: the protocol's default, filled in after parsing (linear)."""
    add_checkpoint_arguments(p)
    add_dataset_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="run folder: result.json is written there")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a result.json already in --out (default: refuse)"
    )
    p.add_argument("--image-size", type=image_size, default=224, help="crop size (224 in the protocols)")
    by_protocol = "" if batch_size is not None else " (by protocol: lbfgs and sgd 256, dino 128, mae 512)"
    p.add_argument(
        "--batch-size", type=positive_int, default=batch_size, help=f"images per batch{by_protocol}"
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader worker processes",
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
        type=knn_setting,
        nargs="+",
        default=list(KNN_SETTINGS),
        metavar="K:T",
        help="(k, temperature) pairs; default 10:0.07 20:0.07 100:0.07 200:0.07 200:0.1",
    )
    p.add_argument(
        "--primary",
        type=knn_setting,
        default=PRIMARY_SETTING,
        metavar="K:T",
        help="setting reported as the record's metrics (default: {}:{})".format(*PRIMARY_SETTING),
    )
    p.add_argument("--chunk-size", type=positive_int, default=QUERY_CHUNK, help="queries per FAISS search")
    p.set_defaults(run=run_knn)

    _register_linear(subparsers)


def _register_linear(subparsers: argparse._SubParsersAction) -> None:
    from sslbench.evaluate.protocol_defaults import DinoLinearSettings, MaeLinearSettings

    d, dino, mae = SgdSettings(), DinoLinearSettings(), MaeLinearSettings()
    p = subparsers.add_parser(
        "linear", help="linear probe: L-BFGS (ssl-transfer), SGD (MoCo), or the ViT recipes of DINO and MAE"
    )
    _add_common(p, batch_size=None)
    p.add_argument(
        "--protocol",
        choices=("lbfgs", "sgd", "dino", "mae"),
        required=True,
        help="lbfgs (ssl-transfer), sgd (MoCo main_lincls, ResNets), dino (DINO eval_linear, ViTs and "
        "ResNets), mae (MAE main_linprobe, ViTs)",
    )
    g = p.add_argument_group("lbfgs (ssl-transfer)")
    g.add_argument(
        "--c-grid-size",
        type=positive_int,
        default=C_GRID_SIZE,
        help="points of logspace(-6, 5, N) for wd=1/C",
    )
    g.add_argument("--max-iter", type=positive_int, default=LBFGS_MAX_ITER, help="L-BFGS iterations per fit")
    g = p.add_argument_group("sgd (MoCo main_lincls), dino (DINO eval_linear), mae (MAE main_linprobe)")
    g.add_argument(
        "--epochs",
        type=positive_int,
        help=f"training epochs (sgd {d.epochs}, dino {dino.epochs}, mae {mae.epochs})",
    )
    g.add_argument(
        "--lr",
        type=positive_float,
        help=f"absolute learning rate (sgd: default {d.lr}, MoCo's at any batch; dino/mae: replaces "
        "--base-lr x batch / 256)",
    )
    g.add_argument(
        "--base-lr",
        type=positive_float,
        help=f"dino/mae: lr per 256 images, lr = base x --batch-size / 256 (DINO --lr {dino.base_lr}, "
        f"MAE --blr {mae.base_lr})",
    )
    g.add_argument(
        "--weight-decay", type=non_negative_float, default=d.weight_decay, help="weight decay (0 in all)"
    )
    g.add_argument(
        "--milestones",
        type=unit_fraction,
        nargs="+",
        default=list(d.milestones),
        help="sgd: lr x0.1 at these fractions of training",
    )
    g.add_argument(
        "--crop-scale",
        type=unit_fraction,
        default=d.crop_scale[0],
        help="RandomResizedCrop min scale (0.08 in MoCo, DINO and MAE; FT repo: 0.2)",
    )
    g.add_argument(
        "--n-last-blocks",
        type=positive_int,
        help="dino: concatenate the CLS tokens of the last N blocks (default by width: 4 below 768, "
        "DINO's ViT-S recipe; 1 from 768, its ViT-B recipe)",
    )
    g.add_argument(
        "--avgpool-patchtokens",
        action=argparse.BooleanOptionalAction,
        help="dino: add the last block's average-pooled patch tokens (needs --n-last-blocks 1; "
        "default by width: on from 768, DINO's ViT-B recipe)",
    )
    g.add_argument(
        "--warmup-epochs",
        type=non_negative_int,
        help=f"mae: linear warm-up epochs before the half-cycle cosine (MAE: {mae.warmup_epochs})",
    )
    add_runtime_arguments(g)
    p.set_defaults(run=run_linear)
