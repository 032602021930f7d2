"""Pretraining parts without a model: score statistics, the score table, data order, views, lr schedule."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from sslbench.data.registry import build_dataset
from sslbench.errors import ConfigError, SslbenchError
from sslbench.pretrain.augment import SeededTwoCrops, moco_augmentation
from sslbench.pretrain.config import AugmentConfig, PretrainConfig, load_pretrain_config, validate
from sslbench.pretrain.scores import (
    SCORE_COLUMNS,
    TABLE_COLUMNS,
    ScoreAccumulator,
    ScoreTable,
    batch_score_stats,
    read_scores,
)
from sslbench.pretrain.train import EpochBatches, learning_rate


def _numpy_stats(scores: np.ndarray) -> list[float]:
    pos, neg = scores[:, 0], scores[:, 1:]
    return [pos.mean(), pos.var(ddof=1), neg.mean(axis=1).mean(), neg.var(axis=1, ddof=1).mean()]


def test_score_statistics_and_interval_means_match_numpy():
    rng = np.random.default_rng(0)
    steps = [rng.uniform(-1, 1, size=(5, 9)) for _ in range(3)]
    for scores in steps:
        np.testing.assert_allclose(
            batch_score_stats(torch.tensor(scores)).numpy(), _numpy_stats(scores), rtol=1e-6
        )
    acc = ScoreAccumulator("cpu")
    for i, scores in enumerate(steps):
        stats = batch_score_stats(torch.tensor(scores, dtype=torch.float32))
        feature_std = torch.tensor(0.5) if i == 1 else None  # measured on one step of three
        acc.add(torch.tensor(float(i)), stats, stats * 2, torch.tensor(0.1 * i), feature_std)
    row = acc.flush()
    expected = np.mean([_numpy_stats(s) for s in steps], axis=0)
    assert row["loss"] == pytest.approx(1.0)
    assert row["output_std"] == pytest.approx(0.1) and row["feature_std"] == pytest.approx(0.5)
    np.testing.assert_allclose([row[c] for c in SCORE_COLUMNS[:4]], expected, rtol=1e-5)
    np.testing.assert_allclose([row[c] for c in SCORE_COLUMNS[4:]], 2 * expected, rtol=1e-5)
    assert acc.steps == 0 and all(math.isnan(v) for v in acc.flush().values())


def test_score_table_appends_rows_and_drops_those_after_a_resumed_step(tmp_path):
    table = ScoreTable(tmp_path / "scores.csv")
    for step in (2, 4, 6):
        table.append({c: float(step) for c in TABLE_COLUMNS})
    assert list(read_scores(tmp_path).step) == [2, 4, 6]
    table.truncate_after(4)
    frame = read_scores(tmp_path / "scores.csv")
    assert list(frame.columns) == list(TABLE_COLUMNS) and list(frame.step) == [2, 4]
    pd.DataFrame({"step": [1]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(SslbenchError, match="missing columns"):
        read_scores(tmp_path / "other.csv")
    with pytest.raises(SslbenchError, match="no score table"):
        read_scores(tmp_path / "absent")


def test_epoch_batches_split_whole_global_batches_over_ranks_and_skip_done_steps():
    ranks = [list(EpochBatches(50, 12, epoch=3, seed=0, rank=r, world=2)) for r in range(2)]
    assert [len(r) for r in ranks] == [4, 4] and all(len(b) == 6 for r in ranks for b in r)
    seen = [i for r in ranks for b in r for (_, i) in b]
    assert len(set(seen)) == 48 and all(e == 3 for r in ranks for b in r for (e, _) in b)
    assert list(EpochBatches(50, 12, epoch=3, seed=0, rank=1, world=2, skip=3)) == ranks[1][3:]
    assert list(EpochBatches(50, 12, epoch=4, seed=0)) != list(EpochBatches(50, 12, epoch=3, seed=0))


def test_views_depend_only_on_seed_epoch_and_index_and_leave_the_global_rng_alone():
    images = build_dataset("digits", None, "trainval")
    views = SeededTwoCrops(images, moco_augmentation(AugmentConfig(size=32)), seed=0, limit=10)
    assert len(views) == 10
    state = torch.get_rng_state()
    q, k = views[(0, 3)]
    assert torch.equal(torch.get_rng_state(), state)
    assert q.shape == (3, 32, 32) and not torch.equal(q, k)
    q_again, k_again = views[(0, 3)]
    assert torch.equal(q, q_again) and torch.equal(k, k_again)
    assert not torch.equal(views[(1, 3)][0], q)


def test_learning_rate_scales_with_the_batch_and_follows_the_schedule():
    cfg = PretrainConfig(epochs=200, batch_size=512)
    assert learning_rate(cfg, 0) == pytest.approx(0.06)
    assert learning_rate(cfg, 100) == pytest.approx(0.03)
    cfg.optim.schedule = "step"
    assert [learning_rate(cfg, e) for e in (0, 119, 120, 160)] == pytest.approx([0.06, 0.06, 0.006, 0.0006])


def test_shipped_configs_load_and_follow_the_papers():
    v1, v2 = load_pretrain_config("mocov1"), load_pretrain_config("mocov2")
    assert (v1.moco.temperature, v1.moco.mlp, v1.optim.schedule, v1.augment.recipe) == (
        0.07,
        False,
        "step",
        "mocov1",
    )
    assert (v2.moco.temperature, v2.moco.mlp, v2.optim.schedule, v2.augment.recipe) == (
        0.2,
        True,
        "cosine",
        "mocov2",
    )
    for cfg in (v1, v2):
        assert (cfg.moco.queue_size, cfg.moco.momentum, cfg.optim.lr, cfg.batch_size) == (
            65536,
            0.999,
            0.03,
            256,
        )
        assert not cfg.ft.enabled and cfg.data.dataset == "imagefolder"
    for name in ("mocov1_ft", "mocov2_ft", "mocov2_ft_tiny"):
        ft = load_pretrain_config(name).ft
        assert ft.enabled and (ft.target, ft.alpha_pos, ft.alpha_neg, ft.dim_mask) == (
            "posneg",
            2.0,
            1.6,
            "none",
        )
        assert ft.extrapolate and not ft.renormalize and ft.distribution == "beta"
    tiny = load_pretrain_config("mocov2_tiny", ["data.root=/data", "out=/tmp/x", "epochs=7"])
    assert (tiny.moco.arch, tiny.augment.size, tiny.epochs, tiny.data.root) == (
        "resnet18_small_stem",
        32,
        7,
        "/data",
    )
    validate(tiny)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ft.dim_mask=all"], "ft.dim_mask"),
        (["moco.queue_size=100"], "multiple of batch_size"),
        (["moco.bn_splits=5"], "moco.bn_splits"),
        (["moco.arch=vit"], "moco.arch"),
    ],
)
def test_bad_values_are_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_pretrain_config("mocov2_tiny", overrides))
