"""The VOC and COCO fixtures are in the real layouts, with boxes that match their masks exactly."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslbench.data.detection_fixtures import (
    COCO_FIXTURE_CLASSES,
    VOC_FIXTURE_CLASSES,
    make_scenes,
    write_coco_fixture,
    write_voc_fixture,
)
from sslbench.errors import DatasetError


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("detection_fixtures")
    write_voc_fixture(root, 2007, ("trainval", "test"), images=4)
    pytest.importorskip("pycocotools")
    write_coco_fixture(root, ("train2017", "val2017"), images=4)
    return root


def test_voc_fixture_has_real_layout_and_every_class_per_split(fixture_root: Path) -> None:
    voc = fixture_root / "VOC2007"
    main = voc / "ImageSets" / "Main"
    trainval = (main / "trainval.txt").read_text().split()
    assert sorted(
        (main / "train.txt").read_text().split() + (main / "val.txt").read_text().split()
    ) == sorted(trainval)
    for split in ("trainval", "test"):
        ids = (main / f"{split}.txt").read_text().split()
        assert len(ids) >= 2
        seen = set()
        for image_id in ids:
            root = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
            width, height = Image.open(voc / "JPEGImages" / f"{image_id}.jpg").size
            assert (int(root.findtext("size/width")), int(root.findtext("size/height"))) == (width, height)
            for obj in root.iter("object"):
                assert (
                    obj.findtext("pose")
                    and obj.findtext("truncated") == "0"
                    and obj.findtext("difficult") == "0"
                )
                box = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                assert 1 <= box[0] < box[2] <= width and 1 <= box[1] < box[3] <= height  # 1-based, inclusive
                seen.add(obj.findtext("name"))
            for cls in VOC_FIXTURE_CLASSES:  # the per-class image lists agree with the annotations
                flags = dict(line.split() for line in (main / f"{cls}_{split}.txt").read_text().splitlines())
                present = any(o.findtext("name") == cls for o in root.iter("object"))
                assert flags[image_id] == ("1" if present else "-1")
        assert seen == set(VOC_FIXTURE_CLASSES)


def test_coco_fixture_boxes_and_areas_match_the_polygons(fixture_root: Path) -> None:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    for split in ("train2017", "val2017"):
        path = fixture_root / "coco" / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        assert {"info", "licenses", "images", "annotations", "categories"} <= set(data)
        assert sorted(a["id"] for a in data["annotations"]) == list(range(1, len(data["annotations"]) + 1))
        assert [c["name"] for c in data["categories"]] == list(COCO_FIXTURE_CLASSES)
        coco = COCO(str(path))
        for ann in data["annotations"]:
            image = coco.imgs[ann["image_id"]]
            assert (fixture_root / "coco" / split / image["file_name"]).is_file()
            assert ann["iscrowd"] == 0 and all(len(p) >= 6 for p in ann["segmentation"])
            mask = coco.annToMask(ann).astype(bool)
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]  # the box is the rasterised mask's extent, within a pixel
            assert abs(xs.min() - x) <= 1 and abs(ys.min() - y) <= 1
            assert abs(xs.max() + 1 - (x + w)) <= 1 and abs(ys.max() + 1 - (y + h)) <= 1
            rle = mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
            assert ann["area"] == pytest.approx(float(mask_utils.area(mask_utils.merge(rle))))
        present = {coco.cats[a["category_id"]]["name"] for a in data["annotations"]}
        assert present == set(COCO_FIXTURE_CLASSES)


def test_fixture_split_needs_two_images() -> None:
    with pytest.raises(DatasetError, match="at least 2 images"):
        make_scenes(1, seed=0)


@pytest.mark.detectron2
def test_detectron2_loaders_read_the_fixtures(fixture_root: Path) -> None:
    from detectron2.data.datasets import load_coco_json, load_voc_instances

    voc = load_voc_instances(str(fixture_root / "VOC2007"), "test", list(VOC_FIXTURE_CLASSES))
    scenes = make_scenes(4, seed=1000 * 2007 + 1)  # what write_voc_fixture drew for its second split
    assert len(voc) == 4
    for record, scene in zip(voc, scenes, strict=True):
        boxes = sorted(tuple(round(v) for v in a["bbox"]) for a in record["annotations"])
        assert boxes == sorted(o.box for o in scene.objects)  # Detectron2 undoes VOC's 1-based corners
    coco = load_coco_json(
        str(fixture_root / "coco/annotations/instances_val2017.json"), str(fixture_root / "coco/val2017")
    )
    assert sum(len(r["annotations"]) for r in coco) == 8
    assert all("segmentation" in a for r in coco for a in r["annotations"])
