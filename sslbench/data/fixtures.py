"""Tiny datasets written in exactly the real on-disk layouts, for tests and for checking a set-up.

Each writer lays out a few classes of small JPEGs the way the real archive unpacks (CUB's 1-based
id tables, Aircraft's 7-digit string ids with labels holding spaces and slashes and a 20-pixel
banner, iNat 2018's COCO-like JSON over a shared ``train_val2018/`` tree, ImageNet folders) and
returns a :class:`Fixture` saying what it put there, so a test can compare a reader against it.

Pixels depend on the class (a class colour, a class stripe pattern, per-image noise and
brightness), so a probe on even random features can learn them; Aircraft's banner carries a
misleading colour (a permutation of the classes), so a reader that keeps it learns the wrong cue.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sslbench.data.aircraft import BANNER_HEIGHT
from sslbench.data.fixture_options import DEFAULT_CLASSES, DEFAULT_PER_CLASS, DEFAULT_SIZE


@dataclass
class Fixture:
    """What a writer put on disk: the ``--root`` to pass, class names by label, and for each split
    it wrote explicitly the image files with their labels, in the order the real files list them."""

    root: Path
    classes: list[str]
    splits: dict[str, list[tuple[Path, int]]] = field(default_factory=dict)

    def labels(self, split: str) -> list[int]:
        return [label for _, label in self.splits[split]]


def class_image(
    rng: np.random.Generator, label: int, num_classes: int, height: int, width: int
) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image whose colour and stripe pattern are set by ``label``."""
    hue = label / max(num_classes, 1)
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9)) * 255.0
    yy, xx = np.mgrid[0:height, 0:width]
    angle = np.pi * (label % 4) / 4.0
    period = 6 + 2 * (label % 3)
    stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period) > 0
    image = colour[None, None, :] * np.where(stripes, 1.0, 0.45)[..., None]
    image = image * rng.uniform(0.8, 1.1) + rng.normal(0.0, 18.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _save_jpeg(array: np.ndarray, path: Path, mode: str = "RGB") -> None:
    """JPEG quality 95, no EXIF (Detectron2 and PIL would otherwise apply an orientation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format="JPEG", quality=95)


def _lines(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")


def write_cub(
    out: str | Path,
    num_classes: int = DEFAULT_CLASSES,
    per_class: int = DEFAULT_PER_CLASS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
) -> Fixture:
    """``out/CUB_200_2011/`` with 1-based ids; every third image of a class is a test image; one
    image is greyscale (real CUB has some); ``attributes.txt`` sits beside the folder as in the tarball."""
    rng = np.random.default_rng(seed)
    root = Path(out) / "CUB_200_2011"
    names = [f"Fixture_Bird_{chr(ord('A') + c % 26)}{c // 26 or ''}" for c in range(num_classes)]
    classes = [f"{c + 1:03d}.{name}" for c, name in enumerate(names)]
    images, labels, split_flags, boxes = [], [], [], []
    fixture = Fixture(root, classes, {"trainval": [], "test": []})
    image_id = 0
    for label, (folder, name) in enumerate(zip(classes, names, strict=True)):
        for j in range(per_class):
            image_id += 1
            relative = f"{folder}/{name}_{j + 1:04d}_{1000 + image_id}.jpg"
            grey = image_id == 2
            _save_jpeg(
                class_image(rng, label, num_classes, size, size),
                root / "images" / relative,
                "L" if grey else "RGB",
            )
            is_train = j % 3 != 2
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {label + 1}")
            split_flags.append(f"{image_id} {int(is_train)}")
            boxes.append(f"{image_id} 2.0 3.0 {size - 5:.1f} {size - 6:.1f}")
            fixture.splits["trainval" if is_train else "test"].append((root / "images" / relative, label))
    _lines(root / "images.txt", images)
    _lines(root / "image_class_labels.txt", labels)
    _lines(root / "train_test_split.txt", split_flags)
    _lines(root / "classes.txt", [f"{c + 1} {name}" for c, name in enumerate(classes)])
    _lines(root / "bounding_boxes.txt", boxes)
    _lines(Path(out) / "attributes.txt", ["1 has_bill_shape::curved_(up_or_down)"])
    return fixture


# Real variant names hold spaces and slashes; families and manufacturers as in the real lists.
_AIRCRAFT = (
    ("Cessna 172", "Cessna 172", "Cessna"),
    ("F/A-18", "F/A-18", "McDonnell Douglas"),
    ("Hawk T1", "BAE Hawk", "British Aerospace"),
    ("707-320", "Boeing 707", "Boeing"),
    ("F-16A/B", "F-16", "Lockheed Martin"),
    ("DHC-1", "DHC-1", "de Havilland"),
    ("A320", "A320", "Airbus"),
    ("Tornado", "Tornado", "Panavia"),
)


def write_aircraft(
    out: str | Path,
    num_classes: int = DEFAULT_CLASSES,
    per_class: int = DEFAULT_PER_CLASS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
) -> Fixture:
    """``out/fgvc-aircraft-2013b/data/`` with all 12 label files; images are ``size`` px of content
    plus a 20-pixel banner at the bottom whose colour is another class's (a misleading cue)."""
    if not 1 <= num_classes <= len(_AIRCRAFT):
        raise ValueError(f"the aircraft fixture has 1..{len(_AIRCRAFT)} classes")
    rng = np.random.default_rng(seed)
    root = Path(out) / "fgvc-aircraft-2013b"
    data = root / "data"
    kinds = _AIRCRAFT[:num_classes]
    banner_class = np.roll(np.arange(num_classes), 1)
    width = size + size // 2
    ids = [f"{i:07d}" for i in rng.choice(2_000_000, size=num_classes * per_class, replace=False)]
    fixture = Fixture(root, [k[0] for k in kinds], {"train": [], "val": [], "test": []})
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for label in range(num_classes):
        for j in range(per_class):
            image_id = ids[label * per_class + j]
            content = class_image(rng, label, num_classes, size, width)
            banner = class_image(rng, int(banner_class[label]), num_classes, BANNER_HEIGHT, width)
            banner[4:16:3, 2::5] = 0  # dark "copyright text" strokes
            _save_jpeg(np.concatenate([content, banner]), data / "images" / f"{image_id}.jpg")
            split = ("train", "val", "test")[j % 3]
            rows[split].append((image_id, label))
            fixture.splits[split].append((data / "images" / f"{image_id}.jpg", label))
    rows["trainval"] = rows["train"] + rows["val"]
    fixture.splits["trainval"] = fixture.splits["train"] + fixture.splits["val"]
    for level, column, list_name in (
        ("variant", 0, "variants.txt"),
        ("family", 1, "families.txt"),
        ("manufacturer", 2, "manufacturers.txt"),
    ):
        _lines(data / list_name, list(dict.fromkeys(k[column] for k in kinds)))
        for split, entries in rows.items():
            _lines(data / f"images_{level}_{split}.txt", [f"{i} {kinds[c][column]}" for i, c in entries])
    for split in ("train", "val", "test"):
        _lines(data / f"images_{split}.txt", [i for i, _ in rows[split]])
    _lines(data / "images_box.txt", [f"{i} 3 4 {width - 2} {size - 1}" for i in ids])
    return fixture


_SUPERCATEGORIES = ("Plantae", "Aves", "Insecta", "Fungi")


def write_inat18(
    out: str | Path,
    num_classes: int = DEFAULT_CLASSES,
    per_class: int = DEFAULT_PER_CLASS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
) -> Fixture:
    """``out/train2018.json``, ``out/val2018.json`` and ``out/train_val2018/<super>/<id>/<hash>.jpg``:
    train and val images of a class share one folder; every third image is a val image."""
    rng = np.random.default_rng(seed)
    root = Path(out)
    categories = []
    for c in range(num_classes):
        supercategory = _SUPERCATEGORIES[c % len(_SUPERCATEGORIES)]
        categories.append(
            {
                "id": c,
                "name": f"{rng.integers(16**8):08x}",
                "supercategory": supercategory,
                "kingdom": supercategory,
                "phylum": f"phylum{c % 2}",
                "class": f"class{c % 2}",
                "order": f"order{c}",
                "family": f"family{c}",
                "genus": f"genus{c}",
            }
        )
    split_json: dict[str, dict[str, list[dict[str, object]]]] = {
        s: {"images": [], "annotations": []} for s in ("train", "val")
    }
    fixture = Fixture(root, [c["name"] for c in categories], {"trainval": [], "test": []})
    image_id = 0
    for c, category in enumerate(categories):
        for j in range(per_class):
            image_id += 1
            split = "val" if j % 3 == 2 else "train"
            file_name = f"train_val2018/{category['supercategory']}/{c}/{rng.bytes(16).hex()}.jpg"
            # one CMYK file, as real iNat has; the reader converts it to RGB
            _save_jpeg(
                class_image(rng, c, num_classes, size, size),
                root / file_name,
                "CMYK" if image_id == 3 else "RGB",
            )
            split_json[split]["images"].append(
                {
                    "id": image_id,
                    "width": size,
                    "height": size,
                    "file_name": file_name,
                    "license": 1,
                    "rights_holder": "fixture",
                }
            )
            split_json[split]["annotations"].append({"id": image_id, "image_id": image_id, "category_id": c})
            fixture.splits["test" if split == "val" else "trainval"].append((root / file_name, c))
    for split, content in split_json.items():
        document = {
            "info": {
                "year": 2018,
                "version": "1.0",
                "description": "sslbench fixture",
                "contributor": "sslbench",
                "url": "",
                "date_created": "2018-01-01",
            },
            **content,
            "categories": categories,
            "licenses": [
                {"id": 1, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"}
            ],
        }
        (root / f"{split}2018.json").write_text(json.dumps(document), encoding="utf-8")
    return fixture


def write_imagefolder(
    out: str | Path,
    num_classes: int = DEFAULT_CLASSES,
    per_class: int = DEFAULT_PER_CLASS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
) -> Fixture:
    """``out/train/<wnid>/<wnid>_<n>.JPEG`` and ``out/val/<wnid>/ILSVRC2012_val_<n>.JPEG``
    (ImageNet's folders); every third image of a class goes to ``val``."""
    rng = np.random.default_rng(seed)
    root = Path(out)
    wnids = [f"n{1440764 + 37 * c:08d}" for c in range(num_classes)]
    fixture = Fixture(root, wnids, {"trainval": [], "test": []})
    count = 0
    for label, wnid in enumerate(wnids):
        for j in range(per_class):
            count += 1
            if j % 3 == 2:
                path = root / "val" / wnid / f"ILSVRC2012_val_{count:08d}.JPEG"
                fixture.splits["test"].append((path, label))
            else:
                path = root / "train" / wnid / f"{wnid}_{count}.JPEG"
                fixture.splits["trainval"].append((path, label))
            _save_jpeg(class_image(rng, label, num_classes, size, size), path)
    for entries in fixture.splits.values():
        entries.sort(key=lambda item: (item[1], item[0]))  # the reader's order: by class, then file name
    return fixture


# Keyed by the dataset name the readers use (``--dataset``), so one name means one layout everywhere.
WRITERS = {
    "cub200": write_cub,
    "aircraft": write_aircraft,
    "inat18": write_inat18,
    "imagefolder": write_imagefolder,
}
