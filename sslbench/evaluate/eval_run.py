"""What ``sslbench knn`` and ``sslbench linear`` share: their common options and the run they open.

:func:`open_run` refuses an earlier record (unless ``--overwrite``), reads the checkpoint, checks the
image size and the output folder, and returns an :class:`EvalRun` whose :meth:`EvalRun.split` gives a
split's features, from the feature cache when they are there. Under ``torchrun`` every rank extracts
its shard and the features are gathered on every rank.
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
from sslbench.options import image_size, non_negative_int, positive_int
from sslbench.run_folder import refuse_existing_record, refuse_unwritable


@dataclass
class EvalRun:
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


def open_run(args: argparse.Namespace, runtime: Any) -> EvalRun:
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
    return EvalRun(args, ckpt, runtime, runtime.device, cache, options, lazy(backbone), started_at)


def common_settings(run: EvalRun, transform: Any) -> dict[str, Any]:
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


def add_common_arguments(p: argparse.ArgumentParser, batch_size: int | None) -> None:
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
