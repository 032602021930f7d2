"""Validation splits where a dataset has no official one: a seeded, stratified 20% of train.

The protocol around it is ssl-transfer's (Ericsson et al. 2021): hyper-parameters are chosen on this
split, then the model is refit on train+val ("trainval") and tested once. The split itself is ours:
ssl-transfer shuffles all indices with ``np.random.seed(0)`` and holds out the first 20%, unstratified;
we stratify so that every class of a fine-grained set (CUB: ~30 images a class) keeps 80% of its
images for training. Records state the rule (``dataset.val_split``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VAL_FRACTION = 0.2
SPLIT_SEED = 0


def stratified_holdout(
    targets: Sequence[int], fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED
) -> tuple[list[int], list[int]]:
    """Indices ``(kept, held_out)``: ``fraction`` of each class held out (at least one where a class
    has two or more samples), chosen by a fixed seed so every run sees the same split."""
    rng = np.random.default_rng(seed)
    targets_arr = np.asarray(targets)
    # group indices by label in one sort (a scan per class would be O(N * C): 3.5e9 steps on iNat18)
    order = np.argsort(targets_arr, kind="stable")
    labels, starts = np.unique(targets_arr[order], return_index=True)
    held: list[int] = []
    for members in np.split(order, starts[1:]) if len(labels) else []:
        # at least one held out (and one kept) wherever a class has two or more samples
        wanted = round(fraction * len(members))
        n_held = min(max(wanted, 1), len(members) - 1) if len(members) >= 2 else 0
        held.extend(rng.permutation(members)[:n_held].tolist())
    is_held = np.zeros(len(targets_arr), dtype=bool)
    is_held[held] = True
    return np.flatnonzero(~is_held).tolist(), sorted(held)


def describe_val_split(official_val: bool) -> str:
    """How a dataset's ``val`` split is made, for result records. ssl-transfer's own rule where there
    is no official one differs: an unstratified random 20% (``np.random.seed(0)``, a shuffle)."""
    if official_val:
        return "official"
    return f"stratified {VAL_FRACTION:.0%} of trainval held out, seed {SPLIT_SEED} (sslbench.data.splits)"
