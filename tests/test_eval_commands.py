"""Feature extraction and its cache, and ``sslbench knn`` / ``sslbench linear`` end to end on fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_sources import resnet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sslbench.cli import main
from sslbench.data import fixtures
from sslbench.data.registry import build_dataset
from sslbench.data.transforms import describe_transform, eval_transform, lbfgs_transform
from sslbench.evaluate import features as features_module
from sslbench.evaluate.features import FeatureCache, FeatureKey, extract_features
from sslbench.tools.records import read_record

COMMON = ["--image-size", "32", "--batch-size", "16", "--workers", "0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision ResNet-18 state dict, as ``torch.save(model.state_dict())`` writes it."""
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    torch.save(resnet("resnet18", seed=0).state_dict(), path)
    return path


def test_extract_features_equals_the_model_forward_in_loader_order() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    images, labels = torch.randn(10, 3, 9, 9), torch.arange(10) % 3
    features, got_labels = extract_features(
        model, DataLoader(TensorDataset(images, labels), batch_size=4), "cpu"
    )
    with torch.no_grad():
        expected = model.eval()(images)
    assert features.dtype == torch.float32 and features.shape == (10, 4)
    torch.testing.assert_close(features, expected)
    assert torch.equal(got_labels, labels)


def test_feature_cache_keys_on_checkpoint_split_and_transform(tmp_path: Path) -> None:
    fixture = fixtures.write_cub(tmp_path, num_classes=2, per_class=3, size=16)
    test = build_dataset("cub200", fixture.root, "test")
    trainval = build_dataset("cub200", fixture.root, "trainval")
    knn_t, lbfgs_t = describe_transform(eval_transform(32)), describe_transform(lbfgs_transform(32))
    base = FeatureKey.of("a" * 64, test, fixture.root, {}, knn_t, "fp32")
    others = [
        FeatureKey.of("b" * 64, test, fixture.root, {}, knn_t, "fp32"),
        FeatureKey.of("a" * 64, trainval, fixture.root, {}, knn_t, "fp32"),
        FeatureKey.of("a" * 64, test, fixture.root, {}, lbfgs_t, "fp32"),
        FeatureKey.of("a" * 64, test, tmp_path / "elsewhere", {}, knn_t, "fp32"),
    ]
    cache = FeatureCache(tmp_path / "cache")
    assert len({cache.path(k) for k in [base, *others]}) == 5
    cache.save(base, torch.ones(2, 3), torch.zeros(2, dtype=torch.long))
    features, _ = cache.load(base)
    assert torch.equal(features, torch.ones(2, 3))
    assert all(cache.load(k) is None for k in others)


def _forbid_extraction(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("features were extracted although the cache holds them")

    monkeypatch.setattr(features_module, "extract_features", fail)


def test_knn_command_writes_a_record_and_reuses_cached_features(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    fixture = fixtures.write_cub(tmp_path / "data", num_classes=4, per_class=6, size=32)
    args = ["knn", str(checkpoint), "--dataset", "cub200", "--root", str(fixture.root), *COMMON]
    assert main([*args, "--out", str(tmp_path / "runs" / "knn1")]) == 0
    first = read_record(tmp_path / "runs" / "knn1" / "result.json")
    assert first.task == "knn" and first.protocol["name"] == "knn"
    assert first.protocol["settings"]["primary"] == [20, 0.07]
    assert first.dataset | {"root": None} == {
        "name": "cub200",
        "root": None,
        "split": "test",
        "train_split": "trainval",
        "num_classes": 4,
        "num_train": 16,
        "num_test": 8,
        "options": {},
    }
    assert first.checkpoint["sha256"] and first.checkpoint["format"] == "torchvision"
    assert set(first.metrics) == {"top1", "top5", "mean_per_class"}
    assert [(r["k"], r["T"], r["k_used"]) for r in first.extra["knn"]] == [
        (10, 0.07, 10),
        (20, 0.07, 16),
        (100, 0.07, 16),
        (200, 0.07, 16),
        (200, 0.1, 16),
    ]
    assert {f["cache"] for f in first.extra["features"].values()} == {"computed"}
    assert Path(first.extra["features"]["test"]["path"]).parent == tmp_path / "runs" / ".feature_cache"

    _forbid_extraction(monkeypatch)
    assert main([*args, "--out", str(tmp_path / "runs" / "knn2")]) == 0
    second = read_record(tmp_path / "runs" / "knn2" / "result.json")
    assert {f["cache"] for f in second.extra["features"].values()} == {"hit"}
    assert second.metrics == first.metrics and second.extra["knn"] == first.extra["knn"]
    assert "k=20 T=0.07" in capsys.readouterr().out


def test_linear_lbfgs_command_writes_a_record_and_reuses_cached_features(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixture = fixtures.write_aircraft(tmp_path / "data", num_classes=4, per_class=6, size=32)
    cache = tmp_path / "cache"
    args = [
        "linear",
        str(checkpoint),
        "--dataset",
        "aircraft",
        "--root",
        str(fixture.root),
        "--protocol",
        "lbfgs",
        "--c-grid-size",
        "4",
        "--cache-dir",
        str(cache),
        *COMMON,
    ]
    assert main([*args, "--out", str(tmp_path / "lin1")]) == 0
    first = read_record(tmp_path / "lin1" / "result.json")
    settings = first.protocol["settings"]
    assert first.task == "linear" and first.protocol["name"] == "linear-lbfgs"
    assert settings["select_metric"] == "mean_per_class" and settings["c_grid_size"] == 4
    assert len(first.extra["c_sweep"]) == 4 and settings["best_C"] in [r["C"] for r in first.extra["c_sweep"]]
    # ssl-transfer's grid arithmetic: float32 wd = 10**(-6 + 11k/3), C = 1 / wd in float64
    assert [r["C"] for r in first.extra["c_sweep"]] == [
        1.0 / float(np.float32(10.0 ** (-6 + 11 * k / 3))) for k in range(4)
    ]
    assert "float32" in settings["c_grid_arithmetic"]
    assert first.dataset["val_split"] == "official"  # FGVC-Aircraft ships its val split
    assert first.dataset["num_classes"] == 4 and first.dataset["num_train"] == 16
    assert set(first.extra["features"]) == {"train", "val", "trainval", "test"}
    assert len(list(cache.glob("aircraft-*.pt"))) == 4

    _forbid_extraction(monkeypatch)
    assert main([*args, "--out", str(tmp_path / "lin2")]) == 0
    second = read_record(tmp_path / "lin2" / "result.json")
    assert {f["cache"] for f in second.extra["features"].values()} == {"hit"}
    assert second.metrics == first.metrics


def test_linear_sgd_command_trains_a_head_with_the_backbone_unchanged(
    checkpoint: Path, tmp_path: Path
) -> None:
    fixtures.write_imagefolder(tmp_path / "in", num_classes=3, per_class=6, size=32)
    class_list = tmp_path / "classes.txt"
    class_list.write_text("n01440801\nn01440764\n")
    out = tmp_path / "sgd"
    args = [
        "linear",
        str(checkpoint),
        "--dataset",
        "imagefolder",
        "--root",
        str(tmp_path / "in"),
        "--class-list",
        str(class_list),
        "--protocol",
        "sgd",
        "--epochs",
        "2",
        "--lr",
        "0.1",
        "--out",
        str(out),
        *COMMON,
    ]
    assert main(args) == 0
    record = read_record(out / "result.json")
    assert record.protocol["name"] == "linear-sgd" and record.extra["sanity_check"] == "backbone unchanged"
    assert record.dataset["num_classes"] == 2 and record.dataset["options"] == {"class_list": str(class_list)}
    assert record.protocol["settings"]["milestone_epochs"] == [1, 2] and len(record.extra["history"]) == 2
    assert (out / "linear_state.pth").is_file()
    # a rerun finds every epoch done and only re-scores the head
    assert main(args) == 0
    assert read_record(out / "result.json").extra["resumed_from_epoch"] == 2


def test_knn_command_with_a_wrong_root_exits_2_naming_the_missing_file(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    args = [
        "knn",
        str(checkpoint),
        "--dataset",
        "cub200",
        "--root",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, *COMMON]) == 2
    err = capsys.readouterr().err
    assert "images.txt not found" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "result.json").exists()


@pytest.mark.gpu
def test_cuda_extraction_with_bf16_autocast_stays_close_to_fp32_cpu() -> None:
    torch.manual_seed(0)
    model = resnet("resnet18", seed=0)
    model.fc = nn.Identity()
    loader = DataLoader(TensorDataset(torch.randn(8, 3, 64, 64), torch.arange(8)), batch_size=4)
    cpu, _ = extract_features(model, loader, "cpu", progress=False)
    gpu, labels = extract_features(model, loader, "cuda", progress=False)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32 and torch.equal(labels, torch.arange(8))
    cosine = torch.nn.functional.cosine_similarity(cpu, gpu, dim=1)
    assert bool((cosine > 0.99).all())
