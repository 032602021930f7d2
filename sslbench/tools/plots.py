"""Figures: positive/negative score curves of pretraining runs, as in the FT paper (Zhu et al. 2021, Fig. 2).

Four panels (mean and variance of the positive scores, mean and variance of the negative scores)
against the training step; one colour per run, solid for the scores trained on (after FT), dashed
for the plain MoCo scores of the same step where FT changed them. Two more: the collapse metric
(projector output solid, backbone features dashed) and the online kNN monitor's top-1. A dotted
vertical line in every panel marks the step where a run's collapse alarm fired.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sslbench.atomic import atomic_path
from sslbench.pretrain.scores import read_scores

PANELS = (
    ("pos_mean", "positive score: mean"),
    ("pos_var", "positive score: variance"),
    ("neg_mean", "negative scores: mean"),
    ("neg_var", "negative scores: variance"),
)


def plot_scores(runs: Sequence[str | Path], output: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Draw the score curves of ``runs`` (run folders or their ``scores.csv``) into the PNG ``output``."""
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    tables = [read_scores(run) for run in runs]
    names = list(labels) if labels else [_run_name(Path(run)) for run in runs]
    figure = Figure(figsize=(11, 10))
    FigureCanvasAgg(figure)  # the Agg backend, without pyplot's global state
    axes = figure.subplots(3, 2, sharex=True)
    colours = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (table, name) in enumerate(zip(tables, names, strict=True)):
        colour = colours[i % len(colours)]
        ft_changed = any(
            not np.allclose(table[f"before_ft_{stat}"], table[f"after_ft_{stat}"], equal_nan=True)
            for stat, _ in PANELS
        )
        for axis, (stat, title) in zip(axes.flat[:4], PANELS, strict=True):
            _curve(axis, table, f"after_ft_{stat}", color=colour, label=name)
            if ft_changed:
                _curve(
                    axis,
                    table,
                    f"before_ft_{stat}",
                    color=colour,
                    linestyle="--",
                    label=f"{name} (before FT)",
                )
            axis.set_title(title)
        _curve(axes[2, 0], table, "output_std", color=colour, label=f"{name} (projector)")
        _curve(
            axes[2, 0],
            table,
            "feature_std",
            color=colour,
            linestyle="--",
            marker=".",
            label=f"{name} (backbone)",
        )
        _curve(axes[2, 1], table, "knn_top1", color=colour, marker="o", label=name)
        if "collapse_alarm" in table:
            for step in table.loc[table["collapse_alarm"] == 1, "step"]:
                for axis in axes.flat:
                    axis.axvline(step, color=colour, linestyle=":", label=f"{name}: collapse alarm")
    axes[2, 0].set_title("collapse: std of normalised outputs x sqrt(D)")
    if axes[2, 0].get_legend_handles_labels()[0]:  # tables written before the metric have none
        axes[2, 0].legend(fontsize="small")
    axes[2, 1].set_title("online kNN monitor: top-1 (%)")
    for axis in axes[2]:
        axis.set_xlabel("iteration")
    axes.flat[0].legend(fontsize="small")
    figure.tight_layout()
    output = Path(output)
    with atomic_path(output) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return output


def _curve(axis: Axes, table: pd.DataFrame, column: str, **style: object) -> None:
    """``column`` against the step, skipping the rows without it (a table may lack the column)."""
    if column not in table:
        return
    rows = table[["step", column]].dropna()
    if len(rows):
        axis.plot(rows["step"], rows[column], **style)  # type: ignore[arg-type]


def _run_name(path: Path) -> str:
    return path.name if path.is_dir() else path.parent.name
