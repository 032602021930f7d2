"""Published reference numbers (ResNet-50, ImageNet-1k pretraining, 200 epochs), DESIGN.md section 9.

Sources: the FT paper (Zhu et al., "Improving Contrastive Learning by Visualizing Feature
Transformation", ICCV 2021; its iNat18 / CUB / Aircraft columns are fine-tuning top-1 accuracies) and
the MoCo README (IN-1k linear, VOC and COCO detection with the R50-C4 recipe). kNN anchors (ImageNet,
k=20, T=0.07): MoCo v2 200 ep from mmselfsup's model zoo, DINO ResNet-50 from the DINO README.

Each value is keyed like a leaderboard column: (task, dataset, protocol prefix, metric). A record's
column matches when task, dataset and metric are equal and its protocol name starts with the prefix
(so ``linear-sgd``, MoCo's protocol, never sits beside an L-BFGS probe). The zoo table's published
numbers (``sslbench/configs/zoo/checkpoints.yaml``) use the same keys: :func:`published_key` checks
their names against :data:`PROTOCOLS`, the leaderboard's dataset names and :data:`METRICS` when the
table loads.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "Zhu et al. ICCV 2021 (FT) and the MoCo README; kNN: mmselfsup (MoCo v2), DINO README (DINO RN50)"
IMAGENET_1K = "imagenet-1k"  # the leaderboard's column name for ImageNet-1k (an ImageFolder of 1000 classes)
METRICS = ("top1", "top5", "mean_per_class")  # what evaluate/metrics.py reports for a probe

# Protocol names a published number may carry (the zoo table's ``protocol``): the record protocol
# names of sslbench's commands, and recipes sslbench does not run, whose numbers then get columns
# of their own and never sit beside a run of another recipe. name -> (record task, what it is).
PROTOCOLS: dict[str, tuple[str, str]] = {
    "knn": ("knn", "sslbench knn (DINO eval_knn.py; primary k=20, T=0.07)"),
    "linear-lbfgs": ("linear", "sslbench linear --protocol lbfgs (ssl-transfer)"),
    "linear-sgd": ("linear", "sslbench linear --protocol sgd (MoCo main_lincls.py)"),
    "linear-dino": ("linear", "sslbench linear --protocol dino (DINO eval_linear.py)"),
    "linear-mae": ("linear", "sslbench linear --protocol mae (MAE main_linprobe.py)"),
    "finetune-ssl-transfer-ce": ("finetune", "sslbench finetune (ssl-transfer grid)"),
    "finetune-mae-ce": ("finetune", "sslbench finetune --config mae (MAE main_finetune.py)"),
    "linear-mocov3": ("linear", "MoCo v3 main_lincls.py (SGD, batch 1024, 90 epochs): not run by sslbench"),
    "finetune-deit": ("finetune", "DeiT main.py fine-tuning, as MoCo v3 reports it: not run by sslbench"),
}


@dataclass(frozen=True)
class PublishedKey:
    task: str
    dataset: str
    protocol: str  # a prefix of the matching records' protocol names
    metric: str


def published_key(protocol: str, dataset: str, metric: str) -> PublishedKey:
    """The column key of a published number named by protocol, dataset and metric; ValueError (naming
    the field and what is accepted) when one is not a name the leaderboard's columns use."""
    from sslbench.data.registry import DATASETS

    datasets = sorted({IMAGENET_1K, *(name for name in DATASETS if name != "imagefolder")})
    for field, value, known in (
        ("protocol", protocol, list(PROTOCOLS)),
        ("dataset", dataset, datasets),
        ("metric", metric, list(METRICS)),
    ):
        if value not in known:
            raise ValueError(f"{field} {value!r} is not one of {', '.join(known)}")
    return PublishedKey(PROTOCOLS[protocol][0], dataset, protocol, metric)


IN1K_LINEAR = PublishedKey("linear", IMAGENET_1K, "linear-sgd", "top1")
IN1K_KNN = PublishedKey("knn", IMAGENET_1K, "knn", "top1")
INAT = PublishedKey("finetune", "inat18", "finetune", "top1")
CUB = PublishedKey("finetune", "cub200", "finetune", "top1")
AIRCRAFT = PublishedKey("finetune", "aircraft", "finetune", "top1")
VOC = {
    m: PublishedKey("detection", "voc_2007_test", "detectron2-moco-voc", m) for m in ("AP50", "AP", "AP75")
}
COCO = {
    m: PublishedKey("detection", "coco_2017_val", "detectron2-moco-coco", m) for m in ("bbox_AP", "segm_AP")
}


def _paper_row(
    in1k: float,
    inat: float,
    cub: float,
    air: float,
    voc: tuple[float, float, float],
    coco: tuple[float, float],
) -> dict[PublishedKey, float]:
    return {
        IN1K_LINEAR: in1k,
        INAT: inat,
        CUB: cub,
        AIRCRAFT: air,
        VOC["AP50"]: voc[0],
        VOC["AP"]: voc[1],
        VOC["AP75"]: voc[2],
        COCO["bbox_AP"]: coco[0],
        COCO["segm_AP"]: coco[1],
    }


# row label -> values
PUBLISHED: dict[str, dict[PublishedKey, float]] = {
    "supervised": _paper_row(76.1, 66.1, 81.9, 82.6, (81.3, 53.5, 58.8), (38.2, 33.3)),
    "MoCo v1": _paper_row(60.6, 65.6, 82.8, 83.5, (81.5, 55.9, 62.6), (38.5, 33.6)),
    "MoCo v1 + FT": _paper_row(61.9, 67.3, 83.2, 84.0, (82.0, 56.1, 62.0), (39.0, 34.1)),
    "MoCo v2": {**_paper_row(67.5, 66.8, 82.9, 83.6, (82.4, 57.0, 63.6), (39.0, 34.2)), IN1K_KNN: 55.7},
    "MoCo v2 + FT": _paper_row(69.6, 67.7, 83.1, 84.1, (83.3, 58.1, 65.1), (39.5, 34.6)),
    "DINO RN50": {IN1K_KNN: 67.5},
}
