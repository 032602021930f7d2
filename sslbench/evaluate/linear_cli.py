"""``sslbench linear``: the L-BFGS probe (ssl-transfer) and the trained heads of MoCo, DINO and MAE.

``--protocol lbfgs`` fits scikit-learn's logistic regression on cached features; ``sgd``, ``dino`` and
``mae`` train their recipe's head on the frozen backbone (:mod:`sslbench.evaluate.linear_recipes`)
over one resumable loop (:func:`sslbench.evaluate.linear.train_linear_head`), in DDP under
``torchrun``. Each writes ``--out/result.json`` naming its protocol, source and every setting.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sslbench.errors import ConfigError
from sslbench.evaluate.eval_run import EvalRun, add_common_arguments, common_settings, open_run
from sslbench.evaluate.protocol_defaults import C_GRID_SIZE, LBFGS_MAX_ITER, SgdSettings
from sslbench.evaluate.reporting import dataset_record, print_metrics
from sslbench.options import non_negative_float, non_negative_int, positive_float, positive_int, unit_fraction
from sslbench.runtime.arguments import add_runtime_arguments

LBFGS_SOURCE = "ssl-transfer linear.py (Ericsson et al. CVPR 2021)"
WD_TEXT = "-6, 5"
DINO_RESNET_FEATURE = (
    "avgpool of the canonical backbone (DINO eval_linear.py on torchvision archs: fc = Identity), frozen, "
    "eval mode"
)
MAE_FEATURE = (
    "CLS token after the final LayerNorm (MAE main_linprobe's default: global_pool off), frozen, eval mode"
)


def _linear_lbfgs(args: argparse.Namespace, run: EvalRun) -> Any:
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
        **common_settings(run, transform),
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


def _linear_features(
    args: argparse.Namespace, run: EvalRun, recipe: Any
) -> tuple[Any, int, str | None, dict]:
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


def _linear_trained(args: argparse.Namespace, run: EvalRun) -> Any:
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
        **common_settings(run, test_transform),
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

    run = open_run(args, runtime)
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


def register(subparsers: argparse._SubParsersAction) -> None:
    from sslbench.evaluate.protocol_defaults import DinoLinearSettings, MaeLinearSettings

    d, dino, mae = SgdSettings(), DinoLinearSettings(), MaeLinearSettings()
    p = subparsers.add_parser(
        "linear", help="linear probe: L-BFGS (ssl-transfer), SGD (MoCo), or the ViT recipes of DINO and MAE"
    )
    add_common_arguments(p, batch_size=None)
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
