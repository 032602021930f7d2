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

Beside them, the collapse metric (SimSiam, Chen & He 2021, Sec. 4.1): the per-dimension standard
deviation of the L2-normalised outputs over the batch, averaged over the D dimensions and times
sqrt(D), about 1 for embeddings spread over the sphere and 0 when every sample maps to one point:

* ``output_std``: of the query projector output, every step (averaged like the scores);
* ``feature_std``: of the query backbone features, on the steps the trainer asks for
  (``collapse.feature_every``); empty in the rows of intervals without one.

``collapse_alarm`` is 1 in the row where the collapse alarm fired (``alarm.py``), else 0;
``knn_top1`` holds the online kNN monitor's top-1 (``monitor.py``) in the row logged when it ran.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from sslbench.atomic import atomic_path
from sslbench.errors import SslbenchError

STAGES = ("before_ft", "after_ft")
STATISTICS = ("pos_mean", "pos_var", "neg_mean", "neg_var")
SCORE_COLUMNS = tuple(f"{stage}_{stat}" for stage in STAGES for stat in STATISTICS)
COLLAPSE_COLUMNS = ("output_std", "feature_std")
MONITOR_COLUMNS = ("collapse_alarm", "knn_top1")
# the columns of tables written before the collapse metric: still readable by plot-scores
REQUIRED_COLUMNS = ("step", "epoch", "lr", "loss", *SCORE_COLUMNS)
TABLE_COLUMNS = (*REQUIRED_COLUMNS, *COLLAPSE_COLUMNS, *MONITOR_COLUMNS)
TABLE_NAME = "scores.csv"


@torch.no_grad()
def collapse_metric(outputs: Tensor) -> Tensor:
    """``sqrt(D) * mean_d std_n(z[n, d])`` of ``outputs (N, D)`` with ``z`` the L2-normalised rows:
    ~1 for vectors spread uniformly over the sphere, 0 when all rows point the same way (SimSiam's
    collapse check). The standard deviation is the population one (divisor N)."""
    if outputs.ndim != 2 or outputs.shape[0] < 2:
        raise ValueError(f"expected outputs (N >= 2, D); got {tuple(outputs.shape)}")
    z = F.normalize(outputs.detach().float(), dim=1)
    return z.std(dim=0, correction=0).mean() * math.sqrt(z.shape[1])


@torch.no_grad()
def batch_score_stats(scores: Tensor) -> Tensor:
    """``(pos_mean, pos_var, neg_mean, neg_var)`` (4,) of scores (B, 1+N) whose column 0 is the positive."""
    scores = scores.detach().float()
    pos_var, pos_mean = torch.var_mean(scores[:, 0])
    neg_var, neg_mean = torch.var_mean(scores[:, 1:], dim=1)
    return torch.stack([pos_mean, pos_var, neg_mean.mean(), neg_var.mean()])


ACCUMULATED = ("loss", *SCORE_COLUMNS, "output_std")


class ScoreAccumulator:
    """Sums of the loss, the score statistics and the collapse metrics over the steps of one logging
    interval, on the device. Under DDP each rank's metrics are of its own batch; rows average them."""

    def __init__(self, device: torch.device | str) -> None:
        self.sums = torch.zeros(len(ACCUMULATED), dtype=torch.float64, device=device)
        self.steps = 0
        self.feature_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.feature_steps = 0

    def add(
        self,
        loss: Tensor,
        before_ft: Tensor,
        after_ft: Tensor,
        output_std: Tensor,
        feature_std: Tensor | None = None,
    ) -> None:
        """One step: the loss (), the (4,) statistics before and after FT, the collapse metric of the
        projector output () and, on some steps, of the backbone features (); no host sync."""
        parts = [loss.detach().reshape(1), before_ft, after_ft, output_std.reshape(1)]
        self.sums += torch.cat(parts).to(self.sums.dtype)
        self.steps += 1
        if feature_std is not None:
            self.feature_sum += feature_std.to(self.feature_sum.dtype)
            self.feature_steps += 1

    def flush(self) -> dict[str, float]:
        """Interval means (averaged over ranks under DDP) as ``{loss, <stage>_<stat>..., output_std,
        feature_std}`` (NaN where no step measured it); resets."""
        sums = torch.cat([self.sums, self.feature_sum.reshape(1)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            sums /= dist.get_world_size()
        totals = sums.tolist()
        values = [v / self.steps if self.steps else math.nan for v in totals[:-1]]
        feature = totals[-1] / self.feature_steps if self.feature_steps else math.nan
        self.sums.zero_()
        self.feature_sum.zero_()
        self.steps = self.feature_steps = 0
        return {**dict(zip(ACCUMULATED, values, strict=True)), "feature_std": feature}

    def state_dict(self) -> dict[str, object]:
        return {
            "sums": self.sums.cpu(),
            "steps": self.steps,
            "feature_sum": self.feature_sum.cpu(),
            "feature_steps": self.feature_steps,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.sums.copy_(state["sums"])  # type: ignore[arg-type]
        self.steps = int(state["steps"])  # type: ignore[arg-type]
        self.feature_sum.copy_(state["feature_sum"])  # type: ignore[arg-type]
        self.feature_steps = int(state["feature_steps"])  # type: ignore[arg-type]


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
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise SslbenchError(f"{table}: not a score table; missing columns {', '.join(missing)}")
    return frame
