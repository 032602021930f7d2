"""The online kNN monitor: ``sslbench knn``'s primary number for the backbone being trained.

Like solo-learn's and lightly's online kNN callbacks, but through our own evaluation code, so the
number it logs is the one ``sslbench knn`` prints for the checkpoint saved at the same epoch: the
same datasets and transform (:func:`~sslbench.data.transforms.eval_transform`), the same sharded
extraction (:func:`~sslbench.evaluate.features.extract_split`), the same FAISS vote
(:func:`~sslbench.evaluate.knn.knn_classify`, primary setting k=20, T=0.07).

The monitor leaves the run as it was: the backbone goes back to training mode (eval mode does not
touch BN's running statistics) and the RNG states are restored (a DataLoader draws its base seed
from the global generator), so a run with the monitor on saves the same checkpoints as one without.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslbench.data.base import LabeledImages
from sslbench.data.registry import build_dataset
from sslbench.data.transforms import eval_transform
from sslbench.errors import ConfigError, SslbenchError
from sslbench.evaluate.features import extract_split
from sslbench.evaluate.knn import knn_classify
from sslbench.evaluate.protocol_defaults import PRIMARY_SETTING
from sslbench.pretrain.config import PretrainConfig
from sslbench.runtime.process import Runtime

DEFAULT_DATASET = "digits"  # the built-in data (scikit-learn's digits, no download)


@dataclass
class KnnMonitor:
    """The bank and query splits of ``monitor.*``, built once; :meth:`top1` evaluates a backbone."""

    bank: LabeledImages
    queries: LabeledImages
    batch_size: int
    workers: int

    @classmethod
    def from_config(cls, cfg: PretrainConfig) -> KnnMonitor:
        dataset = cfg.monitor.dataset or DEFAULT_DATASET
        transform = eval_transform(cfg.monitor.image_size or cfg.augment.size)
        splits = []
        for key, split in (
            ("monitor.bank_split", cfg.monitor.bank_split),
            ("monitor.split", cfg.monitor.split),
        ):
            try:
                images = build_dataset(dataset, cfg.monitor.root, split, transform)
            except SslbenchError as exc:
                raise ConfigError(
                    f"monitor.dataset={dataset} monitor.root={cfg.monitor.root}: {exc}"
                ) from None
            if len(images) == 0:
                raise ConfigError(f"{key}={split}: the split of {dataset} is empty")
            splits.append(images)
        return cls(splits[0], splits[1], cfg.monitor.batch_size, cfg.data.workers)

    def top1(self, backbone: nn.Module, runtime: Runtime) -> float | None:
        """kNN top-1 (%) of ``backbone`` on the main rank (None elsewhere); a collective under DDP."""
        was_training = backbone.training
        devices = [runtime.device] if runtime.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                bank = extract_split(backbone, self.bank, self.batch_size, self.workers, runtime, False)
                queries = extract_split(backbone, self.queries, self.batch_size, self.workers, runtime, False)
        finally:
            backbone.train(was_training)
        if not runtime.main:
            return None
        outcome = knn_classify(*bank, *queries, settings=[PRIMARY_SETTING])
        return float(outcome[PRIMARY_SETTING].metrics["top1"])
