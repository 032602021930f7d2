"""Positive/negative score statistics over training, the quantities the FT paper plots (its Figs. 2-4).

The reference (``memory/mem_moco.py``, ``--save_score``) keeps, per step and per sample, the positive
score ``q.k`` and the mean and variance of the negative scores over the queue, on the logits it
trains on. We keep the same quantities aggregated over the batch, before and after FT:

* ``pos_mean`` / ``pos_var``: mean and (unbiased) variance across the batch of the positive score;
* ``neg_mean`` / ``neg_var``: the batch mean of each sample's mean and (unbiased) variance of its
  negative scores over the negatives it is contrasted with (K, or 2K with ``ft.negatives=both``).

Scores are cosine similarities, before the temperature. Each table row averages the statistics of
every step of one logging interval; they accumulate on the device and reach the host (one sync, an
all-reduce under DDP) only when a row is written.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor

from sslbench.atomic import atomic_path
from sslbench.errors import SslbenchError

STAGES = ("before_ft", "after_ft")
STATISTICS = ("pos_mean", "pos_var", "neg_mean", "neg_var")
SCORE_COLUMNS = tuple(f"{stage}_{stat}" for stage in STAGES for stat in STATISTICS)
TABLE_COLUMNS = ("step", "epoch", "lr", "loss", *SCORE_COLUMNS)
TABLE_NAME = "scores.csv"


@torch.no_grad()
def batch_score_stats(scores: Tensor) -> Tensor:
    """``(pos_mean, pos_var, neg_mean, neg_var)`` (4,) of scores (B, 1+N) whose column 0 is the positive."""
    scores = scores.detach().float()
    pos_var, pos_mean = torch.var_mean(scores[:, 0])
    neg_var, neg_mean = torch.var_mean(scores[:, 1:], dim=1)
    return torch.stack([pos_mean, pos_var, neg_mean.mean(), neg_var.mean()])


class ScoreAccumulator:
    """Sums of the loss and the score statistics over the steps of one logging interval, on the device."""

    def __init__(self, device: torch.device | str) -> None:
        self.sums = torch.zeros(1 + len(SCORE_COLUMNS), dtype=torch.float64, device=device)
        self.steps = 0

    def add(self, loss: Tensor, before_ft: Tensor, after_ft: Tensor) -> None:
        """One step: the loss () and the (4,) statistics before and after FT; no host sync."""
        self.sums += torch.cat([loss.detach().reshape(1), before_ft, after_ft]).to(self.sums.dtype)
        self.steps += 1

    def flush(self) -> dict[str, float]:
        """Interval means (averaged over ranks under DDP) as ``{loss, <stage>_<stat>...}``; resets."""
        sums = self.sums.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            sums /= dist.get_world_size()
        values = (sums / max(self.steps, 1)).tolist() if self.steps else [math.nan] * len(sums)
        self.sums.zero_()
        self.steps = 0
        return dict(zip(("loss", *SCORE_COLUMNS), values, strict=True))

    def state_dict(self) -> dict[str, object]:
        return {"sums": self.sums.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.sums.copy_(state["sums"])  # type: ignore[arg-type]
        self.steps = int(state["steps"])  # type: ignore[arg-type]


class ScoreTable:
    """The CSV table ``<run>/scores.csv``: one row per logging interval, columns :data:`TABLE_COLUMNS`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, row: dict[str, float]) -> None:
        frame = pd.DataFrame([row], columns=list(TABLE_COLUMNS))
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(self.path, mode="a", header=new, index=False)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (written after the checkpoint a run resumes from)."""
        if not self.path.exists():
            return
        frame = read_scores(self.path)
        with atomic_path(self.path) as tmp:
            frame[frame["step"] <= step].to_csv(tmp, index=False)


def read_scores(path: str | Path) -> pd.DataFrame:
    """The score table of a run folder (or the CSV file itself), checked for the expected columns."""
    path = Path(path)
    table = path / TABLE_NAME if path.is_dir() else path
    if not table.is_file():
        raise SslbenchError(f"{table}: no score table (written by `sslbench pretrain` beside its checkpoint)")
    frame = pd.read_csv(table)
    missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise SslbenchError(f"{table}: not a score table; missing columns {', '.join(missing)}")
    return frame
