"""Weighted k-nearest-neighbour classification of frozen features (Wu et al. 2018 InstDisc; DINO).

Features are L2-normalised, so inner product is cosine similarity. Each of the k training
features nearest to a query votes for its class with weight ``exp(sim / T)``; the class with the
largest summed vote is the prediction (DINO ``eval_knn.knn_classifier``). Defaults: k in
{10, 20, 100, 200} at T=0.07 as in DINO ``eval_knn.py`` (k=20 its primary), and k=200 at T=0.1 as
in InstDisc / lightly / VISSL.

One exact FAISS ``IndexFlatIP`` search of the largest k serves every (k, T): neighbours come back
sorted, so the first k columns are the k nearest. Queries go in chunks, so memory holds a chunk's
neighbours and class scores, never the ``(N, M)`` similarity matrix. The index lives on the GPU
when faiss was built with GPU support and CUDA is there. Labels may be any integers: they are
remapped to ``0..C-1`` over the classes seen in train and test, C counted from the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sslbench.evaluate.metrics import AccuracyTally

# (k, T): DINO eval_knn (k in 10, 20, 100, 200; T=0.07) and InstDisc (k=200, T=0.1)
KNN_SETTINGS: tuple[tuple[int, float], ...] = ((10, 0.07), (20, 0.07), (100, 0.07), (200, 0.07), (200, 0.1))
PRIMARY_SETTING = (20, 0.07)  # DINO: "20 is usually working the best"
QUERY_CHUNK = 4096  # queries per search: FAISS's own BLAS query block size


@dataclass
class KnnOutcome:
    """Accuracy of one (k, T) setting; ``predictions (M,)`` in the caller's label values."""

    k: int
    temperature: float
    k_used: int  # min(k, number of training features)
    metrics: dict[str, float]
    predictions: torch.Tensor


def l2_normalise(features: torch.Tensor) -> np.ndarray:
    """``(N, D)`` float32 C-contiguous array of unit rows, as FAISS takes it."""
    normalised = F.normalize(features.detach().float().cpu(), dim=1)
    return np.ascontiguousarray(normalised.numpy(), dtype=np.float32)


def use_gpu_index() -> bool:
    return faiss.get_num_gpus() > 0 and torch.cuda.is_available()


def build_index(train: np.ndarray, gpu: bool | None = None) -> faiss.Index:
    """An exact inner-product index over ``train (N, D)``: on the current GPU when possible."""
    gpu = use_gpu_index() if gpu is None else gpu
    if gpu:
        resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = torch.cuda.current_device()
        index = faiss.GpuIndexFlatIP(resources, train.shape[1], config)
        index.resources = resources  # keep the resources alive as long as the index
    else:
        index = faiss.IndexFlatIP(train.shape[1])
    index.add(train)
    return index


def index_description(gpu: bool) -> str:
    return "faiss.GpuIndexFlatIP" if gpu else "faiss.IndexFlatIP"


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    settings: Sequence[tuple[int, float]] = KNN_SETTINGS,
    chunk_size: int = QUERY_CHUNK,
    gpu: bool | None = None,
    progress: bool = False,
) -> dict[tuple[int, float], KnnOutcome]:
    """Weighted kNN of ``test_features (M, D)`` against ``train_features (N, D)`` for every
    ``(k, T)`` in ``settings``, from one search of the largest k. Labels ``(N,)`` / ``(M,)``."""
    if not settings:
        raise ValueError("no (k, T) settings given")
    if (
        train_features.ndim != 2
        or test_features.ndim != 2
        or train_features.shape[1] != test_features.shape[1]
    ):
        raise ValueError(
            "features must be (N, D) and (M, D); "
            f"got {tuple(train_features.shape)}, {tuple(test_features.shape)}"
        )
    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise ValueError("one label per feature expected")
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError("kNN needs at least one training and one test feature")
    for k, temperature in settings:
        if k < 1 or temperature <= 0:
            raise ValueError(f"k must be >= 1 and T > 0; got k={k}, T={temperature}")

    train_labels, test_labels = train_labels.long().cpu(), test_labels.long().cpu()
    classes = torch.unique(torch.cat([train_labels, test_labels]))  # sorted; C from the data
    train_y = torch.searchsorted(classes, train_labels)
    test_y = torch.searchsorted(classes, test_labels)
    num_classes = len(classes)

    index = build_index(l2_normalise(train_features), gpu)
    queries = l2_normalise(test_features)
    k_max = min(max(k for k, _ in settings), len(train_y))
    tallies = {s: AccuracyTally(num_classes) for s in settings}
    predictions: dict[tuple[int, float], list[torch.Tensor]] = {s: [] for s in settings}
    starts = range(0, len(queries), chunk_size)
    for start in tqdm(starts, desc="kNN", unit="chunk", disable=not progress):
        sims, neighbours = index.search(queries[start : start + chunk_size], k_max)
        sims_t = torch.from_numpy(sims)
        votes_for = train_y[torch.from_numpy(neighbours)]  # (chunk, k_max) class of each neighbour
        labels = test_y[start : start + chunk_size]
        for setting in settings:
            k = min(setting[0], k_max)
            weights = (sims_t[:, :k] / setting[1]).exp()
            scores = torch.zeros(len(labels), num_classes).scatter_add_(1, votes_for[:, :k], weights)
            voted = torch.zeros(len(labels), num_classes, dtype=torch.bool)
            voted.scatter_(1, votes_for[:, :k], True)
            scores.masked_fill_(~voted, float("-inf"))  # a class without a vote is never predicted
            predictions[setting].append(classes[tallies[setting].update(scores, labels)])
    return {
        (k, t): KnnOutcome(k, t, min(k, k_max), tallies[(k, t)].result(), torch.cat(predictions[(k, t)]))
        for k, t in settings
    }
