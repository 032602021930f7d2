"""Datasets by name: ``build_dataset(name, root, split, transform)``.

Every dataset exposes the splits ``train``, ``val``, ``trainval`` and ``test``. ``val`` is the
official validation split where the dataset has one, else a seeded stratified 20% of train (then
``train`` is the other 80% and ``trainval`` the official train set).

Some datasets take options (``imagefolder``: ``class_list``, the ImageNet-100 wnid file), passed
as keywords: ``build_dataset("imagefolder", root, "trainval", t, class_list="in100.txt")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslbench.errors import DatasetError

if TYPE_CHECKING:
    from sslbench.data.base import LabeledImages, Transform

SPLITS = ("train", "val", "trainval", "test")


# Readers are imported when a dataset is built, so that listing the names (the CLI's choices)
# does not import torch and PIL.
def _digits(root: Path | None, split: str, t: Transform | None) -> LabeledImages:
    from sslbench.data.builtin import digits

    return digits(split, t)


def _fashion_mnist(root: Path | None, split: str, t: Transform | None) -> LabeledImages:
    from sslbench.data.builtin import fashion_mnist

    return fashion_mnist(split, root, t)  # None: where Debian's package installs it


def _cub200(root: Path, split: str, t: Transform | None) -> LabeledImages:
    from sslbench.data.cub import cub200

    return cub200(root, split, t)


def _aircraft(level: str) -> Callable[..., LabeledImages]:
    def build(root: Path, split: str, t: Transform | None) -> LabeledImages:
        from sslbench.data.aircraft import aircraft

        return aircraft(root, split, t, level=level)

    return build


def _inat18(root: Path, split: str, t: Transform | None) -> LabeledImages:
    from sslbench.data.inat import inat18

    return inat18(root, split, t)


def _imagefolder(root: Path, split: str, t: Transform | None, class_list: str | None = None) -> LabeledImages:
    from sslbench.data.imagefolder import imagefolder

    return imagefolder(root, split, t, class_list=class_list)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    build: Callable[..., LabeledImages]  # (root, split, transform, **options)
    needs_root: bool
    official_val: bool
    description: str
    options: tuple[str, ...] = ()  # keyword options ``build`` accepts
    accepts_root: bool = True  # False: built in, a root given for it is a mistake
    headline_metric: str = "top1"  # what validation selects on and tables lead with


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "digits",
            _digits,
            False,
            False,
            "scikit-learn's handwritten digits (built in; no root needed)",
            accepts_root=False,
        ),
        DatasetSpec(
            "fashion-mnist",
            _fashion_mnist,
            False,
            False,
            "Fashion-MNIST IDX files (default: where Debian's dataset-fashion-mnist installs them)",
        ),
        DatasetSpec(
            "cub200",
            _cub200,
            True,
            False,
            "CUB-200-2011: the CUB_200_2011/ folder of the official tarball",
        ),
        # mean per-class accuracy is Aircraft's official metric (and ssl-transfer selects C on it)
        *(
            DatasetSpec(
                "aircraft" if level == "variant" else f"aircraft-{level}",
                _aircraft(level),
                True,
                True,
                f"FGVC-Aircraft 2013b at {level} level: the fgvc-aircraft-2013b/ folder",
                headline_metric="mean_per_class",
            )
            for level in ("variant", "family", "manufacturer")
        ),
        DatasetSpec(
            "inat18",
            _inat18,
            True,
            False,
            "iNaturalist 2018: train2018.json, val2018.json and train_val2018/ (val2018 is the test split)",
        ),
        DatasetSpec(
            "imagefolder",
            _imagefolder,
            True,
            False,
            "ImageNet-style ROOT/train/<class>/ and ROOT/val/<class>/ (val is the test split)",
            options=("class_list",),
        ),
    )
}


def build_dataset(
    name: str, root: str | Path | None, split: str, transform: Transform | None = None, **options: Any
) -> LabeledImages:
    """The ``split`` of dataset ``name`` read from ``root`` (its on-disk layout as downloaded).

    ``options`` are dataset-specific keywords (see ``DatasetSpec.options``); ``None`` values are
    ignored, so command lines can pass their optional flags through unchanged."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    spec = DATASETS[name]
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise DatasetError(f"{name}: unknown option(s) {', '.join(unknown)} (accepted: {accepted})")
    if root is not None and not spec.accepts_root:
        raise DatasetError(
            f"{name}: a dataset root was given (--root / data.root = {root}), but {name} is built in "
            "and reads none; drop the root, or name the dataset it belongs to"
        )
    if spec.needs_root and root is None:
        raise DatasetError(f"{name}: --root is required ({spec.description})")
    return spec.build(Path(root) if root is not None else None, split, transform, **options)
