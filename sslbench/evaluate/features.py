"""Frozen-backbone features of a dataset split, and the on-disk cache every probe reads them from.

:func:`extract_features` is a plain function (DINO ``eval_knn.extract_features``): the model's
output for every batch of a loader, ``(N, D)`` float32, with the labels ``(N,)``. On CUDA it
runs in ``torch.inference_mode`` with bf16 autocast and channels_last. Under ``torchrun``
(:func:`extract_split`) each rank extracts a contiguous shard of the split and the shards are
gathered back in dataset order on every rank: the same matrix as one process.

:class:`FeatureCache` stores one file per :class:`FeatureKey` (checkpoint sha256, dataset, root,
options, split, transform, precision, and a fingerprint of the split's labels) under a cache
folder; the commands default to ``<--out>/../.feature_cache`` so that runs side by side share it.
A file is written atomically with a sha256 of its contents, and checked when read: its key, that
hash, its row count and its labels against the dataset's targets. A stale, foreign, cut or edited
file is never used: it is recomputed, with a warning saying why.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from sslbench.atomic import torch_save
from sslbench.data.base import LabeledImages
from sslbench.errors import ConfigError
from sslbench.runtime.collectives import gather_rows
from sslbench.runtime.precision import Precision
from sslbench.runtime.process import Runtime
from sslbench.runtime.progress import Progress
from sslbench.runtime.sampling import shard

CACHE_VERSION = 2  # 2: files carry a content hash (version 1 files are recomputed)


def extract_features(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    progress: bool = True,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model(images)`` for every batch of ``loader``: features ``(N, D)`` float32 on the CPU and
    labels ``(N,)`` int64, in the loader's order. ``model`` is put in eval mode on ``device``."""
    precision = Precision(torch.device(device))
    model = precision.model(model.eval())
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    bar = Progress(len(loader), desc, images_per_step=loader.batch_size or 0, enabled=progress)
    with torch.inference_mode():
        for images, targets in loader:
            with precision.autocast():
                output = model(precision.images(images))
            features.append(output.float().flatten(1).cpu())
            labels.append(torch.as_tensor(targets, dtype=torch.long))
            bar.update()
    bar.close()
    if not features:
        raise ValueError("the loader yielded no batches")
    return torch.cat(features), torch.cat(labels)


@dataclass(frozen=True)
class FeatureKey:
    """Everything the features of one split depend on."""

    checkpoint_sha256: str
    dataset: str
    root: str | None
    options: tuple[tuple[str, str], ...]
    split: str
    transform: str
    precision: str
    num_samples: int
    labels_sha256: str

    @classmethod
    def of(
        cls,
        checkpoint_sha256: str,
        dataset: LabeledImages,
        root: str | Path | None,
        options: dict[str, Any],
        transform: str,
        precision: str,
    ) -> FeatureKey:
        labels = hashlib.sha256(json.dumps([dataset.classes, dataset.targets]).encode()).hexdigest()
        return cls(
            checkpoint_sha256=checkpoint_sha256,
            dataset=dataset.name,
            root=str(Path(root).resolve()) if root is not None else None,
            options=tuple(sorted((k, str(v)) for k, v in options.items() if v is not None)),
            split=dataset.split,
            transform=transform,
            precision=precision,
            num_samples=len(dataset),
            labels_sha256=labels,
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = [list(kv) for kv in self.options]
        return data

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()


class FeatureCache:
    """``directory/<dataset>-<split>-<digest[:16]>.pt`` holding features, labels and the key."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: FeatureKey) -> Path:
        return self.directory / f"{key.dataset}-{key.split}-{key.digest()[:16]}.pt"

    def load(
        self, key: FeatureKey, targets: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached ``(features, labels)`` of ``key``, or None (with a warning on stderr when a file is
        there but does not prove it belongs: see :func:`cache_problem`). ``targets``: the dataset's."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unreadable file (truncated copy, other torch): recompute it
            print(f"feature cache: ignoring unreadable {path} ({exc}); recomputing", file=sys.stderr)
            return None
        problem = cache_problem(stored, key, targets)
        if problem is not None:
            print(f"feature cache: ignoring {path}: {problem}; recomputing", file=sys.stderr)
            return None
        return stored["features"], stored["labels"]

    def save(self, key: FeatureKey, features: torch.Tensor, labels: torch.Tensor) -> Path:
        path = self.path(key)
        stored = {"version": CACHE_VERSION, "key": key.as_dict(), "features": features, "labels": labels}
        stored["sha256"] = content_sha256(features, labels)
        torch_save(stored, path)
        return path


def content_sha256(features: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 over the features' and labels' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for tensor in (features, labels):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def cache_problem(stored: Any, key: FeatureKey, targets: Sequence[int] | None) -> str | None:
    """Why a loaded cache file may not be used for ``key`` (None: it may)."""
    if not isinstance(stored, dict) or stored.get("version") != CACHE_VERSION:
        return f"not a version-{CACHE_VERSION} feature cache file"
    if stored.get("key") != key.as_dict():
        return "written for other settings (its key differs)"
    features, labels = stored.get("features"), stored.get("labels")
    if not isinstance(features, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return "features or labels missing"
    if features.dim() != 2 or labels.dim() != 1 or len(features) != len(labels):
        return f"malformed: features {tuple(features.shape)}, labels {tuple(labels.shape)}"
    if len(labels) != key.num_samples:
        return f"{len(labels)} rows, but the split has {key.num_samples} samples"
    if stored.get("sha256") != content_sha256(features, labels):
        return "its contents do not match the sha256 written with them (edited or damaged)"
    if targets is not None and labels.tolist() != list(targets):
        return "its labels differ from the dataset's targets"
    if not bool(torch.isfinite(features).all()):
        return "it holds non-finite features"
    return None


@dataclass
class SplitFeatures:
    """Features ``(N, D)`` and labels ``(N,)`` of one split, and where they came from."""

    features: torch.Tensor
    labels: torch.Tensor
    cached: bool  # True when read from the cache (no image was decoded)
    path: Path | None  # the cache file, if a cache is used

    def describe(self) -> dict[str, Any]:
        return {
            "samples": len(self.labels),
            "dim": self.features.shape[1],
            "cache": "hit" if self.cached else "computed",
            "path": str(self.path) if self.path else None,
        }


def extract_split(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    workers: int,
    runtime: Runtime,
    progress: bool = True,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, D)`` and labels ``(N,)`` of ``dataset`` in its order. Under DDP each rank
    extracts its contiguous shard and every rank gets the whole matrix back (a collective)."""
    size = len(dataset)  # type: ignore[arg-type]
    if size < runtime.world:
        raise ConfigError(f"{size} images cannot be shared by {runtime.world} processes")
    part = Subset(dataset, list(shard(size, runtime.rank, runtime.world)))
    loader = DataLoader(
        part,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",
        persistent_workers=False,
    )
    features, labels = extract_features(model, loader, runtime.device, progress, desc)
    return gather_rows(features, runtime), gather_rows(labels, runtime)


def split_features(
    dataset: LabeledImages,
    key: FeatureKey,
    model: Callable[[], nn.Module],
    cache: FeatureCache | None,
    runtime: Runtime,
    batch_size: int,
    workers: int,
    progress: bool = True,
) -> SplitFeatures:
    """Features of ``dataset`` (its transform applied), from ``cache`` when it holds ``key`` (on every
    rank), else extracted with the backbone ``model()`` returns (called only then), sharded over the
    ranks under DDP, and stored by the main rank."""
    hit = cache.load(key, dataset.targets) if cache is not None else None
    # every rank must take the same branch: the extraction is a collective
    if not runtime.any(hit is None) and hit is not None and cache is not None:
        return SplitFeatures(hit[0], hit[1], True, cache.path(key))
    desc = f"features {key.dataset}/{key.split}"
    show = progress and runtime.main
    features, labels = extract_split(model(), dataset, batch_size, workers, runtime, show, desc)
    if labels.tolist() != dataset.targets:
        raise RuntimeError(
            f"{key.dataset}/{key.split}: the loader's labels differ from the dataset's targets"
        )
    path = cache.path(key) if cache is not None else None
    if cache is not None and runtime.main:
        cache.save(key, features, labels)
    return SplitFeatures(features, labels, False, path)


def lazy(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``factory`` called at most once: the backbone is built only if some split is not cached."""
    built: list[nn.Module] = []

    def get() -> nn.Module:
        if not built:
            built.append(factory())
        return built[0]

    return get


def describe_splits(parts: Sequence[tuple[str, SplitFeatures]]) -> dict[str, Any]:
    return {name: part.describe() for name, part in parts}
