"""FGVC-Aircraft 2013b (Maji et al. 2013) read from ``fgvc-aircraft-2013b/`` as its tarball unpacks.

Image ids are strings (7 digits, leading zeros kept); each split file line is ``"<id> <label>"``
split on the first space only, since labels hold spaces and slashes (``Cessna 172``, ``F/A-18``).
Classes are the lines of ``variants.txt`` / ``families.txt`` / ``manufacturers.txt``, in file
order (counted, never hard-coded). Every image carries a 20-pixel copyright banner along its
bottom edge, which the official README says to remove: the reader crops it. The official
``train`` / ``val`` / ``trainval`` / ``test`` splits are used as they are. The official metric is
mean per-class accuracy.
"""

from __future__ import annotations

from pathlib import Path

from sslbench.data.base import ImageFiles, Transform
from sslbench.data.layout import find_root, read_id_table, read_lines, require
from sslbench.errors import DatasetError

NAME = "aircraft"
BANNER_HEIGHT = 20  # pixels of copyright text at the bottom of every image (official README)
LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
LAYOUT = """  fgvc-aircraft-2013b/
    data/images/<7-digit id>.jpg
    data/images_{variant,family,manufacturer}_{train,val,trainval,test}.txt   <id> <label>
    data/variants.txt | families.txt | manufacturers.txt                     one class per line
(--root may be fgvc-aircraft-2013b/ or the folder holding it)"""


def aircraft(
    root: Path, split: str, transform: Transform | None = None, level: str = "variant"
) -> ImageFiles:
    """The official ``split`` of FGVC-Aircraft at annotation ``level``, banner cropped."""
    if level not in LEVELS:
        raise DatasetError(f"{NAME}: unknown annotation level {level!r}; expected one of {', '.join(LEVELS)}")
    root = find_root(root, "data", "fgvc-aircraft-2013b")
    classes = read_lines(require(NAME, root, f"data/{LEVELS[level]}", LAYOUT))
    if len(set(classes)) != len(classes):
        raise DatasetError(f"{root / 'data' / LEVELS[level]}: class names repeat")
    index = {name: i for i, name in enumerate(classes)}
    split_file = require(NAME, root, f"data/images_{level}_{split}.txt", LAYOUT)
    rows = read_id_table(split_file)
    unknown = sorted({label for _, label in rows if label not in index})
    if unknown:
        raise DatasetError(f"{split_file}: labels {unknown[:5]} are not in {LEVELS[level]}")
    paths = [root / "data" / "images" / f"{image_id}.jpg" for image_id, _ in rows]
    targets = [index[label] for _, label in rows]
    name = NAME if level == "variant" else f"{NAME}-{level}"
    return ImageFiles(name, split, classes, paths, targets, transform, crop_bottom=BANNER_HEIGHT)
