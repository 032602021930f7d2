"""Datasets by name: ``build_dataset(name, root, split, transform)``.

Every dataset exposes the splits ``train``, ``val``, ``trainval`` and ``test``. ``val`` is the
official validation split where the dataset has one, else a seeded stratified 20% of train (then
``train`` is the other 80% and ``trainval`` the official train set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sslbench.data import builtin
from sslbench.data.base import LabeledImages, Transform
from sslbench.errors import DatasetError

SPLITS = ("train", "val", "trainval", "test")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    build: Callable[[Path | None, str, Transform | None], LabeledImages]
    needs_root: bool
    official_val: bool
    description: str


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "digits",
            lambda root, split, t: builtin.digits(split, t),
            False,
            False,
            "scikit-learn's handwritten digits (built in; no root needed)",
        ),
        DatasetSpec(
            "fashion-mnist",
            lambda root, split, t: builtin.fashion_mnist(split, root, t),
            False,
            False,
            f"Fashion-MNIST IDX files (default root {builtin.FASHION_MNIST_ROOT})",
        ),
    )
}


def build_dataset(
    name: str, root: str | Path | None, split: str, transform: Transform | None = None
) -> LabeledImages:
    """The ``split`` of dataset ``name`` read from ``root`` (its on-disk layout as downloaded)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    spec = DATASETS[name]
    if spec.needs_root and root is None:
        raise DatasetError(f"{name}: --root is required ({spec.description})")
    return spec.build(Path(root) if root is not None else None, split, transform)
