"""Issue 14's catalogue, through the command: every bad input gets one line naming the file or option
and its exit status, nothing silently wrong is accepted, and earlier results stay byte for byte."""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_input_helpers import TINY, refused, run, small_checkpoint, snapshot
from PIL import Image

from sslbench.cli import main
from sslbench.data import fixtures
from sslbench.data.registry import build_dataset
from sslbench.errors import ConfigError
from sslbench.evaluate.features import CACHE_VERSION, FeatureCache, content_sha256
from sslbench.run_folder import check_backbone_source
from sslbench.tools.records import read_record


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pth")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageFolder: 2 classes x 4 images (trainval 3 + test 1 per class), 16 px."""
    return fixtures.write_imagefolder(
        tmp_path_factory.mktemp("data"), num_classes=2, per_class=4, size=16
    ).root


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, ckpt: Path, data: Path) -> Path:
    """A results folder holding one finished kNN run (``knn/result.json``) and its feature cache."""
    results = tmp_path_factory.mktemp("results")
    argv = ["knn", str(ckpt), "--dataset", "imagefolder", "--root", str(data), "--out", str(results / "knn")]
    assert main([*argv, *TINY, "--knn", "3:0.07", "--primary", "3:0.07"]) == 0
    return results


def knn_argv(ckpt: Path, root: Path, out: Path, dataset: str = "imagefolder") -> list[str]:
    return ["knn", str(ckpt), "--dataset", dataset, "--root", str(root), "--out", str(out), *TINY,
            "--knn", "3:0.07", "--primary", "3:0.07"]  # fmt: skip


# ---------------------------------------------------------------- data loss


def test_make_fixture_refuses_a_folder_holding_a_dataset_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "cub"
    argv = [
        "make-fixture",
        "cub200",
        "--out",
        str(target),
        "--classes",
        "2",
        "--per-class",
        "3",
        "--image-size",
        "16",
    ]
    assert run(capsys, argv)[0] == 0
    before = snapshot(target)
    refused(capsys, argv, str(target), "CUB_200_2011", "--overwrite")
    refused(capsys, ["make-fixture", "imagefolder", "--out", str(target)], "not empty")
    assert snapshot(target) == before
    assert run(capsys, [*argv, "--overwrite"])[0] == 0


def test_knn_and_linear_refuse_an_out_holding_a_record_and_keep_it(
    finished: Path, ckpt: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(finished)
    refused(
        capsys, knn_argv(ckpt, data, finished / "knn"), str(finished / "knn"), "result.json", "--overwrite"
    )
    linear = ["linear", str(ckpt), "--dataset", "imagefolder", "--root", str(data), "--out",
              str(finished / "knn"), "--protocol", "lbfgs", *TINY]  # fmt: skip
    refused(capsys, linear, "result.json", "--overwrite")
    refused(capsys, ["convert", str(ckpt), "--to", "torchvision", "--out", str(ckpt)], "--out", str(ckpt))
    assert snapshot(finished) == before


def test_finetune_and_pretrain_refuse_a_previous_run_without_resume(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ft" / "grid").mkdir(parents=True)
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "checkpoint_last.pth").write_bytes(b"a previous run")
    before = snapshot(tmp_path)
    finetune = ["finetune", str(ckpt), "--dataset", "digits", "--out", str(tmp_path / "ft")]
    refused(capsys, finetune, str(tmp_path / "ft"), "grid", "--resume")
    refused(
        capsys,
        ["pretrain", "--config", "mocov2_tiny", f"out={tmp_path / 'pt'}"],
        "checkpoint_last.pth",
        "--resume",
    )
    assert snapshot(tmp_path) == before


def test_a_failed_runs_record_may_be_replaced_without_overwrite(
    tmp_path: Path, ckpt: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "knn"
    out.mkdir()
    (out / "result.json").write_text(json.dumps({"status": "failed", "error": "killed"}))
    assert run(capsys, knn_argv(ckpt, data, out))[0] == 0
    assert read_record(out / "result.json").status == "ok"


# ---------------------------------------------------------------- options refused while parsing

BAD_OPTIONS = [
    ("knn", ["--knn", "0:0.07"], "argument --knn"),
    ("knn", ["--knn", "20:0"], "argument --knn"),
    ("knn", ["--primary", "20:nan"], "argument --primary"),
    ("knn", ["--chunk-size", "0"], "argument --chunk-size"),
    ("knn", ["--image-size", "100000"], "argument --image-size"),
    ("knn", ["--batch-size", "-1"], "argument --batch-size"),
    ("linear", ["--protocol", "sgd", "--crop-scale", "2"], "argument --crop-scale"),
    ("linear", ["--protocol", "lbfgs", "--c-grid-size", "0"], "argument --c-grid-size"),
    ("linear", ["--protocol", "lbfgs", "--max-iter", "0"], "argument --max-iter"),
    ("linear", ["--protocol", "sgd", "--epochs", "0"], "argument --epochs"),
    ("linear", ["--protocol", "sgd", "--lr", "nan"], "argument --lr"),
    ("linear", ["--protocol", "sgd", "--lr", "inf"], "argument --lr"),
    ("linear", ["--protocol", "sgd", "--weight-decay", "-1"], "argument --weight-decay"),
    ("linear", ["--protocol", "sgd", "--milestones", "0.5", "7"], "argument --milestones"),
]


@pytest.mark.parametrize(("command", "options", "named"), BAD_OPTIONS)
def test_bad_option_values_are_refused_naming_the_option(
    command: str, options: list[str], named: str, finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(finished)
    argv = [command, "unused.pth", "--dataset", "digits", "--out", str(finished / "knn"), *options]
    refused(capsys, argv, named)
    assert snapshot(finished) == before


def test_fixture_and_finetune_sizes_are_refused_before_allocating(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(
        capsys,
        ["make-fixture", "cub200", "--out", str(tmp_path / "f"), "--image-size", "100000"],
        "--image-size",
    )
    refused(capsys, ["make-fixture", "cub200", "--out", str(tmp_path / "f"), "--classes", "0"], "--classes")
    finetune = ["finetune", str(ckpt), "--dataset", "digits", "--out", str(tmp_path / "ft")]
    refused(capsys, [*finetune, "--image-size", "100000"], "--image-size")
    refused(capsys, [*finetune, "--lr", "nan", "--wd", "0"], "lr [nan]")
    assert not (tmp_path / "f").exists() and not (tmp_path / "ft").exists()


# ---------------------------------------------------------------- silently wrong


def _tamper(path: Path, change, rehash: bool) -> None:
    """Rewrite a cache file with ``change`` applied; ``rehash``: with a content hash matching the
    change, so that only the row-count and label checks can catch it."""
    stored = torch.load(path, weights_only=True)
    stored["features"], stored["labels"] = change(stored["features"], stored["labels"])
    if rehash:
        stored["sha256"] = content_sha256(stored["features"], stored["labels"])
    torch.save(stored, path)


@pytest.mark.parametrize(
    ("change", "rehash", "why"),
    [
        (lambda f, y: (f, torch.roll(y, 1)), True, "labels differ from the dataset's targets"),
        (lambda f, y: (f[:3], y[:3]), True, "3 rows, but the split has 6 samples"),
        (lambda f, y: (f + 0.5, y), False, "do not match the sha256"),
    ],
)
def test_a_feature_cache_that_does_not_belong_is_recomputed_with_a_warning(
    change, rehash: bool, why: str, tmp_path: Path, ckpt: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, knn_argv(ckpt, data, tmp_path / "a"))[0] == 0
    reference = read_record(tmp_path / "a" / "result.json")
    cache = FeatureCache(tmp_path / ".feature_cache")
    (trainval,) = [p for p in cache.directory.iterdir() if "-trainval-" in p.name]
    _tamper(trainval, change, rehash)
    code, _, err = run(capsys, knn_argv(ckpt, data, tmp_path / "b"))
    assert code == 0 and f"feature cache: ignoring {trainval}" in err and why in err
    again = read_record(tmp_path / "b" / "result.json")
    assert again.metrics == reference.metrics and again.dataset["num_train"] == 6
    assert again.extra["features"]["trainval"]["cache"] == "computed"
    assert torch.load(trainval, weights_only=True)["version"] == CACHE_VERSION


def test_a_root_given_to_built_in_digits_is_refused(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pt"
    refused(capsys, ["pretrain", "--config", "mocov2_tiny", "data.root=/nonexistent", f"out={out}"],
            "digits", "data.root = /nonexistent")  # fmt: skip
    assert not out.exists()
    refused(capsys, knn_argv(ckpt, Path("/nonexistent"), out, "digits"), "--root", "built in")
    assert not (out / "result.json").exists()


def test_a_16_bit_png_keeps_its_grey_levels(tmp_path: Path) -> None:
    root = fixtures.write_imagefolder(tmp_path, num_classes=1, per_class=3, size=16).root
    (path,) = [p for p in (root / "val").rglob("*.JPEG")]
    levels = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 250  # 0 .. 63750
    Image.fromarray(levels).save(path.with_suffix(".png"))
    path.unlink()
    image, _ = build_dataset("imagefolder", root, "test")[0]
    expected = np.round(levels.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(np.asarray(image)[..., 0], expected)  # not all white


def _flip_a_weight_bit(src: Path, dst: Path) -> None:
    """Flip one bit inside the bytes of the first weight tensor stored in ``src`` (a torch zip)."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26 : member.header_offset + 30])
    data[member.header_offset + 30 + name_len + extra_len + 100] ^= 0x40
    dst.write_bytes(bytes(data))
    assert torch.load(dst, weights_only=True).keys() == torch.load(src, weights_only=True).keys()


def test_damaged_or_non_finite_checkpoints_are_refused(
    tmp_path: Path, ckpt: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flipped = tmp_path / "flipped.pth"
    _flip_a_weight_bit(ckpt, flipped)
    refused(capsys, ["inspect", str(flipped)], str(flipped), "CRC-32")
    state = torch.load(ckpt, weights_only=True)
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    refused(capsys, knn_argv(tmp_path / "nan.pth", data, tmp_path / "o"), "nan.pth", "layer1.0.conv1.weight")
    state = torch.load(ckpt, weights_only=True)
    state["conv1.weight"] = state["conv1.weight"].to(torch.complex64)
    torch.save(state, tmp_path / "complex.pth")
    refused(capsys, ["inspect", str(tmp_path / "complex.pth")], "complex-valued", "conv1.weight")
    assert not (tmp_path / "o" / "result.json").exists()


def test_detect_resume_with_another_checkpoint_is_refused(tmp_path: Path) -> None:
    first = {"sha256": "a" * 64, "path": "first.pth"}
    check_backbone_source(tmp_path, first, resume=False)
    check_backbone_source(tmp_path, first, resume=True)  # the same checkpoint continues
    with pytest.raises(ConfigError, match=r"--resume: .* started from checkpoint sha256 aaaaaaaaaaaa"):
        check_backbone_source(tmp_path, {"sha256": "b" * 64, "path": "second.pth"}, resume=True)
    assert json.loads((tmp_path / "backbone_source.json").read_text())["sha256"] == "a" * 64


# ---------------------------------------------------------------- tracebacks where a line belongs


@pytest.mark.parametrize(
    ("damage", "workers"),
    [("garbage", "0"), ("empty", "0"), ("truncated", "0"), ("truncated", "1")],
)
def test_an_unreadable_image_names_the_file_and_index(
    damage: str, workers: str, tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fixtures.write_imagefolder(tmp_path / "d", num_classes=2, per_class=3, size=16).root
    (bad, *_) = sorted((root / "train").rglob("*.JPEG"))
    content = bad.read_bytes()
    bad.write_bytes(
        {"garbage": b"not a jpeg" * 10, "empty": b"", "truncated": content[: len(content) // 2]}[damage]
    )
    argv = [*knn_argv(ckpt, root, tmp_path / "o", "imagefolder"), "--no-cache", "--workers", workers]
    refused(capsys, argv, str(bad), "imagefolder/trainval index 0")


def test_an_image_above_the_decompression_bomb_limit_is_refused(
    tmp_path: Path,
    ckpt: Path,
    data: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16 x 16 = 256 pixels: over the limit
    refused(capsys, [*knn_argv(ckpt, data, tmp_path / "o"), "--no-cache"], "decompression bomb")


def test_malformed_dataset_files_are_one_line(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cub = fixtures.write_cub(tmp_path / "cub", num_classes=2, per_class=3, size=16).root
    classes = cub / "classes.txt"
    classes.write_bytes(classes.read_text().replace("Fixture_Bird_B", "Fixture_Bird_\xe9").encode("latin-1"))
    refused(capsys, knn_argv(ckpt, cub, tmp_path / "o", "cub200"), f"{classes}:2", "not UTF-8")

    inat = fixtures.write_inat18(tmp_path / "inat", num_classes=2, per_class=3, size=16).root
    train = inat / "train2018.json"
    for shape, named in (([1, 2], "found a list"), ({"images": ["a"], "annotations": [], "categories": []},
                                                    "entries of images")):  # fmt: skip
        train.write_text(json.dumps(shape))
        refused(capsys, knn_argv(ckpt, inat, tmp_path / "o", "inat18"), str(train), named)
    assert not (tmp_path / "o" / "result.json").exists()


@pytest.mark.parametrize(
    ("text", "named"),
    [("epochs: [1\n", ".yaml:2: not valid YAML"), ("- 1\n- 2\n", "expected a mapping"), ("", "no settings")],
)
def test_yaml_that_is_broken_or_not_a_mapping_is_one_line(
    text: str, named: str, tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    refused(capsys, ["pretrain", "--config", str(config), f"out={tmp_path / 'pt'}"], str(config), named)
    refused(capsys, ["suite", str(ckpt), "--suite", str(config), "--out", str(tmp_path / "s")], named)
    refused(capsys, ["finetune", str(ckpt), "--dataset", "digits", "--config", str(config), "--out",
                     str(tmp_path / "ft")], named)  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]


def test_a_corrupt_labels_file_stops_the_suite_with_one_line(
    tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "labels.json").write_text("{not json")
    argv = ["suite", str(ckpt), "--suite", "quick", "--out", str(tmp_path / "s"), "--labels", "mine"]
    refused(capsys, argv, "labels.json", "not a readable labels file")


def test_an_output_folder_that_cannot_be_written_is_one_line(
    tmp_path: Path, ckpt: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    refused(capsys, knn_argv(ckpt, data, blocker / "out"), str(blocker), code=74)


def test_a_full_disk_is_one_line_and_keeps_the_earlier_record(tmp_path: Path, ckpt: Path, data: Path) -> None:
    """A file-size limit makes every write past 4 KiB fail (EFBIG), as a full disk does (ENOSPC)."""
    out = tmp_path / "knn"
    assert main(knn_argv(ckpt, data, out)) == 0
    before = snapshot(tmp_path)
    argv = [sys.executable, "-m", "sslbench", *knn_argv(ckpt, data, out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = subprocess.run(
        [*argv, "--overwrite", "--cache-dir", str(tmp_path / "fresh-cache")],
        env=env, capture_output=True, text=True, preexec_fn=limit_file_size, check=False,
    )  # fmt: skip
    assert done.returncode == 74, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("sslbench knn: error: ") and "fresh-cache" in last and "Traceback" not in done.stderr
    )
    assert snapshot(tmp_path) == before


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("sslbench.run_folder.refuse_non_empty", bug)
    with pytest.raises(ZeroDivisionError):
        main(["make-fixture", "cub200", "--out", str(tmp_path / "f")])


@pytest.mark.detectron2
def test_detect_resume_with_another_checkpoint_is_refused_through_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from checkpoint_sources import SOURCES, resnet

    from sslbench.checkpoints.readers import read_checkpoint
    from sslbench.data.detection_fixtures import write_detection_fixtures

    write_detection_fixtures(tmp_path / "datasets" / "sslbench_fixture", images=2)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    model = resnet("resnet50", seed=1)
    first, second = tmp_path / "first.pth", tmp_path / "second.pth"
    torch.save(model.state_dict(), first)
    torch.save(SOURCES["moco_v2"](model), second)  # the same weights in MoCo's file: another sha256
    out = tmp_path / "voc"
    # what the first run left before it was stopped: its converted backbone and where it came from
    assert main(["convert", str(first), "--to", "detectron2", "--out", str(out / "backbone.pkl")]) == 0
    check_backbone_source(out, read_checkpoint(first).describe(), resume=False)
    before = snapshot(out)
    datasets = [
        *("DATASETS.TRAIN", "('sslbench_fixture_voc_2007_trainval',)"),
        *("DATASETS.TEST", "('sslbench_fixture_voc_2007_test',)", "MODEL.ROI_HEADS.NUM_CLASSES", "4"),
    ]
    argv = ["detect", str(second), "--task", "voc", "--out", str(out), "--resume", *datasets]
    refused(capsys, argv, "--resume", "started from checkpoint sha256", str(second))
    assert snapshot(out) == before
