"""Finding detection datasets the way Detectron2 does, with errors that name the expected layout.

Detectron2 registers its built-in names (``voc_2007_trainval``, ``coco_2017_train``, ...) when
``detectron2.data`` is imported, under ``$DETECTRON2_DATASETS`` (default ``./datasets``). We add
the fixture datasets of :mod:`sslbench.data.detection_fixtures` under names of their own
(``sslbench_fixture_*``, in ``$DETECTRON2_DATASETS/sslbench_fixture``), because Detectron2's
built-in names carry the full 20 VOC / 80 COCO class lists the fixtures do not have.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc

from sslbench.data.detection_fixtures import COCO_FIXTURE_CLASSES, VOC_FIXTURE_CLASSES
from sslbench.errors import ConfigError, DatasetError

FIXTURE_FOLDER = "sslbench_fixture"
VOC_LAYOUT = (
    "VOC20{07,12}/Annotations/<id>.xml, VOC20{07,12}/ImageSets/Main/<split>.txt, "
    "VOC20{07,12}/JPEGImages/<id>.jpg"
)
COCO_LAYOUT = "coco/{train2017,val2017}/<image>.jpg, coco/annotations/instances_{train2017,val2017}.json"


def datasets_root() -> Path:
    """``$DETECTRON2_DATASETS``, default ``./datasets``: where Detectron2 looks for its datasets."""
    return Path(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


@dataclass(frozen=True)
class FixtureDataset:
    name: str
    kind: str  # "voc" | "coco"
    split: str  # VOC image set, or COCO's train2017 / val2017
    year: int

    def source(self) -> Path:
        """The VOC folder or the COCO annotation file, under ``$DETECTRON2_DATASETS/sslbench_fixture``."""
        root = datasets_root() / FIXTURE_FOLDER
        if self.kind == "voc":
            return root / f"VOC{self.year}"
        return root / "coco" / "annotations" / f"instances_{self.split}.json"


FIXTURE_DATASETS = (
    FixtureDataset("sslbench_fixture_voc_2007_trainval", "voc", "trainval", 2007),
    FixtureDataset("sslbench_fixture_voc_2012_trainval", "voc", "trainval", 2012),
    FixtureDataset("sslbench_fixture_voc_2007_test", "voc", "test", 2007),
    FixtureDataset("sslbench_fixture_coco_2017_train", "coco", "train2017", 2017),
    FixtureDataset("sslbench_fixture_coco_2017_val", "coco", "val2017", 2017),
)


def register_fixture_datasets() -> list[str]:
    """Register (or re-point, if ``$DETECTRON2_DATASETS`` changed) the fixture datasets; lazy, cheap."""
    for fixture in FIXTURE_DATASETS:
        source = str(fixture.source())
        if fixture.name in DatasetCatalog.list():
            meta = MetadataCatalog.get(fixture.name)
            if source in (meta.get("dirname"), meta.get("json_file")):
                continue
            DatasetCatalog.remove(fixture.name)
            MetadataCatalog.remove(fixture.name)
        if fixture.kind == "voc":
            register_pascal_voc(fixture.name, source, fixture.split, fixture.year, list(VOC_FIXTURE_CLASSES))
            MetadataCatalog.get(fixture.name).evaluator_type = "pascal_voc"  # as Detectron2's builtin.py
        else:
            image_root = fixture.source().parent.parent / fixture.split
            # Declared up front (load_coco_json derives the same list) so NUM_CLASSES can be checked
            # before any json is read.
            meta = {"thing_classes": list(COCO_FIXTURE_CLASSES)}
            register_coco_instances(fixture.name, meta, source, str(image_root))
    return [fixture.name for fixture in FIXTURE_DATASETS]


def _required_paths(name: str) -> tuple[list[Path], str]:
    meta = MetadataCatalog.get(name)
    kind = meta.get("evaluator_type")
    if kind == "pascal_voc":
        voc = Path(meta.dirname)
        paths = [voc / "Annotations", voc / "JPEGImages", voc / "ImageSets" / "Main" / f"{meta.split}.txt"]
        return paths, VOC_LAYOUT
    if kind == "coco":
        return [Path(meta.json_file), Path(meta.image_root)], COCO_LAYOUT
    raise ConfigError(
        f"dataset {name!r} is registered with evaluator_type {kind!r}; sslbench detect evaluates "
        "Pascal VOC ('pascal_voc') and COCO ('coco') datasets"
    )


def check_datasets(train: Iterable[str], test: Iterable[str], num_classes: int) -> None:
    """Every dataset is registered, on disk in its layout, and has ``num_classes`` classes."""
    known = DatasetCatalog.list()
    for name in (*train, *test):
        if name not in known:
            examples = [n for n in known if n.startswith(("voc_20", "coco_2017", "sslbench_fixture"))]
            raise ConfigError(
                f"dataset {name!r} is not registered with Detectron2; known names include "
                f"{', '.join(sorted(examples))}"
            )
        paths, layout = _required_paths(name)
        for path in paths:
            if not path.exists():
                raise DatasetError(
                    f"dataset {name!r}: {path} does not exist. Detectron2 reads its datasets under "
                    f"$DETECTRON2_DATASETS (now {datasets_root()}; set it before the run) in the layout "
                    f"{layout}"
                )
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != num_classes:
            raise ConfigError(
                f"dataset {name!r} has {len(classes)} classes but MODEL.ROI_HEADS.NUM_CLASSES is "
                f"{num_classes}; pass MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}"
            )
