"""The shipped Detectron2 configs carry MoCo's detection recipe, for every task.

The YAML checks need no Detectron2 (they read the files with PyYAML and resolve ``_BASE_`` here);
the built-config checks run the same assertions on Detectron2's merged CfgNode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sslbench.transfer.tasks import TASKS

# facebookresearch/moco detection/configs: Base-RCNN-C4-BN.yaml and the *_moco.yaml children.
MOCO = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
    "MODEL.RESNETS.NORM": "naiveSyncBN",
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
    "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "INPUT.FORMAT": "RGB",
    "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
}

_COCO = {  # Mask R-CNN R50-C4 on COCO 2017, as in MoCo's detection configs
    "MODEL.MASK_ON": True,
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "INPUT.MIN_SIZE_TRAIN": [640, 672, 704, 736, 768, 800],
    "INPUT.MIN_SIZE_TEST": 800,
    "DATASETS.TRAIN": ["coco_2017_train"],
    "DATASETS.TEST": ["coco_2017_val"],
}

PER_TASK = {
    "voc": {  # pascal_voc_R_50_C4_24k.yaml
        "MODEL.MASK_ON": False,
        "MODEL.ROI_HEADS.NUM_CLASSES": 20,
        "INPUT.MIN_SIZE_TRAIN": list(range(480, 801, 32)),
        "INPUT.MIN_SIZE_TEST": 800,
        "DATASETS.TRAIN": ["voc_2007_trainval", "voc_2012_trainval"],
        "DATASETS.TEST": ["voc_2007_test"],
        "SOLVER.MAX_ITER": 24000,
        "SOLVER.STEPS": [18000, 22000],
        "SOLVER.WARMUP_ITERS": 100,
    },
    # Detectron2's Base-RCNN-C4.yaml 1x schedule; MoCo's coco_R_50_C4_2x.yaml
    "coco-1x": _COCO | {"SOLVER.MAX_ITER": 90000, "SOLVER.STEPS": [60000, 80000]},
    "coco-2x": _COCO | {"SOLVER.MAX_ITER": 180000, "SOLVER.STEPS": [120000, 160000]},
}


def _merged_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    base = data.pop("_BASE_", None)
    merged = _merged_yaml(path.parent / base) if base else {}

    def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, dict):
                merge(into.setdefault(key, {}), value)
            else:
                into[key] = value

    merge(merged, data)
    return merged


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return list(tree) if isinstance(tree, (list, tuple)) else tree


def _assert_recipe(cfg: Any, task: str) -> None:
    for key, expected in {**MOCO, **PER_TASK[task]}.items():
        value = _lookup(cfg, key)
        if isinstance(expected, list) and expected and isinstance(expected[0], float):
            assert value == pytest.approx(expected), key
        else:
            assert value == expected, key


@pytest.mark.parametrize("task", list(TASKS))
def test_shipped_yaml_holds_moco_recipe(task: str) -> None:
    _assert_recipe(_merged_yaml(TASKS[task].config_path), task)


@pytest.mark.detectron2
@pytest.mark.parametrize("task", list(TASKS))
def test_built_config_holds_moco_recipe(task: str) -> None:
    from sslbench.transfer.config import build_config

    cfg = build_config(task, weights="w.pkl", output_dir="o", seed=3, device="cuda")
    _assert_recipe(cfg, task)
    assert (cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR, cfg.SEED) == ("cuda", "w.pkl", "o", 3)
    assert cfg.SOLVER.REFERENCE_WORLD_SIZE == 0  # the batch is total: no silent rescaling per GPU count


@pytest.mark.detectron2
def test_cpu_config_uses_plain_bn_and_overrides_win() -> None:
    from sslbench.transfer.config import build_config

    cfg = build_config(
        "voc", device="cpu", overrides=["SOLVER.MAX_ITER", "7", "MODEL.ROI_HEADS.NUM_CLASSES", "4"]
    )
    assert cfg.MODEL.RESNETS.NORM == "BN"
    assert (cfg.SOLVER.MAX_ITER, cfg.MODEL.ROI_HEADS.NUM_CLASSES) == (7, 4)


@pytest.mark.detectron2
def test_scale_batch_applies_linear_scaling_rule() -> None:
    from sslbench.transfer.config import build_config

    cfg = build_config("voc", device="cuda", total_batch=8)  # moco#11: batch 8 -> lr 0.01, 2x schedule
    assert cfg.SOLVER.IMS_PER_BATCH == 8
    assert pytest.approx(0.01) == cfg.SOLVER.BASE_LR
    assert cfg.SOLVER.MAX_ITER == 48000
    assert tuple(cfg.SOLVER.STEPS) == (36000, 44000)
    assert cfg.SOLVER.WARMUP_ITERS == 200
    assert cfg.SOLVER.REFERENCE_WORLD_SIZE == 0
    cfg = build_config("coco-2x", device="cuda", total_batch=32, overrides=["SOLVER.BASE_LR", "0.03"])
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (
        32,
        90000,
        (60000, 80000),
    )
    assert pytest.approx(0.03) == cfg.SOLVER.BASE_LR  # an explicit override beats the rule


@pytest.mark.detectron2
def test_config_errors_name_the_problem() -> None:
    from sslbench.errors import ConfigError
    from sslbench.transfer.config import build_config, check_world_size

    with pytest.raises(ConfigError, match="divide over 3 processes"):
        check_world_size(build_config("voc", device="cuda"), 3)
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        build_config("voc", overrides=["SOLVER.MAX_ITER"])
    with pytest.raises(ConfigError, match=r"SOLVER\.NO_SUCH_KEY"):
        build_config("voc", overrides=["SOLVER.NO_SUCH_KEY", "1"])
    with pytest.raises(ConfigError, match="bottleneck ResNet"):
        build_config("voc", arch="resnet18")
    with pytest.raises(ConfigError, match="positive"):
        build_config("voc", total_batch=0)
