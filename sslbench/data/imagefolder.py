"""ImageNet-style folders: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*``.

Classes are the sub-folders of ``ROOT/train`` in sorted order (torchvision ``ImageFolder``'s
order, so ImageNet wnids get the usual labels), or the lines of a class-list file, in file order,
which also restricts the classes: ImageNet-100 (CMC, Tian et al. 2019) is ImageNet with a list of
100 wnids. ``test`` is ``ROOT/val`` (the ImageNet validation set, the protocols' test set),
``trainval`` is ``ROOT/train``, and ``train``/``val`` a seeded stratified 80/20 partition of it.
ROOT may also be given as the ``train/`` folder itself (``/data/imagenet/train``): it is read as its
parent, the root MoCo's ``main_moco.py`` takes.
"""

from __future__ import annotations

import os
from pathlib import Path

from sslbench.data.base import ImageFiles, Transform
from sslbench.data.layout import read_lines, require
from sslbench.data.splits import stratified_holdout
from sslbench.errors import DatasetError

NAME = "imagefolder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = """  <root>/
    train/<class>/<image>.JPEG   (one folder per class, e.g. ImageNet wnids n01440764/...)
    val/<class>/<image>.JPEG     (same class folders)
  optional --class-list FILE: one class folder name per line (ImageNet-100: 100 wnids)"""


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _images_of(folder: Path) -> list[Path]:
    return sorted(
        Path(entry.path)
        for entry in os.scandir(folder)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def imagenet_root(root: str | Path) -> Path:
    """The folder holding ``train/`` and ``val/``: ``root``, or its parent when ``root`` is ``train/``."""
    root = Path(root)
    if root.name == "train" and root.is_dir() and not (root / "train").is_dir():
        return root.parent
    return root


def imagefolder(
    root: Path, split: str, transform: Transform | None = None, class_list: str | Path | None = None
) -> ImageFiles:
    """The ``split`` of the ImageFolder tree at ``root``, restricted to ``class_list`` if given."""
    root = imagenet_root(root)
    train_dir = require(NAME, root, "train", LAYOUT)
    split_dir = require(NAME, root, "val", LAYOUT) if split == "test" else train_dir
    present = _class_folders(train_dir)
    if class_list is not None:
        list_path = Path(class_list)
        if not list_path.is_file():
            raise DatasetError(f"{NAME}: class list {list_path} not found (one class folder name per line)")
        classes = read_lines(list_path)
        if len(set(classes)) != len(classes):
            raise DatasetError(f"{list_path}: class names repeat")
        absent = [c for c in classes if c not in set(present)]
        if absent:
            raise DatasetError(f"{list_path}: classes {absent[:5]} have no folder under {train_dir}")
    else:
        classes = present
    if not classes:
        raise DatasetError(f"{NAME}: no class folders under {train_dir}. Expected the layout:\n{LAYOUT}")

    paths: list[Path] = []
    targets: list[int] = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            raise DatasetError(f"{NAME}: {folder} not found; every class of train/ needs a folder in val/")
        files = _images_of(folder)
        paths.extend(files)
        targets.extend([label] * len(files))
    if not paths:
        raise DatasetError(f"{NAME}: no images under {split_dir}/<class>/ (extensions {IMAGE_EXTENSIONS})")
    if split in ("train", "val"):
        train, val = stratified_holdout(targets)
        keep = train if split == "train" else val
        paths, targets = [paths[k] for k in keep], [targets[k] for k in keep]
    return ImageFiles(NAME, split, classes, paths, targets, transform)
