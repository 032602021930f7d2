"""``sslbench detect`` trains and evaluates through Detectron2 on the VOC and COCO fixtures, on CPU.

Runs are 2 iterations at 64 px with a handful of proposals and RoIs: they check the wiring (our
head, the converted weights, Detectron2's trainer, PreciseBN, evaluators, records), not accuracy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from checkpoint_sources import SOURCES, backbone_of, resnet

from sslbench.cli import main
from sslbench.data.detection_fixtures import write_detection_fixtures

pytestmark = pytest.mark.detectron2

SMALL = [  # tiny inputs, few proposals and RoIs, 2 iterations, PreciseBN over 1 batch
    *("SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1"),
    *("INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "112"),
    *("INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "112"),
    *("MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "16"),
    *("MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "8"),
    *("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "8", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "6"),
    *("TEST.PRECISE_BN.NUM_ITER", "1", "DATALOADER.NUM_WORKERS", "0", "MODEL.ROI_HEADS.NUM_CLASSES", "4"),
]
VOC = [
    *("DATASETS.TRAIN", "('sslbench_fixture_voc_2007_trainval', 'sslbench_fixture_voc_2012_trainval')"),
    *("DATASETS.TEST", "('sslbench_fixture_voc_2007_test',)"),
]
COCO = [
    *("DATASETS.TRAIN", "('sslbench_fixture_coco_2017_train',)"),
    *("DATASETS.TEST", "('sslbench_fixture_coco_2017_val',)"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("detection")
    write_detection_fixtures(root / "datasets" / "sslbench_fixture", images=2)
    model = resnet("resnet50", seed=1)
    torch.save(SOURCES["moco_v2"](model), root / "moco_v2.pth")
    return {
        "root": root,
        "datasets": root / "datasets",
        "ckpt": root / "moco_v2.pth",
        "backbone": backbone_of(model),
    }


@pytest.fixture
def datasets(setup: dict, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DETECTRON2_DATASETS", str(setup["datasets"]))
    return setup["datasets"]


def _finite_metrics(record: dict, names: list[str]) -> None:
    assert record["status"] == "ok" and record["task"] == "detection"
    assert sorted(record["metrics"]) == sorted(names)
    assert all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in record["metrics"].values())


def test_voc_run_evaluates_with_voc_evaluator_and_writes_record(
    setup: dict, datasets: Path, tmp_path: Path
) -> None:
    out = tmp_path / "voc"
    assert main(["detect", str(setup["ckpt"]), "--task", "voc", "--out", str(out), *VOC, *SMALL]) == 0
    record = json.loads((out / "seed0" / "result.json").read_text())
    _finite_metrics(record, ["AP", "AP50", "AP75"])
    settings = record["protocol"]["settings"]
    assert settings["roi_heads"] == "Res5ROIHeadsExtraNorm" and settings["norm"] == "BN"  # plain BN on CPU
    assert (
        record["dataset"]["name"] == "sslbench_fixture_voc_2007_test" and record["dataset"]["split"] == "test"
    )
    assert record["checkpoint"]["format"] == "moco" and record["seed"] == 0

    # A finished seed is not trained again by accident, and --resume leaves it as it is.
    assert main(["detect", str(setup["ckpt"]), "--task", "voc", "--out", str(out), *VOC, *SMALL]) == 2
    assert (
        main(["detect", str(setup["ckpt"]), "--task", "voc", "--out", str(out), "--resume", *VOC, *SMALL])
        == 0
    )
    assert json.loads((out / "seed0" / "result.json").read_text())["finished_at"] == record["finished_at"]

    # Interrupted after its last checkpoint: --resume loads model_final.pth and only evaluates.
    (out / "seed0" / "result.json").unlink()
    assert (
        main(["detect", str(setup["ckpt"]), "--task", "voc", "--out", str(out), "--resume", *VOC, *SMALL])
        == 0
    )
    resumed = json.loads((out / "seed0" / "result.json").read_text())
    assert resumed["metrics"] == record["metrics"]  # same weights, same deterministic evaluation
    assert f"Loading from {out / 'seed0' / 'model_final.pth'}" in (out / "seed0" / "log.txt").read_text()


def test_coco_run_reports_box_and_mask_ap_from_coco_evaluator(
    setup: dict, datasets: Path, tmp_path: Path
) -> None:
    out = tmp_path / "coco"
    assert main(["detect", str(setup["ckpt"]), "--task", "coco-1x", "--out", str(out), *COCO, *SMALL]) == 0
    record = json.loads((out / "seed0" / "result.json").read_text())
    names = [f"{k}_{m}" for k in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    defined = [n for n in names if n not in record["extra"]["undefined_metrics"]]
    _finite_metrics(record, defined)
    assert {"bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"} <= set(defined)
    assert (out / "seed0" / "inference" / "coco_instances_results.json").is_file()  # COCOEvaluator's output
    assert record["protocol"]["settings"]["mask_on"] is True
    per_class = {f"{k}/AP-{c}" for k in ("bbox", "segm") for c in ("cat", "horse", "motorcycle", "person")}
    assert set(record["extra"]["per_class_AP"]) == per_class


def test_training_starts_from_the_converted_backbone(setup: dict, datasets: Path, tmp_path: Path) -> None:
    from sslbench.checkpoints import read_checkpoint
    from sslbench.checkpoints.writers import write_detectron2
    from sslbench.transfer.config import build_config
    from sslbench.transfer.datasets import register_fixture_datasets
    from sslbench.transfer.train import build_trainer

    register_fixture_datasets()
    weights = tmp_path / "backbone.pkl"
    write_detectron2(read_checkpoint(setup["ckpt"]), weights)
    cfg = build_config("voc", weights=weights, output_dir=tmp_path / "run", overrides=[*VOC, *SMALL])
    model = build_trainer(cfg, resume=False).model  # weights loaded, no step taken yet
    expected = setup["backbone"]
    state = model.state_dict()
    assert torch.equal(state["backbone.stem.conv1.weight"], expected["conv1.weight"])
    assert torch.equal(state["backbone.res4.5.conv3.norm.running_var"], expected["layer3.5.bn3.running_var"])
    assert torch.equal(state["roi_heads.res5.2.conv2.weight"], expected["layer4.2.conv2.weight"])
    assert torch.equal(
        state["roi_heads.res5.0.shortcut.norm.weight"], expected["layer4.0.downsample.1.weight"]
    )
    assert (
        isinstance(model.roi_heads.res5.norm, torch.nn.BatchNorm2d)
        and model.roi_heads.res5.norm.num_features == 2048
    )


def test_backbone_check_rejects_a_detector_that_did_not_load_it(setup: dict, tmp_path: Path) -> None:
    from detectron2.modeling import build_model

    from sslbench.checkpoints import read_checkpoint
    from sslbench.checkpoints.writers import write_detectron2
    from sslbench.errors import CheckpointError
    from sslbench.transfer.config import build_config
    from sslbench.transfer.train import verify_backbone_loaded

    weights = tmp_path / "backbone.pkl"
    write_detectron2(read_checkpoint(setup["ckpt"]), weights)
    model = build_model(build_config("voc", device="cpu"))  # randomly initialised: nothing loaded
    with pytest.raises(CheckpointError, match="did not load"):
        verify_backbone_loaded(model, weights)


def test_missing_dataset_names_the_expected_layout(
    setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "empty"))
    assert (
        main(["detect", str(setup["ckpt"]), "--task", "voc", "--out", str(tmp_path / "o"), *VOC, *SMALL]) == 2
    )
    err = capsys.readouterr().err
    assert (
        "sslbench_fixture_voc_2007_trainval" in err and "Annotations" in err and "DETECTRON2_DATASETS" in err
    )
    assert not (tmp_path / "o" / "backbone.pkl").exists()  # nothing written before the inputs are checked


def test_dataset_class_count_must_match_the_head(datasets: Path) -> None:
    from sslbench.errors import ConfigError
    from sslbench.transfer.datasets import check_datasets, register_fixture_datasets

    register_fixture_datasets()
    with pytest.raises(ConfigError, match="NUM_CLASSES 4"):
        check_datasets(["sslbench_fixture_coco_2017_train"], ["sslbench_fixture_coco_2017_val"], 80)
    with pytest.raises(ConfigError, match="not registered"):
        check_datasets(["no_such_dataset"], [], 4)
