"""Seeing pretraining as it happens: the collapse metric and alarm, the online kNN monitor,
TensorBoard scalars, and FT switched off training plain MoCo bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from sslbench.cli import main
from sslbench.pretrain.alarm import EXIT_COLLAPSED, CollapseAlarm
from sslbench.pretrain.config import CollapseConfig, load_pretrain_config
from sslbench.pretrain.scores import collapse_metric, read_scores
from sslbench.pretrain.train import run_pretraining

# The tiny configs made cheaper where the behaviour still shows: 16 px views (4x fewer pixels) of 480
# digits, one epoch of 30 steps of 16 images, a row every 2 steps. (The ImageNet stem, 16x cheaper
# again, does not collapse within an epoch: the small stem is part of the tiny posneg recipe.)
FAST = ["augment.size=16", "data.max_images=480", "log_every=2"]
STEPS = 30


def test_collapse_metric_is_about_one_on_random_unit_vectors_and_zero_on_identical_ones():
    torch.manual_seed(0)
    spread = torch.nn.functional.normalize(torch.randn(4096, 128), dim=1)
    assert collapse_metric(spread).item() == pytest.approx(1.0, abs=0.02)
    # scale does not matter: the rows are normalised first
    assert collapse_metric(spread * 7.0).item() == pytest.approx(collapse_metric(spread).item(), rel=1e-5)
    assert collapse_metric(torch.randn(1, 128).repeat(64, 1)).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        collapse_metric(torch.randn(1, 8))


def _row(output_std: float, pos: float, neg: float) -> dict[str, float]:
    return {"output_std": output_std, "before_ft_pos_mean": pos, "before_ft_neg_mean": neg}


def test_collapse_alarm_fires_once_after_patience_rows_in_a_row_below_both_thresholds():
    alarm = CollapseAlarm(CollapseConfig(output_std_below=0.05, gap_below=0.02, patience=2))
    assert alarm.observe(2, _row(0.01, 0.99, 0.98)) is None  # 1 row
    assert alarm.observe(4, _row(0.01, 0.99, 0.90)) is None  # gap recovers: the count restarts
    assert alarm.observe(6, _row(0.30, 0.99, 0.985)) is None  # spread outputs: not collapse
    assert alarm.observe(8, _row(0.01, 0.99, 0.985)) is None
    fired = alarm.observe(10, _row(0.02, 0.995, 0.99))
    assert fired is not None and fired["step"] == 10 and fired["pos_neg_gap"] == pytest.approx(0.005)
    assert alarm.observe(12, _row(0.01, 0.99, 0.99)) is None  # once per run
    off = CollapseAlarm(CollapseConfig(patience=0))
    assert all(off.observe(s, _row(0.0, 1.0, 1.0)) is None for s in range(5))


def test_collapse_alarm_fires_on_the_tiny_posneg_run_within_its_first_epoch_and_stops_it(tmp_path, capsys):
    out = tmp_path / "posneg"
    args = ["pretrain", "--config", "mocov2_ft_tiny", "--out", str(out), *FAST, "stop_on_collapse=true"]
    assert main(args) == EXIT_COLLAPSED
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning: collapse at step" in line]
    assert len(warnings) == 1 and "ft.target=neg" in warnings[0]
    assert "stopped at step" in err and "stop_on_collapse" in err
    scores = read_scores(out)
    fired = scores.loc[scores["collapse_alarm"] == 1, "step"].tolist()
    assert len(fired) == 1 and fired[0] < STEPS  # within the first epoch
    state = torch.load(out / "checkpoint_last.pth", map_location="cpu", weights_only=False)
    assert state["collapse_alarm"]["step"] == fired[0] == state["global_step"]
    header = (out / "config.yaml").read_text().splitlines()[0]
    assert header.startswith(f"# collapse alarm at step {fired[0]}:")
    # the alarm row is a collapse by both signs: outputs near one point, positives no closer than negatives
    row = scores[scores["step"] == fired[0]].iloc[0]
    assert row["output_std"] < 0.05 and row["before_ft_pos_mean"] - row["before_ft_neg_mean"] < 0.02
    # plot-scores draws the metric and marks the alarm
    assert main(["plot-scores", str(out)]) == 0
    with Image.open(out / "scores.png") as png:
        assert png.format == "PNG"


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    """The tiny plain MoCo v2 run, one epoch, with the kNN monitor and TensorBoard on."""
    out = tmp_path_factory.mktemp("plain") / "run"
    args = ["pretrain", "--config", "mocov2_tiny", "--out", str(out), *FAST]
    assert main([*args, "monitor.every=1", "logging.tensorboard=true", "collapse.feature_every=4"]) == 0
    return out


def test_collapse_alarm_never_fires_on_the_tiny_plain_run(plain_run: Path):
    scores = read_scores(plain_run)
    assert scores["collapse_alarm"].fillna(0).eq(0).all()
    state = torch.load(plain_run / "checkpoint_last.pth", map_location="cpu", weights_only=False)
    assert state["collapse_alarm"] is None
    # the backbone metric was measured every 4 steps: rows 4, 8... hold it, rows 2, 6... do not
    rows = scores.dropna(subset=["loss"]).set_index("step")
    assert rows["feature_std"].notna().tolist() == [s % 4 == 0 for s in rows.index]
    assert ((rows["output_std"] > 0) & (rows["output_std"] <= 1.0)).all()


def test_knn_monitor_top1_equals_sslbench_knn_on_the_same_checkpoint_and_split(plain_run: Path, tmp_path):
    scores = read_scores(plain_run)
    monitored = scores.dropna(subset=["knn_top1"])
    assert monitored["step"].tolist() == [STEPS]
    record_dir = tmp_path / "records"
    args = ["knn", str(plain_run / "checkpoint_last.pth"), "--dataset", "digits"]
    args += ["--image-size", "16", "--batch-size", "256", "--workers", "0", "--no-cache"]
    assert main([*args, "--knn", "20:0.07", "--out", str(record_dir)]) == 0
    record = json.loads((record_dir / "result.json").read_text())
    assert monitored["knn_top1"].iloc[0] == pytest.approx(record["metrics"]["top1"], abs=1e-9)
    lines = [json.loads(line) for line in (plain_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["knn_top1"] for line in lines if "knn_top1" in line] == monitored["knn_top1"].tolist()


def test_every_logged_value_is_a_tensorboard_scalar_read_back_by_tensorboard(plain_run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((plain_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(plain_run / "tensorboard"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    lines = [json.loads(line) for line in (plain_run / "metrics.jsonl").read_text().splitlines()]
    logged = {f"pretrain/{k}" for line in lines for k, v in line.items() if k not in ("time", "run", "step")}
    logged -= {f"pretrain/{k}" for line in lines for k, v in line.items() if v is None}
    assert logged <= tags
    loss = {e.step: e.value for e in accumulator.Scalars("pretrain/loss")}
    expected = {line["step"]: line["loss"] for line in lines if line.get("loss") is not None}
    assert loss.keys() == expected.keys()
    assert all(math.isclose(loss[s], expected[s], rel_tol=1e-6) for s in expected)
    assert [e.step for e in accumulator.Scalars("pretrain/knn_top1")] == [STEPS]


def _state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {k: state[k] for k in ("model", "optimizer", "rng", "scores", "epoch", "global_step")}


def _assert_identical(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


def test_ft_off_trains_plain_moco_bit_for_bit_and_the_knn_monitor_changes_nothing(tmp_path):
    # 2 epochs of 2 steps (batch 16 of 32 digits): an epoch boundary and a logged row in each epoch
    small = ["moco.arch=resnet18", "augment.size=16", "data.max_images=32", "epochs=2", "log_every=3"]
    runs = {
        "plain": ("mocov2_tiny", []),
        # the kNN monitor after each epoch must not move the run either (RNG, BN statistics)
        "disabled": ("mocov2_ft_tiny", ["ft.enabled=false", "monitor.every=1"]),
        "late": ("mocov2_ft_tiny", ["ft.start_epoch=2"]),  # FT would start after the last epoch
    }
    states = {}
    for name, (config, overrides) in runs.items():
        path = run_pretraining(load_pretrain_config(config, [f"out={tmp_path / name}", *small, *overrides]))
        states[name] = _state(path)
    assert states["plain"]["global_step"] == 4
    _assert_identical(states["plain"], states["disabled"], "disabled")
    _assert_identical(states["plain"], states["late"], "late")
    # and FT on from the start does train differently (the comparison can fail)
    on = run_pretraining(load_pretrain_config("mocov2_ft_tiny", [f"out={tmp_path / 'on'}", *small]))
    assert not torch.equal(_state(on)["model"]["queue"], states["plain"]["model"]["queue"])
    # the saved configs differ only in the FT section
    plain_cfg = yaml.safe_load((tmp_path / "plain" / "config.yaml").read_text())
    late_cfg = yaml.safe_load((tmp_path / "late" / "config.yaml").read_text())
    assert {k for k in plain_cfg if plain_cfg[k] != late_cfg[k]} == {"out", "ft"}
    assert read_scores(tmp_path / "disabled")["knn_top1"].notna().sum() == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("collapse.patience=-1", "collapse.patience=-1"),
        ("collapse.feature_every=-5", "collapse.feature_every=-5"),
        ("collapse.gap_below=nan", "collapse.gap_below=nan"),
        ("monitor.every=-1", "monitor.every=-1"),
        ("monitor.batch_size=0", "monitor.batch_size=0"),
        ("monitor.image_size=4", "monitor.image_size=4"),
        ("monitor.dataset=no-such-set", "no-such-set"),
        ("stop_on_collapse=maybe", "stop_on_collapse"),
    ],
)
def test_bad_diagnostics_options_are_one_line_errors(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["pretrain", "--config", "mocov2_tiny", "--out", str(out), "monitor.every=1", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (out / "checkpoint_last.pth").exists()


def test_monitor_on_a_missing_root_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    args = ["pretrain", "--config", "mocov2_tiny", "--out", str(tmp_path / "run"), "monitor.every=1"]
    assert main([*args, "monitor.dataset=imagefolder", f"monitor.root={missing}"]) == 2
    first = capsys.readouterr().err.strip().splitlines()[0]  # then the expected layout
    assert "monitor.root" in first and str(missing) in first


def test_plot_scores_still_reads_tables_written_before_the_collapse_metric(tmp_path, capsys):
    from sslbench.pretrain.scores import REQUIRED_COLUMNS

    run = tmp_path / "old_run"
    run.mkdir()
    rows = [{c: 0.5 for c in REQUIRED_COLUMNS} | {"step": s, "epoch": 0} for s in (2, 4, 6)]
    pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS)).to_csv(run / "scores.csv", index=False)
    assert main(["plot-scores", str(run)]) == 0
    assert (run / "scores.png").is_file() and str(run / "scores.png") in capsys.readouterr().out
