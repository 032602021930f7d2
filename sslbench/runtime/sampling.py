"""Data order and augmentation as functions of (seed, epoch, sample index) only.

* :class:`SeededBatches`: global batch ``s`` is batch ``s % E`` of epoch ``s // E`` of a permutation
  seeded by ``(seed, epoch)``; rank ``r`` of ``world`` takes the ``r``-th contiguous slice of it, so
  the ranks' slices in rank order are the one-process batch. Resuming at step ``s`` needs no replay.
* :class:`SeededSamples` / :func:`sample_rng`: the CPU RNGs (torch's, numpy's and Python's global
  ones: timm's RandAugment draws from the last two) seeded from ``(seed, epoch, index)`` while a
  sample is made, then restored: augmentation depends on neither the worker nor the world size.
* :func:`numpy_rng`: numpy's global RNG seeded for one call (timm's ``Mixup`` draws from it).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sslbench.errors import ConfigError


def epoch_permutation(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of ``size`` samples in ``epoch``: a permutation seeded by ``(seed, epoch)``."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    return torch.randperm(size, generator=torch.Generator().manual_seed(int(state)))


def rank_slice(batch_size: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous share of a batch of ``batch_size`` (sizes differ by one at most)."""
    return slice(rank * batch_size // world, (rank + 1) * batch_size // world)


class SeededBatches:
    """Batch sampler of ``[(epoch, index), ...]`` for global steps ``[start_step, end_step)``.

    ``drop_last=True``: an epoch is ``size // global_batch`` whole batches, the rest of the
    permutation is dropped. ``drop_last=False``: the epoch ends with the incomplete batch (MoCo's
    linear probe), except under several ranks a remainder smaller than the world size, which is
    dropped so that every rank has a sample."""

    def __init__(
        self,
        size: int,
        global_batch: int,
        seed: int,
        start_step: int,
        end_step: int,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = True,
    ) -> None:
        if size < 1:
            raise ConfigError("cannot train on an empty split")
        self.size, self.global_batch, self.seed = size, global_batch, seed
        self.start_step, self.end_step, self.rank, self.world = start_step, end_step, rank, world
        whole, rest = divmod(size, global_batch)
        keep_rest = not drop_last and rest >= world
        self.steps_per_epoch = max(1, whole + int(keep_rest))

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        for step in range(self.start_step, self.end_step):
            e, k = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, epoch_permutation(self.size, self.seed, e)
            batch = order[k * self.global_batch : (k + 1) * self.global_batch]
            yield [(epoch, int(i)) for i in batch[rank_slice(len(batch), self.rank, self.world)]]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s randomness in ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


@contextmanager
def numpy_rng(*key: int) -> Iterator[None]:
    """numpy's global generator seeded from ``key`` (integers), restored afterwards."""
    saved = np.random.get_state()
    np.random.seed(np.random.SeedSequence(list(key)).generate_state(1)[0])
    try:
        yield
    finally:
        np.random.set_state(saved)


@contextmanager
def sample_rng(seed: int, epoch: int, index: int) -> Iterator[None]:
    """The global CPU generators (torch, numpy, Python's ``random``) seeded for one sample, restored
    afterwards."""
    number = sample_seed(seed, epoch, index)
    python_state = random.getstate()
    random.seed(number)
    try:
        with torch.random.fork_rng(devices=[]), numpy_rng(seed, epoch, index):
            torch.manual_seed(number)
            yield
    finally:
        random.setstate(python_state)


class SeededSamples(Dataset):
    """``dataset[index]`` made under :func:`sample_rng`, addressed as ``(epoch, index)``."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with sample_rng(self.seed, epoch, index):
            return self.dataset[index]


def steps_per_epoch(size: int, global_batch: int, world: int = 1, drop_last: bool = True) -> int:
    """How many global steps :class:`SeededBatches` makes of one epoch."""
    return SeededBatches(size, global_batch, 0, 0, 0, 0, world, drop_last).steps_per_epoch


def shard(size: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(size)``: the shards in rank order are ``range(size)``."""
    part = rank_slice(size, rank, world)
    return range(part.start, part.stop)
