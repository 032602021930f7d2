"""Our Detectron2 .pkl loads into the R50-C4 of our VOC config (with ``Res5ROIHeadsExtraNorm``): every
backbone and res5 tensor; only the heads (RPN, box predictor, the extra res5 norm) keep their init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from checkpoint_sources import SOURCES, backbone_of, resnet

from sslbench.checkpoints import read_checkpoint
from sslbench.checkpoints.detectron2_names import to_detectron2
from sslbench.checkpoints.writers import write_detectron2

pytestmark = pytest.mark.detectron2


def _r50_c4_model():  # the detector `sslbench detect --task voc` trains, from our shipped config
    from detectron2.modeling import build_model

    from sslbench.transfer.config import build_config

    return build_model(build_config("voc", device="cpu"))  # CPU: plain BN, same parameters as naiveSyncBN


def test_detectron2_checkpointer_loads_every_backbone_tensor(tmp_path: Path) -> None:
    from detectron2.checkpoint import DetectionCheckpointer

    model = resnet("resnet50", seed=1)  # non-trivial BN statistics, so equality means something
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
            assert name.startswith(
                ("proposal_generator.", "roi_heads.box_predictor.", "roi_heads.res5.norm.")
            ), name
            assert torch.equal(value, before[name]), name
    extra_norm = {
        k.removeprefix("roi_heads.res5.norm.") for k in after if k.startswith("roi_heads.res5.norm.")
    }
    assert extra_norm == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
