"""The collapse alarm: a warning while a run can still be stopped, not a plot read after it ended.

At small scale FT's positive extrapolation (``ft.target=pos``/``posneg``) collapses MoCo: with unit
q, k and lambda in [1, 2] the transformed positive is ``1 - a (1 - s)`` with
``a = lambda^2 + (1 - lambda)^2`` in [1, 5], so the positive's gradient is amplified by ``a`` while
the negatives' only by lambda; when positives are barely closer than negatives (early, small data),
the cheapest way down is to contract every output to one point. The alarm watches the two signs of
that, per logged row: the collapse metric of the projector output (``output_std``, ~1 healthy, 0
collapsed) and the plain MoCo gap between the mean positive and the mean negative score. When both
stay below ``collapse.output_std_below`` / ``collapse.gap_below`` for ``collapse.patience`` rows in a
row, it fires once: one warning line, the record in the checkpoint (``collapse_alarm``) and in
``config.yaml``'s header, a 1 in the row's ``collapse_alarm`` column, and with
``stop_on_collapse=true`` the run ends (checkpoint saved, exit status :data:`EXIT_COLLAPSED`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslbench.errors import SslbenchError
from sslbench.pretrain.config import CollapseConfig

EXIT_COLLAPSED = 3  # `sslbench pretrain` ended by stop_on_collapse (2: bad input, 143: a stop signal)
ADVICE = (
    "usually FT's positive extrapolation (ft.target=pos/posneg) at small scale, or a too high lr; "
    "try ft.target=neg ft.dim_mask=neg, a later ft.start_epoch, or a lower optim.lr"
)


def score_gap(row: dict[str, float]) -> float:
    """Mean positive minus mean negative plain MoCo score (before FT) of a logged row."""
    return row["before_ft_pos_mean"] - row["before_ft_neg_mean"]


@dataclass
class CollapseAlarm:
    """Counts the logged rows in a row that look collapsed; :meth:`observe` returns the alarm's record
    on the row where it fires (once per run, resumes included)."""

    cfg: CollapseConfig
    low_rows: int = 0
    fired: dict[str, Any] | None = None

    def observe(self, step: int, row: dict[str, float]) -> dict[str, Any] | None:
        if self.cfg.patience == 0 or self.fired is not None:
            return None
        output_std, gap = row["output_std"], score_gap(row)
        low = output_std < self.cfg.output_std_below and gap < self.cfg.gap_below
        self.low_rows = self.low_rows + 1 if low else 0
        if self.low_rows < self.cfg.patience:
            return None
        self.fired = {
            "step": step,
            "output_std": output_std,
            "feature_std": None if math.isnan(row.get("feature_std", math.nan)) else row["feature_std"],
            "pos_neg_gap": gap,
            "pos_mean": row["before_ft_pos_mean"],
            "neg_mean": row["before_ft_neg_mean"],
            "rows": self.low_rows,
            "thresholds": {"output_std_below": self.cfg.output_std_below, "gap_below": self.cfg.gap_below},
        }
        return self.fired

    def state_dict(self) -> dict[str, Any]:
        return {"low_rows": self.low_rows, "fired": self.fired}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.low_rows, self.fired = int(state.get("low_rows", 0)), state.get("fired")


def warning_line(record: dict[str, Any]) -> str:
    """The one line a person reads in the log when the alarm fires."""
    return (
        f"sslbench pretrain: warning: collapse at step {record['step']}: output std x sqrt(D) "
        f"{record['output_std']:.3f}, pos/neg {record['pos_mean']:.3f}/{record['neg_mean']:.3f} "
        f"(gap {record['pos_neg_gap']:.3f}) for {record['rows']} logged rows; {ADVICE}"
    )


def run_log_line(record: dict[str, Any]) -> str:
    """The alarm as a comment line of config.yaml's header."""
    return (
        f"# collapse alarm at step {record['step']}: output_std {record['output_std']:.4f}, "
        f"pos_neg_gap {record['pos_neg_gap']:.4f}\n"
    )


class PretrainingCollapsed(SslbenchError):
    """``stop_on_collapse=true`` ended the run when the collapse alarm fired; its checkpoint is saved."""

    def __init__(self, checkpoint: Path, record: dict[str, Any]) -> None:
        super().__init__(
            f"stopped at step {record['step']} by the collapse alarm (stop_on_collapse=true); "
            f"saved {checkpoint}"
        )
        self.checkpoint, self.record = checkpoint, record
