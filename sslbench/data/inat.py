"""iNaturalist 2018 (Van Horn et al. 2018) read from its COCO-like JSON files.

``train2018.json`` and ``val2018.json`` hold ``images`` (``file_name`` relative to the root,
e.g. ``train_val2018/Plantae/7477/<hash>.jpg``), one ``annotations`` entry per image
(``category_id``) and ``categories`` (8,142 species). Train and val images share one folder
tree; only the JSON tells them apart (torchvision's ``INaturalist`` indexes the folders and so
mixes them: it is not used). Test labels are not public, so, as in the SSL transfer protocols,
the official val set is our ``test``; ``trainval`` is the official train set and ``train``/``val``
a seeded stratified 80/20 partition of it. Labels are category ids in sorted order, ``0..C-1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sslbench.data.base import ImageFiles, Transform
from sslbench.data.layout import read_text, require
from sslbench.data.splits import stratified_holdout
from sslbench.errors import DatasetError

NAME = "inat18"
LAYOUT = """  <root>/
    train2018.json   {"images": [{"id", "file_name": "train_val2018/<super>/<cat>/<hash>.jpg", ...}],
    val2018.json      "annotations": [{"image_id", "category_id"}], "categories": [{"id", "name", ...}]}
    train_val2018/<supercategory>/<category_id>/<hash>.jpg"""


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_text(path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: expected a JSON object with images, annotations, categories; "
            f"found a {type(data).__name__}"
        )
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(f"{path}: expected COCO-like lists {', '.join(missing)}")
    return data


def inat18(root: Path, split: str, transform: Transform | None = None) -> ImageFiles:
    """The ``split`` of iNaturalist 2018 under ``root`` (see the module docstring for the mapping)."""
    json_path = require(NAME, root, "val2018.json" if split == "test" else "train2018.json", LAYOUT)
    data = _load(json_path)
    try:
        categories = sorted(data["categories"], key=lambda c: c["id"])
        label_of = {c["id"]: i for i, c in enumerate(categories)}
        file_of = {im["id"]: im["file_name"] for im in data["images"]}
        category_of = {a["image_id"]: a["category_id"] for a in data["annotations"]}
    except KeyError as exc:
        raise DatasetError(f"{json_path}: an entry lacks the field {exc}") from None
    except TypeError:
        raise DatasetError(
            f"{json_path}: entries of images, annotations and categories must be objects with comparable ids"
        ) from None
    bad_files = [i for i, f in file_of.items() if not isinstance(f, str) or not Path(f).parts]
    if bad_files:
        raise DatasetError(f"{json_path}: images {bad_files[:8]} have no file_name string")
    if len(category_of) != len(data["annotations"]):
        raise DatasetError(f"{json_path}: some images have more than one annotation (expected one each)")
    unlabelled = sorted(set(file_of) - set(category_of))
    if unlabelled:
        raise DatasetError(f"{json_path}: images {unlabelled[:8]} have no annotation")
    unknown = sorted({c for c in category_of.values() if c not in label_of})
    if unknown:
        raise DatasetError(f"{json_path}: category ids {unknown[:8]} are not in 'categories'")

    ids = sorted(file_of)
    if ids:  # the image tree (train_val2018/) must be there too, not only the JSON
        require(NAME, root, Path(file_of[ids[0]]).parts[0], LAYOUT)
    targets = [label_of[category_of[i]] for i in ids]
    if split in ("train", "val"):
        train, val = stratified_holdout(targets)
        keep = train if split == "train" else val
        ids, targets = [ids[k] for k in keep], [targets[k] for k in keep]
    classes = [str(c.get("name", c["id"])) for c in categories]
    return ImageFiles(NAME, split, classes, [root / file_of[i] for i in ids], targets, transform)
