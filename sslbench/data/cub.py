"""CUB-200-2011 (Wah et al. 2011) read from ``CUB_200_2011/`` as the official tarball unpacks it.

Labels come from ``image_class_labels.txt`` (1-based class ids, mapped to ``id - 1``), class
names from ``classes.txt``, the official train/test partition from ``train_test_split.txt``
(1 = train). CUB has no official validation split: ``trainval`` is the official train set
(5,994 images), ``train``/``val`` a seeded stratified 80/20 partition of it (ssl-transfer holds out an
unstratified shuffled 20% instead; see ``sslbench.data.splits``), ``test`` the official test set
(5,794). Greyscale images are converted to RGB.
"""

from __future__ import annotations

from pathlib import Path

from sslbench.data.base import ImageFiles, Transform
from sslbench.data.layout import find_root, read_id_table, require
from sslbench.data.splits import stratified_holdout
from sslbench.errors import DatasetError

NAME = "cub200"
LAYOUT = """  CUB_200_2011/
    images/<NNN>.<Class_Name>/<Class_Name>_<NNNN>_<NNNNN>.jpg
    images.txt              <image_id> <path under images/>
    image_class_labels.txt  <image_id> <class_id>   (ids 1-based)
    train_test_split.txt    <image_id> <1=train|0=test>
    classes.txt             <class_id> <NNN.Class_Name>
(--root may be CUB_200_2011/ or the folder holding it)"""
FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _int(path: Path, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{path}: expected an integer id, found {value!r}") from None


def cub200(root: Path, split: str, transform: Transform | None = None) -> ImageFiles:
    """The ``split`` (train / val / trainval / test) of CUB-200-2011 under ``root``."""
    root = find_root(root, "images.txt", "CUB_200_2011")
    paths = {name: require(NAME, root, name, LAYOUT) for name in FILES}
    images = {_int(paths["images.txt"], i): p for i, p in read_id_table(paths["images.txt"])}
    labels = {
        _int(paths["image_class_labels.txt"], i): _int(paths["image_class_labels.txt"], c)
        for i, c in read_id_table(paths["image_class_labels.txt"])
    }
    is_train = {
        _int(paths["train_test_split.txt"], i): flag
        for i, flag in read_id_table(paths["train_test_split.txt"])
    }
    class_rows = sorted((_int(paths["classes.txt"], c), n) for c, n in read_id_table(paths["classes.txt"]))
    if [c for c, _ in class_rows] != list(range(1, len(class_rows) + 1)):
        raise DatasetError(f"{paths['classes.txt']}: class ids must run 1..{len(class_rows)}")
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        missing = sorted(set(images) - set(table))
        if missing:
            raise DatasetError(f"{paths[name]}: no entry for image ids {missing[:8]} listed in images.txt")
    bad = sorted(i for i, c in labels.items() if not 1 <= c <= len(class_rows))
    if bad:
        raise DatasetError(
            f"{paths['image_class_labels.txt']}: class ids out of 1..{len(class_rows)} for {bad[:8]}"
        )
    bad = sorted(i for i, f in is_train.items() if f not in ("0", "1"))
    if bad:
        raise DatasetError(f"{paths['train_test_split.txt']}: flags must be 0 or 1 (image ids {bad[:8]})")

    wanted = "0" if split == "test" else "1"
    ids = sorted(i for i in images if is_train[i] == wanted)
    targets = [labels[i] - 1 for i in ids]
    if split in ("train", "val"):
        train, val = stratified_holdout(targets)
        keep = train if split == "train" else val
        ids, targets = [ids[k] for k in keep], [targets[k] for k in keep]
    files = [root / "images" / images[i] for i in ids]
    return ImageFiles(NAME, split, [n for _, n in class_rows], files, targets, transform)
