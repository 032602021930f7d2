"""Weighted k-nearest-neighbour classification of frozen features (Wu et al. 2018 InstDisc; DINO).

Features are L2-normalised, so inner product is cosine similarity. Each of the k training
features nearest to a query votes for its class with weight ``exp(sim / T)``; the class with the
largest summed vote is the prediction (DINO ``eval_knn.knn_classifier``). Defaults: k in
{10, 20, 100, 200} at T=0.07 as in DINO ``eval_knn.py`` (k=20 its primary), and k=200 at T=0.1 as
in InstDisc / lightly / VISSL.

One exact FAISS inner-product search of the largest k serves every (k, T): neighbours come back
sorted, so the first k columns are the k nearest. Queries go in chunks, so memory holds a chunk's
neighbours and class scores, never the ``(N, M)`` similarity matrix (FAISS itself works in
4096 x 1024 BLAS blocks). The search runs on the GPU (``GpuIndexFlatIP``) when faiss was built
with GPU support and CUDA is there. Labels may be any integers: they are
remapped to ``0..C-1`` over the classes seen in train and test, C counted from the data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from sslbench.evaluate.metrics import AccuracyTally
from sslbench.evaluate.protocol_defaults import KNN_SETTINGS, QUERY_CHUNK
from sslbench.runtime.progress import tracked


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


def index_description(gpu: bool) -> str:
    return "faiss.GpuIndexFlatIP" if gpu else "faiss.knn (IndexFlatIP's exact inner-product search)"


class ExactSearch:
    """Exact inner-product search over the L2-normalised bank ``train_features (N, D)``.

    On the GPU, a ``GpuIndexFlatIP`` holds the bank. On the CPU, ``faiss.knn`` runs the routine
    ``IndexFlatIP.search`` runs (``knn_inner_product``: BLAS blocks, a k-heap per query) directly
    on our normalised copy: an ``IndexFlatIP`` would keep a second copy of the bank (10 GB for
    ImageNet at 2048-d) and re-allocate it as rows are added.
    """

    def __init__(self, train_features: torch.Tensor, gpu: bool | None = None, chunk_size: int = 8192) -> None:
        self.gpu = use_gpu_index() if gpu is None else gpu
        self.size, dim = train_features.shape
        bank = np.empty((self.size, dim), dtype=np.float32)
        for start in range(0, self.size, chunk_size):  # normalised chunk by chunk: one copy in all
            bank[start : start + chunk_size] = l2_normalise(train_features[start : start + chunk_size])
        if self.gpu:
            self.resources = faiss.StandardGpuResources()
            config = faiss.GpuIndexFlatConfig()
            config.device = torch.cuda.current_device()
            self.index = faiss.GpuIndexFlatIP(self.resources, dim, config)
            self.index.add(bank)
        else:
            self.bank = bank

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and ids ``(B, k)`` of the k nearest bank rows of unit ``queries (B, D)``,
        nearest first."""
        if self.gpu:
            return self.index.search(queries, k)
        return faiss.knn(queries, self.bank, k, metric=faiss.METRIC_INNER_PRODUCT)


def nearest_neighbours(
    search: ExactSearch,
    queries: torch.Tensor,
    k: int,
    chunk_size: int = QUERY_CHUNK,
    progress: bool = False,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(start, sims (B, k), ids (B, k))`` for consecutive chunks of ``queries (M, D)``
    (L2-normalised chunk by chunk), nearest first."""
    for start in tracked(range(0, len(queries), chunk_size), "kNN query chunks", progress):
        yield start, *search.search(l2_normalise(queries[start : start + chunk_size]), k)


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

    search = ExactSearch(train_features, gpu)
    k_max = min(max(k for k, _ in settings), len(train_y))
    tallies = {s: AccuracyTally(num_classes) for s in settings}
    predictions: dict[tuple[int, float], list[torch.Tensor]] = {s: [] for s in settings}
    ks_of: dict[float, list[int]] = {}
    for k, temperature in settings:
        ks_of.setdefault(temperature, []).append(k)
    for start, sims, neighbours in nearest_neighbours(search, test_features, k_max, chunk_size, progress):
        votes_for = train_y[torch.from_numpy(neighbours)]  # (B, k_max) class of each neighbour
        labels = test_y[start : start + chunk_size]
        for temperature, ks in ks_of.items():
            # exp((sim - 1)/T) = exp(sim/T) * exp(-1/T): the same ranking, and it never overflows
            shifted = (torch.from_numpy(sims).clamp(max=1.0) - 1.0) / temperature
            weights = shifted.exp()
            if not bool((weights > 0).all()):  # T < 0.023: float32 underflows; float64 holds it
                weights = shifted.double().exp_()
                if not bool((weights > 0).all()):
                    raise ValueError(f"T={temperature} is too small: exp(sim/T) underflows float64")
            scores = torch.zeros(len(labels), num_classes, dtype=weights.dtype)
            done = 0
            for k in sorted(set(ks)):  # votes of the k nearest = those of the previous k plus the next ones
                k_used = min(k, k_max)
                scores.scatter_add_(1, votes_for[:, done:k_used], weights[:, done:k_used])
                done = k_used
                top1 = tallies[(k, temperature)].update(scores, labels, zero_is_no_vote=True)
                predictions[(k, temperature)].append(classes[top1])
    return {
        (k, t): KnnOutcome(k, t, min(k, k_max), tallies[(k, t)].result(), torch.cat(predictions[(k, t)]))
        for k, t in settings
    }
