"""``Res5ROIHeadsExtraNorm``: Detectron2's C4 RoI head with one extra norm layer after res5.

MoCo (He et al. CVPR 2020, appendix A.3) fine-tunes with BN everywhere and adds a normalisation
after res5, because the pretrained res5 was followed by no norm before the head. In C4 the res5
output feeds both the box predictor and the mask head, so both see the normalised features.

Importing this module registers the head in ``ROI_HEADS_REGISTRY``; ``sslbench.transfer.config``
imports it before building any config, so the name in our YAMLs always resolves.
"""

from __future__ import annotations

from typing import Any

from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from torch import nn


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5ROIHeads whose res5 stage ends in ``norm``: ``cfg.MODEL.RESNETS.NORM`` over 2048 channels.

    The parameters are named ``roi_heads.res5.norm.*``, as in MoCo's ``detection/train_net.py``, so
    detectors trained with either implementation load into the other.
    """

    @classmethod
    def from_config(cls, cfg: Any, input_shape: Any) -> dict[str, Any]:
        ret = super().from_config(cfg, input_shape)
        res5 = ret["res5"]
        if isinstance(res5, (list, tuple)):
            res5 = nn.Sequential(*res5)
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, res5[-1].out_channels))
        ret["res5"] = res5
        return ret


def register_heads() -> None:
    """Register our heads once per process (another copy, e.g. MoCo's train_net, may be there)."""
    if Res5ROIHeadsExtraNorm.__name__ not in ROI_HEADS_REGISTRY:
        ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)


register_heads()
