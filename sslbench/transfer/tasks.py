"""The detection transfer tasks: which shipped config each runs and which metrics it reports.

No Detectron2 import here: the CLI lists the tasks without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROTOCOL_SOURCE = (
    "MoCo detection transfer (He et al. CVPR 2020; facebookresearch/moco detection/configs "
    "Base-RCNN-C4-BN.yaml, pascal_voc_R_50_C4_24k_moco.yaml, coco_R_50_C4_2x_moco.yaml), Detectron2"
)
_COCO_METRICS = tuple(
    (f"{kind}_{name}", f"{kind}/{name}")
    for kind in ("bbox", "segm")
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")
)


@dataclass(frozen=True)
class DetectionTask:
    name: str
    config: str  # file in CONFIG_DIR
    description: str
    # (name in the result record, key in Detectron2's flattened evaluator output), in percent
    metrics: tuple[tuple[str, str], ...]

    @property
    def config_path(self) -> Path:
        return CONFIG_DIR / self.config


TASKS: dict[str, DetectionTask] = {
    "voc": DetectionTask(
        "voc",
        "voc_R_50_C4_24k.yaml",
        "Faster R-CNN R50-C4, VOC 07+12 trainval -> VOC07 test, 24k iterations",
        (("AP", "bbox/AP"), ("AP50", "bbox/AP50"), ("AP75", "bbox/AP75")),
    ),
    "coco-1x": DetectionTask(
        "coco-1x",
        "coco_R_50_C4_1x.yaml",
        "Mask R-CNN R50-C4, COCO 2017 train -> val, 90k iterations (1x)",
        _COCO_METRICS,
    ),
    "coco-2x": DetectionTask(
        "coco-2x",
        "coco_R_50_C4_2x.yaml",
        "Mask R-CNN R50-C4, COCO 2017 train -> val, 180k iterations (2x)",
        _COCO_METRICS,
    ),
}
