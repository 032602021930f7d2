"""Tiny Pascal VOC and COCO detection datasets, written in exactly the layouts Detectron2 reads.

Scenes are scikit-image's bundled CC0 photographs (``chelsea`` the cat, ``astronaut``, the stereo
``motorcycle``, the ``horse`` silhouette) pasted on its textures (brick, grass, gravel), so every box
and mask is exact. Nothing is downloaded and no image is committed: they are read from the installed
scikit-image at run time (DESIGN 6.2).

Layouts (DESIGN 6; ``reference/datasets.md``)::

    VOC2007/Annotations/<id>.xml             one <object> per box: name, pose, truncated, difficult,
                                             bndbox with 1-based inclusive pixel indices
    VOC2007/ImageSets/Main/{train,val,trainval,test}.txt, <class>_<split>.txt
    VOC2007/JPEGImages/<id>.jpg
    coco/{train2017,val2017}/<12-digit id>.jpg
    coco/annotations/instances_{train2017,val2017}.json   info, licenses, images, annotations
                                             (ids from 1, polygons, area, bbox [x, y, w, h],
                                             iscrowd 0) and categories with COCO's own ids

Every split holds at least two images and every class in it, so AP is defined for each class.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from sslbench.atomic import atomic_path, write_json, write_text
from sslbench.errors import DatasetError


@dataclass(frozen=True)
class FixtureClass:
    voc_name: str
    coco_name: str
    coco_id: int  # the id COCO 2017 gives this category (non-contiguous on purpose)


# In Pascal VOC's alphabetical class order (Detectron2's ``pascal_voc.CLASS_NAMES`` order).
FIXTURE_CLASSES = (
    FixtureClass("cat", "cat", 17),
    FixtureClass("horse", "horse", 19),
    FixtureClass("motorbike", "motorcycle", 4),
    FixtureClass("person", "person", 1),
)
VOC_FIXTURE_CLASSES = tuple(c.voc_name for c in FIXTURE_CLASSES)
# In category-id order, as COCO's json lists them (and Detectron2's load_coco_json numbers them).
COCO_FIXTURE_CLASSES = tuple(c.coco_name for c in sorted(FIXTURE_CLASSES, key=lambda c: c.coco_id))
IMAGE_SIZE = (224, 168)  # (width, height)
# Longest side of a pasted object: COCO's small (< 32^2 px), medium and large (> 96^2 px) ranges.
OBJECT_SIDES = (24, 56, 136)


@dataclass(frozen=True)
class FixtureObject:
    cls: FixtureClass
    polygon: tuple[float, ...]  # x1, y1, x2, y2, ... in pixel-edge coordinates
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (0-based, x1/y1 exclusive)


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    objects: tuple[FixtureObject, ...]


@cache
def _sources() -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Class name -> (RGB photo, optional foreground mask), from scikit-image's bundled data."""
    from skimage import data

    horse_mask = ~data.horse()  # the silhouette is False on white
    horse = np.zeros((*horse_mask.shape, 3), np.uint8)
    horse[...] = (120, 72, 40)
    return {
        "cat": (data.chelsea(), None),
        "horse": (horse, horse_mask),
        "motorbike": (data.stereo_motorcycle()[0], None),
        "person": (data.astronaut(), None),
    }


@cache
def _textures() -> tuple[np.ndarray, ...]:
    from skimage import data

    return (data.brick(), data.grass(), data.gravel())


def _background(rng: np.random.Generator) -> np.ndarray:
    width, height = IMAGE_SIZE
    texture = _textures()[rng.integers(len(_textures()))]
    y, x = rng.integers(0, texture.shape[0] - height), rng.integers(0, texture.shape[1] - width)
    grey = texture[y : y + height, x : x + width].astype(np.float32) / 255.0
    tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    return (grey[..., None] * tint * 255).astype(np.uint8)


def _mask_polygon(mask: np.ndarray) -> tuple[float, ...]:
    """The outer contour of a boolean mask as a COCO polygon (pixel edges: pixel i spans [i, i+1))."""
    from skimage import measure

    padded = np.pad(mask, 1).astype(np.float32)
    contour = max(measure.find_contours(padded, 0.5), key=len)
    contour = measure.approximate_polygon(contour, tolerance=1.0)
    # find_contours gives (row, col) in padded pixel-centre units: shift by -1 (pad) + 0.5 (centre).
    return tuple(float(v) for row, col in contour for v in (col - 0.5, row - 0.5))


def _paste(
    canvas: np.ndarray, name: str, side: int, x: int, y: int
) -> tuple[tuple[float, ...], tuple[int, int, int, int]]:
    photo, mask = _sources()[name]
    h, w = photo.shape[:2]
    scale = side / max(h, w)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    patch = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR))
    if mask is None:
        canvas[y : y + size[1], x : x + size[0]] = patch
        x1, y1 = x + size[0], y + size[1]
        return (x, y, x1, y, x1, y1, x, y1), (x, y, x1, y1)
    small = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    region = canvas[y : y + size[1], x : x + size[0]]
    region[small] = patch[small]
    local = _mask_polygon(small)
    polygon = tuple(v + (x if i % 2 == 0 else y) for i, v in enumerate(local))
    xs, ys = polygon[0::2], polygon[1::2]
    box = (int(np.floor(min(xs))), int(np.floor(min(ys))), int(np.ceil(max(xs))), int(np.ceil(max(ys))))
    return polygon, box


def _place(
    rng: np.random.Generator, wh: tuple[int, int], taken: list[tuple[int, int, int, int]]
) -> tuple[int, int]:
    """A random top-left corner where a ``wh`` patch overlaps none of the ``taken`` rectangles."""
    width, height = IMAGE_SIZE
    w, h = wh
    for _ in range(1000):
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        if all(x + w <= a or a2 <= x or y + h <= b or b2 <= y for a, b, a2, b2 in taken):
            return x, y
    raise DatasetError(f"no room for a {w}x{h} object beside {taken} in a {width}x{height} fixture image")


def make_scenes(count: int, seed: int, objects_per_image: int = 2) -> list[Scene]:
    """``count`` scenes; classes are dealt in turn so any two consecutive scenes hold all four."""
    if count < 2:
        raise DatasetError(f"a fixture split needs at least 2 images, asked for {count}")
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(count):
        canvas = _background(rng)
        taken: list[tuple[int, int, int, int]] = []
        objects = []
        dealt = [
            (
                FIXTURE_CLASSES[(objects_per_image * i + j) % len(FIXTURE_CLASSES)],
                OBJECT_SIDES[(i + 2 * j) % len(OBJECT_SIDES)],
            )
            for j in range(objects_per_image)
        ]
        for cls, side in sorted(dealt, key=lambda d: -d[1]):  # largest first, so all of them fit
            photo = _sources()[cls.voc_name][0]
            scale = side / max(photo.shape[:2])
            wh = (max(2, round(photo.shape[1] * scale)), max(2, round(photo.shape[0] * scale)))
            x, y = _place(rng, wh, taken)
            polygon, box = _paste(canvas, cls.voc_name, side, x, y)
            taken.append((x, y, x + wh[0], y + wh[1]))
            objects.append(FixtureObject(cls, polygon, box))
        scenes.append(Scene(canvas, tuple(objects)))
    return scenes


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=92)


def _voc_xml(year: int, image_id: str, scene: Scene) -> str:
    height, width = scene.image.shape[:2]
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = f"VOC{year}"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "sslbench fixture (scikit-image CC0 images)"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in scene.objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.cls.voc_name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = "0"
        bndbox = ET.SubElement(node, "bndbox")
        x0, y0, x1, y1 = obj.box  # VOC: 1-based, inclusive pixel indices
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc_fixture(
    root: str | Path, year: int = 2007, splits: Sequence[str] = ("trainval", "test"), images: int = 4
) -> Path:
    """Write ``root/VOC<year>`` with ``images`` images per split; returns that folder.

    ``trainval`` is also written as its halves ``train`` and ``val``, as in the real VOC.
    """
    voc = Path(root) / f"VOC{year}"
    split_ids: dict[str, list[str]] = {}
    for index, split in enumerate(splits):
        scenes = make_scenes(images, seed=1000 * year + index)
        ids = [f"{year}_{index:02d}{i:04d}" if year != 2007 else f"{index:02d}{i:04d}" for i in range(images)]
        for image_id, scene in zip(ids, scenes, strict=True):
            _save_jpeg(scene.image, voc / "JPEGImages" / f"{image_id}.jpg")
            write_text(voc / "Annotations" / f"{image_id}.xml", _voc_xml(year, image_id, scene))
        split_ids[split] = ids
        if split == "trainval":
            split_ids["train"], split_ids["val"] = ids[: images // 2], ids[images // 2 :]
        for cls in VOC_FIXTURE_CLASSES:  # per-class lists: "<id> 1" (present) or "<id> -1"
            lines = [
                f"{i} {1 if any(o.cls.voc_name == cls for o in s.objects) else -1:>2d}"
                for i, s in zip(ids, scenes, strict=True)
            ]
            write_text(voc / "ImageSets" / "Main" / f"{cls}_{split}.txt", "\n".join(lines) + "\n")
    for split, ids in split_ids.items():
        write_text(voc / "ImageSets" / "Main" / f"{split}.txt", "\n".join(ids) + "\n")
    return voc


def _coco_json(split: str, scenes: list[Scene], first_image_id: int) -> tuple[dict, list[str]]:
    from pycocotools import mask as mask_utils

    images, annotations, names = [], [], []
    for offset, scene in enumerate(scenes):
        image_id = first_image_id + offset
        height, width = scene.image.shape[:2]
        name = f"{image_id:012d}.jpg"
        names.append(name)
        images.append(
            {
                "license": 1,
                "file_name": name,
                "coco_url": "",
                "height": height,
                "width": width,
                "date_captured": "2017-01-01 00:00:00",
                "flickr_url": "",
                "id": image_id,
            }
        )
        for obj in scene.objects:
            rle = mask_utils.merge(mask_utils.frPyObjects([list(obj.polygon)], height, width))
            x0, y0, x1, y1 = obj.box
            annotations.append(
                {
                    "segmentation": [[round(v, 2) for v in obj.polygon]],
                    "area": float(mask_utils.area(rle)),
                    "iscrowd": 0,
                    "image_id": image_id,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "category_id": obj.cls.coco_id,
                    "id": len(annotations) + 1,  # COCO annotation ids start at 1
                }
            )
    supercategory = {"cat": "animal", "horse": "animal", "motorcycle": "vehicle", "person": "person"}
    data = {
        "info": {
            "description": f"sslbench COCO-layout fixture ({split})",
            "version": "1.0",
            "year": 2017,
            "contributor": "sslbench, from scikit-image's CC0 images",
            "date_created": "2017/09/01",
        },
        "licenses": [
            {"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}
        ],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"supercategory": supercategory[c.coco_name], "id": c.coco_id, "name": c.coco_name}
            for c in sorted(FIXTURE_CLASSES, key=lambda c: c.coco_id)
        ],
    }
    return data, names


def write_coco_fixture(
    root: str | Path, splits: Sequence[str] = ("train2017", "val2017"), images: int = 4
) -> Path:
    """Write ``root/coco`` (images and ``annotations/instances_<split>.json``); returns that folder."""
    coco = Path(root) / "coco"
    for index, split in enumerate(splits):
        scenes = make_scenes(images, seed=2017 + index)
        data, names = _coco_json(split, scenes, first_image_id=1 + 100 * index)
        for name, scene in zip(names, scenes, strict=True):
            _save_jpeg(scene.image, coco / split / name)
        write_json(coco / "annotations" / f"instances_{split}.json", data)
    return coco


def write_detection_fixtures(root: str | Path, images: int = 4) -> Path:
    """VOC2007 (trainval, test), VOC2012 (trainval) and COCO 2017 (train, val) under ``root``."""
    write_voc_fixture(root, 2007, ("trainval", "test"), images)
    write_voc_fixture(root, 2012, ("trainval",), images)
    write_coco_fixture(root, ("train2017", "val2017"), images)
    return Path(root)
