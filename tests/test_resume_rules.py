"""One resume rule for every training command: a changed setting is refused by name unless
``--allow-config-change`` (then recorded with its step); a damaged state is one line naming the file.
Also what a cluster user reads: plain progress lines, ``OUT/metrics.jsonl``, TensorBoard scalars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslbench.cli import main
from sslbench.data import fixtures
from sslbench.models.resnet import build_backbone
from sslbench.pretrain.config import load_pretrain_config
from sslbench.tools.records import read_record

# 64 digits, batch 16: 4 steps in one epoch; score rows at steps 3 and 4 (the epoch's end)
PRETRAIN = ["data.max_images=64", "batch_size=16", "moco.queue_size=64", "moco.bn_splits=2"]
PRETRAIN += ["augment.size=16", "epochs=1", "log_every=3", "data.workers=0"]


def _one_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(autouse=True)
def _plain_lines_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLBENCH_LOG_SECONDS", "0")


def test_pretrain_resume_refuses_a_changed_setting_by_name_unless_allowed_and_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    base = ["pretrain", "--config", "mocov2_tiny", "--out", str(out), *PRETRAIN]
    assert main(base) == 0
    err = capsys.readouterr().err
    # stderr is not a terminal here: plain lines with step, images/s and ETA, no carriage returns
    assert "\r" not in err and "pretrain: step 4/4  " in err and "images/s  ETA " in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["run"], r["step"]) for r in rows] == [("pretrain", 3), ("pretrain", 4)]
    assert all(isinstance(r["loss"], float) for r in rows)

    checkpoint = out / "checkpoint_last.pth"
    before = checkpoint.read_bytes()
    assert main([*base, "moco.temperature=0.1", "seed=3", "--resume"]) == 2
    _one_line(
        capsys.readouterr().err,
        str(checkpoint),
        "config.moco.temperature 0.2 -> 0.1",
        "config.seed 0 -> 3",
        "--allow-config-change",
    )
    assert checkpoint.read_bytes() == before

    assert main([*base, "epochs=2", "--resume", "--allow-config-change"]) == 0
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == 8 and state["config_changes"] == [
        {"step": 4, "changes": {"config.epochs": [1, 2]}}
    ]
    config_yaml = out / "config.yaml"
    assert config_yaml.read_text().startswith(
        '# resumed at step 4 with changes (key: [before, after]): {"config.epochs": [1, 2]}'
    )
    assert load_pretrain_config(config_yaml).epochs == 2  # still a loadable config


@pytest.mark.parametrize("content", [b"", b"not a zip file", b"PK\x03\x04 truncated"])
def test_pretrain_resume_from_a_damaged_checkpoint_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint_last.pth").write_bytes(content)
    assert main(["pretrain", "--config", "mocov2_tiny", "--out", str(out), *PRETRAIN, "--resume"]) == 2
    _one_line(capsys.readouterr().err, str(out / "checkpoint_last.pth"), "damaged")


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_bad_log_interval_is_one_line_naming_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SSLBENCH_LOG_SECONDS", value)
    assert main(["pretrain", "--config", "mocov2_tiny", "--out", str(tmp_path / "run"), *PRETRAIN]) == 2
    _one_line(capsys.readouterr().err, "SSLBENCH_LOG_SECONDS")
    assert not (tmp_path / "run" / "checkpoint_last.pth").exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "backbone.pth"
    torch.save(build_backbone("resnet18_small_stem").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "in"
    fixtures.write_imagefolder(root, num_classes=3, per_class=6, size=16)
    return root


def _command(name: str, checkpoint: Path, folder: Path, out: Path) -> list[str]:
    """``name`` on the small ImageFolder: batch 4 of 16 px images, no workers."""
    data = ["--dataset", "imagefolder", "--root", str(folder), "--out", str(out)]
    return [name, str(checkpoint), *data, "--batch-size", "4", "--image-size", "16", "--workers", "0"]


def _linear(checkpoint: Path, folder: Path, out: Path, *extra: str) -> list[str]:
    sgd = ["--protocol", "sgd", "--epochs", "2", "--no-cache"]
    return [*_command("linear", checkpoint, folder, out), *sgd, *extra]


def test_linear_sgd_rerun_with_another_lr_is_refused_unless_allowed_and_tensorboard_gets_scalars(
    checkpoint: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "sgd"
    assert main(_linear(checkpoint, folder, out, "--lr", "0.1", "--tensorboard")) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["run"], r["step"]) for r in rows] == [("linear", 1), ("linear", 2)]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    capsys.readouterr()

    state = out / "linear_state.pth"
    assert main(_linear(checkpoint, folder, out, "--lr", "0.2")) == 2
    _one_line(capsys.readouterr().err, str(state), "settings.lr 0.1 -> 0.2", "--allow-config-change")
    assert (
        main(_linear(checkpoint, folder, out, "--lr", "0.2", "--epochs", "3", "--allow-config-change")) == 0
    )
    record = read_record(out / "result.json")
    assert record.extra["resumed_from_epoch"] == 2 and len(record.extra["history"]) == 3
    assert record.extra["config_changes"][0]["step"] == 2
    assert record.extra["config_changes"][0]["changes"]["settings.lr"] == [0.1, 0.2]

    capsys.readouterr()
    state.write_bytes(b"garbage")
    assert main(_linear(checkpoint, folder, out, "--lr", "0.2", "--epochs", "3")) == 2
    _one_line(capsys.readouterr().err, str(state), "damaged")


def _finetune(checkpoint: Path, folder: Path, out: Path, *extra: str) -> list[str]:
    one_point = ["--steps", "2", "--grid-lr", "0.01", "--grid-wd", "0"]
    return [*_command("finetune", checkpoint, folder, out), *one_point, *extra]


@pytest.mark.parametrize("damaged", ["grid/00_lr0.01_wd0/point.json", "final/state.pth"])
def test_finetune_resume_with_a_damaged_piece_is_one_line_naming_it(
    checkpoint: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: str
) -> None:
    out = tmp_path / "ft"
    (out / Path(damaged).parent).mkdir(parents=True)
    (out / damaged).write_text("{not json" if damaged.endswith(".json") else "garbage")
    (out / "grid").mkdir(exist_ok=True)
    assert main(_finetune(checkpoint, folder, out, "--resume")) == 2
    err = capsys.readouterr().err  # the final run's state is read after the grid point ran
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("sslbench finetune: error: ")
    _one_line(err.strip().splitlines()[-1], str(out / damaged), "damaged")


def test_finetune_prints_an_eta_for_the_whole_protocol_and_logs_every_run(
    checkpoint: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ft"
    assert main(_finetune(checkpoint, folder, out)) == 0
    err = capsys.readouterr().err
    # one grid point of 2 steps on train, then the final run of 2 steps on trainval
    assert (
        "fine-tune protocol: 2/4 steps done, ETA " in err
        and "fine-tune protocol: 4/4 steps done, ETA 0:00:00" in err
    )
    runs = [json.loads(line)["run"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert runs[0].startswith("00_lr0.01_wd0") and runs[-1] == "final" and len(runs) == 4


def test_linear_sgd_under_torchrun_on_two_cpu_ranks_writes_the_one_process_record(
    checkpoint: Path, folder: Path, tmp_path: Path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_linear(checkpoint, folder, one, "--lr", "0.1", "--device", "cpu")) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "sslbench", *_linear(checkpoint, folder, two, "--lr", "0.1", "--device", "cpu")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = read_record(one / "result.json"), read_record(two / "result.json")
    assert b.protocol["settings"]["world_size"] == 2 and a.protocol["settings"]["world_size"] == 1
    for x, y in zip(a.extra["history"], b.extra["history"], strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4) and x["train_top1"] == y["train_top1"]
    assert a.metrics == pytest.approx(b.metrics)
