"""Our Detectron2 .pkl loads into Detectron2's own R50-C4: every backbone and res5 tensor, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from checkpoint_sources import SOURCES, backbone_of
from torchvision import models as tvm

from sslbench.checkpoints import read_checkpoint
from sslbench.checkpoints.detectron2_names import to_detectron2
from sslbench.checkpoints.writers import write_detectron2

pytestmark = pytest.mark.detectron2


def _r50_c4_model():  # MoCo's VOC R50-C4 settings on top of Detectron2's own base config
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()  # Detectron2's defaults are the R50-C4 Faster R-CNN (res4 features, Res5ROIHeads)
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 20
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.NORM = "BN"  # SyncBN in training; same parameters, and usable on one CPU process
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.280, 103.530]
    cfg.MODEL.PIXEL_STD = [58.395, 57.120, 57.375]
    return build_model(cfg)


def test_detectron2_checkpointer_loads_every_backbone_tensor(tmp_path: Path) -> None:
    from detectron2.checkpoint import DetectionCheckpointer

    model = tvm.resnet50()
    ckpt = read_checkpoint(torch.save(SOURCES["moco_v2"](model), tmp_path / "m.pth") or tmp_path / "m.pth")
    pkl = tmp_path / "r50.pkl"
    write_detectron2(ckpt, pkl)

    d2 = _r50_c4_model()
    before = {k: v.clone() for k, v in d2.state_dict().items()}
    DetectionCheckpointer(d2).load(str(pkl))
    after = d2.state_dict()

    expected: dict[str, torch.Tensor] = {}
    for key, value in backbone_of(model).items():
        name = to_detectron2(key)
        owner = "roi_heads." if name.startswith("res5.") else "backbone."
        expected[owner + name] = value
    assert set(expected) <= set(after), sorted(set(expected) - set(after))[:5]  # nothing of ours unused
    for name, value in after.items():
        if name in expected:
            assert torch.equal(value, expected[name].to(value.dtype)), name
        else:  # heads keep their initialisation
            assert name.startswith(("proposal_generator.", "roi_heads.box_predictor.")), name
            assert torch.equal(value, before[name]), name
