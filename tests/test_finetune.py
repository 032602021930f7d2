"""``sslbench finetune``: grid on val, retrain on train+val, resume, and the training loop's guarantees."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode

from sslbench.checkpoints.readers import read_checkpoint
from sslbench.cli import main, parse_command_line
from sslbench.config import config_to_dict, load_config, resolve_config_path
from sslbench.data import fixtures
from sslbench.data.base import ImageArray
from sslbench.data.transforms import train_transform
from sslbench.errors import CheckpointError
from sslbench.evaluate.finetune import (
    CoreTuningSettings,
    FinetuneModel,
    RunSettings,
    build_finetune_model,
    finetune,
)
from sslbench.evaluate.finetune_cli import run_finetune
from sslbench.evaluate.finetune_grid import FinetuneConfig, ssl_transfer_grid
from sslbench.models.resnet import build_backbone
from sslbench.tools import records
from sslbench.tools.records import read_record

ARCH = "resnet18_small_stem"
SMALL = ["--steps", "2", "--batch-size", "8", "--image-size", "16", "--workers", "0"]
GRID = ["--grid-lr", "0.05", "0.005", "--grid-wd", "0", "1e-3"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small-stem ResNet-18 backbone state dict with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = build_backbone(ARCH)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "backbone.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.write_cub(tmp_path_factory.mktemp("data"), num_classes=4, per_class=6, size=32).root


def _args(checkpoint: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "finetune",
        str(checkpoint),
        "--dataset",
        "cub200",
        "--root",
        str(root),
        "--out",
        str(out),
        *SMALL,
        *extra,
    ]


def _backbone_checker(checkpoint: Path, log: list[tuple[int, int]]):
    """``on_step``: at step 0 of every run the backbone must equal the checkpoint file (read here
    independently of the command); logs (run, first step seen)."""
    reference = torch.load(checkpoint, weights_only=True)

    def on_step(step: int, model) -> None:
        if not log or log[-1][1] >= step:
            log.append((len(log), step))
        if step == 0:
            current = model.backbone.state_dict()
            assert set(current) == set(reference)
            assert all(torch.equal(current[k], v) for k, v in reference.items())

    return on_step


def test_ce_grid_resumes_after_a_kill_picks_the_best_val_point_and_retrains_on_trainval(
    checkpoint: Path, cub_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "ce"
    args = _args(checkpoint, cub_root, out, *GRID, "--save-every", "1")
    first: list[tuple[int, int]] = []
    check = _backbone_checker(checkpoint, first)

    def killed_in_third_point(step: int, model) -> None:
        check(step, model)
        if len(first) == 3 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(parse_command_line(args), on_step=killed_in_third_point)
    points = sorted((out / "grid").iterdir())
    assert [(p / "point.json").is_file() for p in points] == [True, True, False]
    assert torch.load(points[2] / "state.pth", weights_only=True)["step"] == 1

    assert main(args) == 2  # a folder holding a run is not silently reused
    assert "--resume" in capsys.readouterr().err

    second: list[tuple[int, int]] = []
    run_finetune(
        parse_command_line([*args, "--resume"]), on_step=_backbone_checker(checkpoint, second)
    )
    # points 0 and 1 are skipped, point 2 continues from step 1, point 3 and the final run start at 0
    assert [step for _, step in second] == [1, 0, 0]

    record = read_record(out / "result.json")
    grid = record.extra["grid"]
    assert record.task == "finetune" and record.protocol["name"] == "finetune-ssl-transfer-ce"
    assert [(row["lr"], row["weight_decay"]) for row in grid] == [
        (0.05, 0.0),
        (0.05, 1e-3),
        (0.005, 0.0),
        (0.005, 1e-3),
    ]
    assert [row["skipped"] for row in grid] == [True, True, False, False]
    best = grid[int(np.argmax([row["val_top1"] for row in grid]))]  # cub200 selects on top-1; first best wins
    assert record.extra["chosen"] == {"lr": best["lr"], "weight_decay": best["weight_decay"]}
    settings = record.protocol["settings"]
    assert (settings["lr"], settings["weight_decay"]) == (best["lr"], best["weight_decay"])
    assert settings["steps_run"] == 2 and settings["final_train_split"] == "trainval"
    assert record.dataset["split"] == "test" and record.dataset["train_split"] == "trainval"
    assert record.dataset["num_train"] == 16 and record.dataset["num_test"] == 8
    # 4 classes x 4 trainval images: round(0.2 * 4) = 1 of each class held out for val
    assert record.dataset["sizes"] == {"train": 12, "val": 4, "trainval": 16, "test": 8}
    assert record.dataset["val_split"] == "stratified 20% of trainval held out, seed 0 (sslbench.data.splits)"
    # an explicit grid ran: no grid_size is claimed, the lists are recorded
    assert settings["grid_size"] is None and settings["grid"].startswith("explicit")
    assert (settings["grid_lr"], settings["grid_wd"]) == ([0.05, 0.005], [0.0, 1e-3])
    assert settings["last_partial_batch"].startswith("dropped")
    assert set(record.metrics) == {"top1", "top5", "mean_per_class"}
    assert json.loads((points[2] / "point.json").read_text())["resumed_from_step"] == 1
    assert not any((p / "state.pth").exists() for p in points)

    kept = read_checkpoint(record.extra["best_checkpoint"])
    assert kept.arch == ARCH and kept.source_format == "sslbench"
    stored = torch.load(record.extra["best_checkpoint"], weights_only=True)
    assert stored["model"]["classifier.weight"].shape == (4, 512)
    assert (stored["lr"], stored["weight_decay"]) == (best["lr"], best["weight_decay"])
    original = torch.load(checkpoint, weights_only=True)
    assert not torch.equal(kept.state_dict["conv1.weight"], original["conv1.weight"]), (
        "the backbone was trained"
    )


def test_coretuning_runs_the_grid_and_writes_a_valid_record(
    checkpoint: Path, cub_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "core"
    log: list[tuple[int, int]] = []
    stamps: list[str] = []

    def clock() -> str:  # a clock that ticks once per reading
        stamps.append(f"2026-01-01T00:00:{len(stamps):02d}+00:00")
        return stamps[-1]

    monkeypatch.setattr(records, "utc_now", clock)
    args = parse_command_line(_args(checkpoint, cub_root, out, *GRID, "--method", "coretuning"))
    assert run_finetune(args, on_step=_backbone_checker(checkpoint, log)) == 0
    assert [step for _, step in log] == [
        0
    ] * 5  # four grid points and the final run, each from the checkpoint
    record = read_record(out / "result.json")
    grid = record.extra["grid"]
    assert record.protocol["name"] == "finetune-ssl-transfer-coretuning"
    assert "Core-tuning" in record.protocol["source"]
    assert record.protocol["settings"]["coretuning"] == {
        "eta": 0.1,
        "alpha": 1.0,
        "temperature": 0.07,
        "min_negative_lambda": 0.8,
        "contrast_dim": 256,
        "mixing": True,
        "reduction": "reference",  # under which the published eta = 0.1 holds
        "positives": "own",
        "ce_mean": "joint",
    }
    # started when the command began (the first reading), finished when the record was written
    assert record.started_at == stamps[0] and record.finished_at == stamps[-1] != stamps[0]
    best = grid[int(np.argmax([row["val_top1"] for row in grid]))]
    assert record.extra["chosen"] == {"lr": best["lr"], "weight_decay": best["weight_decay"]}
    history = record.extra["history"]
    assert history[-1]["step"] == 2 and history[-1]["contrastive"] > 0 and history[-1]["ce"] > 0
    stored = torch.load(out / "best.pth", weights_only=True)["model"]
    assert "classifier.bias" not in stored and stored["contrast_head.output.weight"].shape == (256, 512)


def test_coretuning_variant_options_reach_the_loss_and_the_record(
    checkpoint: Path, cub_root: Path, tmp_path: Path, capsys
) -> None:
    variant = ["coretuning.reduction=paper", "coretuning.positives=same_class", "coretuning.ce_mean=separate"]
    out = tmp_path / "variant"
    seen: list[tuple[str, str, str]] = []

    def on_step(step: int, model) -> None:
        seen.append((model.core.reduction, model.core.positives, model.core.ce_mean))

    args = _args(checkpoint, cub_root, out, "--lr", "0.01", "--wd", "0", "--method", "coretuning")
    assert run_finetune(parse_command_line([*args, *variant]), on_step=on_step) == 0
    assert seen == [("paper", "same_class", "separate")] * 2
    settings = read_record(out / "result.json").protocol["settings"]
    core = settings["coretuning"]
    assert (core["reduction"], core["positives"], core["ce_mean"]) == ("paper", "same_class", "separate")
    assert settings["grid_size"] is None and settings["grid"].startswith("none")
    assert "lr 0.01 wd 0 (given: no grid)" in capsys.readouterr().out  # not "chosen on val"

    for key, bad in (("reduction", "mean"), ("positives", "all"), ("ce_mean", "0"), ("reduction", "nan")):
        folder = tmp_path / f"bad_{key}_{bad}"
        assert (
            main(
                [
                    *_args(checkpoint, cub_root, folder, "--method", "coretuning"),
                    f"coretuning.{key}={bad}",
                ]
            )
            == 2
        )
        err = capsys.readouterr().err.strip()
        assert f"coretuning.{key} '{bad}' is not one of" in err and len(err.splitlines()) == 1
        assert not folder.exists()


def test_grid_record_claims_grid_size_only_where_the_ssl_transfer_grid_runs() -> None:
    assert FinetuneConfig().grid_record() == {
        "grid": "ssl-transfer: lr logspace(-4, -1, 4) x wd {0} U logspace(-6, -3, 4) / lr",
        "grid_size": 4,
        "grid_lr": [],
        "grid_wd": [],
    }
    explicit = FinetuneConfig(grid_lr=[0.1, 0.01], grid_wd=[0.0]).grid_record()
    assert explicit["grid_size"] is None and (explicit["grid_lr"], explicit["grid_wd"]) == (
        [0.1, 0.01],
        [0.0],
    )
    fixed = FinetuneConfig(lr=0.1, weight_decay=0.0, grid_lr=[0.5], grid_wd=[0.0]).grid_record()
    assert fixed == {
        "grid": "none: lr and weight_decay given",
        "grid_size": None,
        "grid_lr": [],
        "grid_wd": [],
    }


def _tiny_data() -> ImageArray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 20, 20, 3), dtype=np.uint8)
    labels = [i % 3 for i in range(12)]
    transform = train_transform(16, interpolation=InterpolationMode.BICUBIC)
    return ImageArray("tiny", "train", ["a", "b", "c"], images, labels, transform)


def _tiny_model():
    torch.manual_seed(1)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    torch.manual_seed(2)
    return FinetuneModel(backbone, 8, 3, "coretuning", CoreTuningSettings(contrast_dim=4))


def test_interrupted_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path: Path) -> None:
    settings = RunSettings(
        method="coretuning", lr=0.05, weight_decay=1e-4, steps=7, batch_size=5, save_every=2, seed=3
    )
    cpu = torch.device("cpu")
    straight = finetune(_tiny_model(), _tiny_data(), settings, cpu, progress=False).model.state_dict()

    state = tmp_path / "state.pth"

    def kill_at_step_5(step: int, model) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(_tiny_model(), _tiny_data(), settings, cpu, state, on_step=kill_at_step_5, progress=False)
    assert torch.load(state, weights_only=True)["step"] == 4  # mid-epoch: 12 samples make 2 batches of 5
    resumed = finetune(_tiny_model(), _tiny_data(), settings, cpu, state, progress=False)
    assert resumed.resumed_from == 4 and [h["step"] for h in resumed.history] == [2, 4, 6, 7]
    weights = resumed.model.state_dict()
    assert set(weights) == set(straight)
    assert all(torch.equal(weights[k], straight[k]) for k in straight), "resumed weights differ"


def test_data_order_and_augmentation_do_not_depend_on_the_worker_count() -> None:
    settings = RunSettings(method="coretuning", lr=0.05, weight_decay=0.0, steps=3, batch_size=5, seed=3)
    cpu = torch.device("cpu")
    inline = finetune(
        _tiny_model(), _tiny_data(), settings, cpu, workers=0, progress=False
    ).model.state_dict()
    pooled = finetune(
        _tiny_model(), _tiny_data(), settings, cpu, workers=2, progress=False
    ).model.state_dict()
    assert all(torch.equal(inline[k], pooled[k]) for k in inline)


def test_step_zero_check_refuses_a_backbone_that_is_not_the_checkpoints(checkpoint: Path) -> None:
    ckpt = read_checkpoint(checkpoint)
    model = build_finetune_model(ckpt, 4, "ce", CoreTuningSettings(), seed=0)
    other = {k: v.clone() for k, v in ckpt.state_dict.items()}
    other["layer4.1.bn2.running_var"] += 1
    settings = RunSettings(method="ce", lr=0.01, weight_decay=0.0, steps=1, batch_size=4)
    with pytest.raises(CheckpointError, match=r"layer4\.1\.bn2\.running_var"):
        finetune(model, _tiny_data(), settings, torch.device("cpu"), initial_backbone=other, progress=False)

    missing = dataclasses.replace(ckpt, state_dict={k: v for k, v in other.items() if k != "conv1.weight"})
    with pytest.raises(CheckpointError, match="does not load strictly"):
        build_finetune_model(missing, 4, "ce", CoreTuningSettings(), seed=0)


def test_ssl_transfer_grid_is_four_lrs_by_five_weight_decays_divided_by_lr() -> None:
    grid = ssl_transfer_grid(4)
    assert len(grid) == 20
    assert [lr for lr, _ in grid[::5]] == pytest.approx([0.1, 0.01, 0.001, 0.0001])
    assert [wd for _, wd in grid[:5]] == pytest.approx([0.0, 1e-5, 1e-4, 1e-3, 1e-2])
    assert [wd for _, wd in grid[15:]] == pytest.approx([0.0, 1e-2, 1e-1, 1.0, 10.0])


def test_cosine_schedule_matches_torch_cosine_annealing_stepped_every_step() -> None:
    settings = RunSettings(method="ce", lr=0.1, weight_decay=0.0, steps=10)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    for step in range(10):
        assert 0.1 * settings.lr_factor(step) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12)
        optimizer.step()
        reference.step()


def test_shipped_configs_load_and_the_vissl_schedule_resolves_to_steps() -> None:
    ssl = load_config(FinetuneConfig, resolve_config_path("ssl_transfer", "finetune")).check()
    assert config_to_dict(ssl) == config_to_dict(FinetuneConfig())  # the file states the defaults
    vissl = load_config(FinetuneConfig, resolve_config_path("inat18_vissl", "finetune")).check()
    assert vissl.grid_lr == [] and vissl.lr == 0.1
    run = vissl.run_settings(vissl.lr, vissl.weight_decay, num_samples=1000, seed=0)
    assert run.steps == 24 * 3 and run.milestones == [21, 42, 63]  # 3 steps per epoch of batch 256
    assert run.lr == pytest.approx(0.1) and run.schedule == "multistep" and run.nesterov
    assert [run.lr_factor(s) for s in (0, 20, 21, 42, 63, 71)] == pytest.approx(
        [1, 1, 0.1, 0.01, 0.001, 0.001]
    )
    half = load_config(FinetuneConfig, resolve_config_path("inat18_vissl", "finetune"), ["batch_size=128"])
    assert half.run_settings(0.1, 0.0, 1000, 0).lr == pytest.approx(0.05)  # linear scaling from batch 256
    assert math.isclose(ssl.run_settings(0.01, 0.0, 10, 0).steps, 5000)


def test_bad_settings_exit_2_with_one_line_naming_the_problem(
    checkpoint: Path, cub_root: Path, tmp_path: Path, capsys
) -> None:
    assert main(_args(checkpoint, cub_root, tmp_path / "a", "--lr", "0.1")) == 2
    assert "give both lr and weight decay" in capsys.readouterr().err
    assert main(_args(checkpoint, cub_root, tmp_path / "b", "--config", "nope")) == 2
    assert "config nope: no such file" in capsys.readouterr().err
    assert main(_args(checkpoint, cub_root, tmp_path / "c", "coretuning.eta=high")) == 2
    assert "could not be converted to Float (key coretuning.eta)" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")


@pytest.mark.gpu
def test_cuda_finetune_runs_with_bf16_autocast_and_channels_last(
    checkpoint: Path, cub_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gpu"
    args = _args(
        checkpoint, cub_root, out, "--lr", "0.01", "--wd", "0", "--method", "coretuning", "--device", "cuda"
    )
    assert main(args) == 0
    record = read_record(out / "result.json")
    assert record.protocol["settings"]["precision"] == "bf16-autocast"
    assert record.protocol["settings"]["device"].startswith("cuda")
    assert record.extra["grid"] == [] and record.protocol["settings"]["select_split"] is None


def test_torchrun_ddp_on_cpu_trains_on_two_ranks_and_sums_the_test_tally(
    checkpoint: Path, cub_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "sslbench",
        *_args(checkpoint, cub_root, out, "--lr", "0.01", "--wd", "0", "--device", "cpu"),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    record = read_record(out / "result.json")
    assert record.protocol["settings"]["world_size"] == 2 and record.extra["grid"] == []

    # the metrics summed over the two ranks' shards equal the kept model scored in one process
    from sslbench.data.registry import build_dataset
    from sslbench.data.transforms import lbfgs_transform
    from sslbench.evaluate.finetune import evaluate

    model = build_finetune_model(read_checkpoint(checkpoint), 4, "ce", CoreTuningSettings(), seed=0)
    model.load_state_dict(torch.load(out / "best.pth", weights_only=True)["model"])
    test = build_dataset("cub200", cub_root, "test", lbfgs_transform(16))
    assert evaluate(model, test, 4, torch.device("cpu"), progress=False) == record.metrics
