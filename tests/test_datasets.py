"""Readers of the real dataset layouts, checked against what the fixture writers put on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslbench.cli import main
from sslbench.data import fixtures
from sslbench.data.aircraft import BANNER_HEIGHT
from sslbench.data.registry import DATASETS, build_dataset
from sslbench.data.transforms import eval_transform, lbfgs_transform, train_transform
from sslbench.errors import DatasetError

SPLITS = ("train", "val", "trainval", "test")


def _entries(dataset) -> list[tuple[Path, int]]:
    return list(zip(dataset.paths, dataset.targets, strict=True))


def _check_against_fixture(name: str, fixture: fixtures.Fixture, **options) -> None:
    parts = {s: build_dataset(name, fixture.root, s, **options) for s in SPLITS}
    for split, entries in fixture.splits.items():
        assert _entries(parts[split]) == entries, split
    for part in parts.values():
        assert part.classes == fixture.classes and part.num_classes == len(fixture.classes)
    # train and val partition trainval, and every class keeps training images
    assert sorted(_entries(parts["train"]) + _entries(parts["val"])) == sorted(_entries(parts["trainval"]))
    assert set(parts["train"].targets) == set(range(len(fixture.classes)))


@pytest.mark.parametrize("kind", ["cub200", "aircraft", "inat18", "imagefolder"])
def test_reader_returns_the_images_labels_and_classes_the_fixture_wrote(tmp_path: Path, kind: str) -> None:
    fixture = fixtures.WRITERS[kind](tmp_path, num_classes=5, per_class=6, size=32)
    _check_against_fixture(kind, fixture)


def test_cub_ids_are_one_based_and_greyscale_images_load_as_rgb(tmp_path: Path) -> None:
    fixtures.write_cub(tmp_path, num_classes=3, per_class=3, size=32)
    root = tmp_path / "CUB_200_2011"
    assert (root / "image_class_labels.txt").read_text().splitlines()[0] == "1 1"
    trainval = build_dataset("cub200", root, "trainval")
    grey = [i for i, p in enumerate(trainval.paths) if Image.open(p).mode == "L"]
    assert grey, "the fixture holds a greyscale image"
    image, label = trainval[grey[0]]
    assert image.mode == "RGB" and label == trainval.targets[grey[0]] == 0
    assert trainval.classes[0] == "001.Fixture_Bird_A"


def test_aircraft_keeps_string_ids_and_labels_with_spaces_and_slashes(tmp_path: Path) -> None:
    fixture = fixtures.write_aircraft(tmp_path, num_classes=5, per_class=3, size=32)
    data = fixture.root / "data"
    assert {"Cessna 172", "F/A-18", "Hawk T1"} <= set(fixture.classes)
    first = (data / "images_variant_test.txt").read_text().splitlines()[0]
    image_id, label = first.split(" ", 1)
    assert len(image_id) == 7 and label in fixture.classes
    for level, n in (("family", 5), ("manufacturer", 5)):
        test = build_dataset(f"aircraft-{level}", fixture.root, "test")
        assert test.num_classes == n and len(test) == len(fixture.splits["test"])
    assert DATASETS["aircraft"].headline_metric == "mean_per_class"


def test_aircraft_banner_is_cropped_off(tmp_path: Path) -> None:
    fixture = fixtures.write_aircraft(tmp_path, num_classes=2, per_class=3, size=32)
    test = build_dataset("aircraft", fixture.root, "test")
    with Image.open(test.paths[0]) as raw:
        raw = raw.convert("RGB")
        width, height = raw.size
        loaded = test.load_image(0).convert("RGB")
        assert loaded.size == (width, height - BANNER_HEIGHT) == (48, 32)
        assert np.array_equal(np.asarray(loaded), np.asarray(raw)[: height - BANNER_HEIGHT])


def test_inat18_splits_come_from_the_json_not_the_shared_folders(tmp_path: Path) -> None:
    fixture = fixtures.write_inat18(tmp_path, num_classes=3, per_class=6, size=32)
    trainval = build_dataset("inat18", tmp_path, "trainval")
    test = build_dataset("inat18", tmp_path, "test")
    assert not set(trainval.paths) & set(test.paths)
    # train and val images of a class share its folder, named by the category id = our label
    for part in (trainval, test):
        assert all(int(p.parent.name) == t for p, t in zip(part.paths, part.targets, strict=True))
    assert {p.parent for p in trainval.paths} == {p.parent for p in test.paths}
    assert len(trainval) + len(test) == sum(len(v) for v in fixture.splits.values())


def test_imagefolder_class_list_restricts_and_orders_the_classes(tmp_path: Path) -> None:
    fixture = fixtures.write_imagefolder(tmp_path, num_classes=4, per_class=3, size=32)
    chosen = [fixture.classes[3], fixture.classes[1]]
    class_list = tmp_path / "in100.txt"
    class_list.write_text("\n".join(chosen) + "\n")
    test = build_dataset("imagefolder", tmp_path, "test", class_list=class_list)
    assert test.classes == chosen
    assert [(p.parent.name, t) for p, t in _entries(test)] == [(chosen[0], 0), (chosen[1], 1)]
    class_list.write_text("n99999999\n")
    with pytest.raises(DatasetError, match=r"in100\.txt: classes \['n99999999'\] have no folder"):
        build_dataset("imagefolder", tmp_path, "test", class_list=class_list)


@pytest.mark.parametrize(
    ("kind", "missing"),
    [
        ("cub200", "CUB_200_2011/image_class_labels.txt"),
        ("cub200", "CUB_200_2011/train_test_split.txt"),
        ("aircraft", "fgvc-aircraft-2013b/data/images_variant_trainval.txt"),
        ("aircraft", "fgvc-aircraft-2013b/data/variants.txt"),
        ("inat18", "train2018.json"),
        ("imagefolder", "train"),
    ],
)
def test_missing_annotation_file_is_named_with_the_expected_layout(
    tmp_path: Path, kind: str, missing: str
) -> None:
    fixtures.WRITERS[kind](tmp_path, num_classes=2, per_class=3, size=16)
    target = tmp_path / missing
    if target.is_dir():
        target.rename(tmp_path / "elsewhere")
    else:
        target.unlink()
    with pytest.raises(DatasetError, match=rf"(?s){Path(missing).name} not found\. Expected the layout"):
        build_dataset(kind, tmp_path, "trainval")


def test_aircraft_label_missing_from_class_list_is_an_error(tmp_path: Path) -> None:
    fixture = fixtures.write_aircraft(tmp_path, num_classes=2, per_class=3, size=16)
    variants = fixture.root / "data" / "variants.txt"
    variants.write_text(variants.read_text().splitlines()[0] + "\n")
    with pytest.raises(DatasetError, match=r"images_variant_test\.txt: labels .* are not in variants\.txt"):
        build_dataset("aircraft", fixture.root, "test")


def test_build_dataset_rejects_options_a_dataset_does_not_take(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"cub200: unknown option\(s\) class_list \(accepted: none\)"):
        build_dataset("cub200", tmp_path, "test", class_list="x.txt")


def test_imagefolder_root_may_be_given_as_its_train_folder(tmp_path: Path) -> None:
    fixture = fixtures.write_imagefolder(tmp_path, num_classes=3, per_class=5, size=16)
    for split in ("trainval", "train", "val", "test"):
        from_root = build_dataset("imagefolder", fixture.root, split)
        from_train = build_dataset("imagefolder", fixture.root / "train", split)
        assert _entries(from_train) == _entries(from_root) and from_train.classes == from_root.classes
    (tmp_path / "elsewhere" / "train").mkdir(parents=True)  # a train/ folder with no classes: still an error
    with pytest.raises(DatasetError, match="no class folders"):
        build_dataset("imagefolder", tmp_path / "elsewhere" / "train", "trainval")


def test_make_fixture_command_writes_a_layout_the_reader_accepts(tmp_path: Path, capsys) -> None:
    args = ["make-fixture", "aircraft", "--out", str(tmp_path), "--classes", "3", "--per-class", "3"]
    assert main(args) == 0
    assert "--dataset aircraft --root" in capsys.readouterr().out
    assert build_dataset("aircraft", tmp_path, "trainval").num_classes == 3


def test_protocol_transforms_keep_the_256_to_224_ratio_and_output_size() -> None:
    image = Image.new("RGB", (80, 60), (200, 30, 30))
    assert "size=256" in repr(eval_transform(224)) and "size=224" in repr(lbfgs_transform(224))
    for transform in (eval_transform(32), lbfgs_transform(32), train_transform(32)):
        out = transform(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    # ImageNet normalisation: the red channel of (200, 30, 30) maps to (200/255 - 0.485) / 0.229
    assert eval_transform(32)(image)[0].mean().item() == pytest.approx((200 / 255 - 0.485) / 0.229, abs=1e-3)
