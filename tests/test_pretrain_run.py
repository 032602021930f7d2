"""End to end on the CPU: ``sslbench pretrain`` on the built-in digits, resume after SIGTERM, plot-scores."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sslbench.checkpoints import read_checkpoint
from sslbench.cli import main
from sslbench.models.resnet import build_backbone
from sslbench.pretrain.config import load_pretrain_config
from sslbench.pretrain.scores import REQUIRED_COLUMNS, read_scores
from sslbench.pretrain.train import PretrainingInterrupted, run_pretraining

# 16 px views, 64 images, batch 16: 4 steps an epoch, enough to cross an epoch and a log interval.
SMALL = [
    "data.max_images=64",
    "batch_size=16",
    "moco.queue_size=64",
    "moco.bn_splits=2",
    "augment.size=16",
    "epochs=2",
    "log_every=3",
]


def test_tiny_cpu_run_lowers_the_loss_and_writes_scores_and_an_inspectable_checkpoint(tmp_path, capsys):
    out = tmp_path / "mocov2_tiny"
    # the shipped tiny config (ResNet-18 small stem, 32 px views, batch 16) on 320 digits: 20 steps
    cfg = load_pretrain_config(
        "mocov2_tiny", [f"out={out}", "data.max_images=320", "epochs=1", "log_every=2"]
    )
    checkpoint = run_pretraining(cfg)
    assert checkpoint == out / "checkpoint_last.pth"

    table = read_scores(out)
    assert list(table.step) == list(range(2, 21, 2)) and (table.epoch == 0).all()
    # The loss first rises while the random initial queue is replaced by real keys (all alike under
    # a random encoder); once the queue holds only real keys, training must bring it down.
    filled = cfg.moco.queue_size // cfg.batch_size
    peak = table.loss[table.step >= filled].max()
    assert table.loss.iloc[-1] < peak - 0.05, table[["step", "loss"]].to_string()
    # every score and the projector's collapse metric in every row; the backbone's on steps N, 2N...
    # of collapse.feature_every (100: none in 20 steps), kNN top-1 only with the monitor on
    assert np.isfinite(table[[*REQUIRED_COLUMNS, "output_std"]].to_numpy()).all()
    assert table.feature_std.isna().all() and table.knn_top1.isna().all()
    assert (table.collapse_alarm == 0).all()
    assert (table.after_ft_pos_mean == table.before_ft_pos_mean).all()  # no FT in this config

    assert main(["inspect", str(checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["arch"]) == ("sslbench", "resnet18_small_stem")
    assert info["dropped"].keys() >= {"backbone_k", "projector_q", "projector_k", "queue"}
    canonical = read_checkpoint(checkpoint)
    raw = torch.load(checkpoint, weights_only=True)
    build_backbone(canonical.arch).load_state_dict(canonical.state_dict, strict=True)
    for key, value in canonical.state_dict.items():
        assert torch.equal(value, raw["model"][f"backbone_q.{key}"])
    assert (raw["epoch"], raw["step_in_epoch"], raw["global_step"]) == (1, 0, 20)
    assert raw["config"]["moco"]["queue_size"] == 128 and raw["optimizer"]["state"]
    assert (out / "config.yaml").is_file()


def test_resume_after_sigterm_ends_at_the_weights_of_an_uninterrupted_run(tmp_path, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_pretraining(load_pretrain_config("mocov2_ft_tiny", [f"out={full}", *SMALL]))

    def sigterm_at_step_5(step: int) -> None:
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    # with a DataLoader worker this time: the views must not depend on who makes them
    cut_cfg = load_pretrain_config("mocov2_ft_tiny", [f"out={cut}", *SMALL, "data.workers=1"])
    with pytest.raises(PretrainingInterrupted, match="--resume"):
        run_pretraining(cut_cfg, step_callback=sigterm_at_step_5)
    saved = torch.load(cut / "checkpoint_last.pth", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 1, 5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    # a second run into the same folder without --resume would lose it: refused
    args = ["pretrain", "--config", "mocov2_ft_tiny", "--out", str(cut), *SMALL, "data.workers=1"]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0

    a = torch.load(full / "checkpoint_last.pth", weights_only=True)
    b = torch.load(cut / "checkpoint_last.pth", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])
    assert (b["epoch"], b["step_in_epoch"], b["global_step"]) == (2, 0, 8)
    scores = read_scores(full)
    pd.testing.assert_frame_equal(scores, read_scores(cut))
    assert list(scores.step) == [3, 6, 8]
    assert (scores.after_ft_pos_mean < scores.before_ft_pos_mean).all(), "FT makes positives harder"

    png = tmp_path / "scores.png"
    assert main(["plot-scores", str(full), str(cut), "--out", str(png), "--labels", "full", "resumed"]) == 0
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1320, 1200)  # 3 x 2 panels
    assert main(["plot-scores", str(tmp_path), "--out", str(png)]) == 2
    assert "no score table" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ft.dim_mask=all"], "ft.dim_mask"),
        (["moco.queue_size=100"], "moco.queue_size=100 must be a multiple"),
        (["moco.depth=3"], "depth"),
        (["data.dataset=nope"], "unknown dataset 'nope'"),
    ],
)
def test_pretrain_command_reports_bad_input_in_one_line(tmp_path, capsys, overrides, message):
    assert main(["pretrain", *overrides, "--config", "mocov2_tiny", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _join_as_rank(rank: int, world: int, port: int) -> None:
    """The environment ``torchrun`` gives rank ``rank`` of ``world`` on this machine."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    _join_as_rank(rank, world, port)
    cfg = load_pretrain_config("mocov2_ft_tiny", [f"out={out}", *SMALL, "epochs=1", "log_every=2"])
    run_pretraining(cfg)


def test_two_process_ddp_run_on_gloo_trains_and_writes_one_checkpoint(tmp_path):
    """The DDP path on the CPU: cross-rank shuffle BN, gathered enqueue, all-reduced score rows."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    mp.spawn(_ddp_rank, args=(2, port, str(out)), nprocs=2, join=True)
    state = torch.load(out / "checkpoint_last.pth", weights_only=True)
    assert (state["world_size"], state["global_step"]) == (2, 4)  # 64 images, global batch 16
    # every step enqueued the 16 gathered keys, each a unit vector
    assert int(state["model"]["queue_ptr"]) == 0 and torch.allclose(
        state["model"]["queue"].norm(dim=1), torch.ones(64)
    )
    assert list(read_scores(out).step) == [2, 4]
    assert read_checkpoint(out / "checkpoint_last.pth").source_format == "sslbench"


def _ddp_rank_stopped_by_sigterm(
    rank: int, world: int, port: int, out: str, stop_at: int, resume: bool
) -> None:
    """One rank of a 2-rank run; rank 1 alone receives SIGTERM after step ``stop_at`` (0: never)."""
    _join_as_rank(rank, world, port)
    overrides = [f"out={out}", *SMALL, "epochs=1", "log_every=2", "data.workers=0"]
    cfg = load_pretrain_config("mocov2_ft_tiny", overrides)

    def sigterm_on_rank_1(step: int) -> None:
        if rank == 1 and step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        run_pretraining(cfg, resume=resume, step_callback=sigterm_on_rank_1)
    except PretrainingInterrupted as exc:
        with open(f"{out}/stopped{rank}", "w") as marker:
            marker.write(str(exc.step))


def test_two_rank_run_stopped_by_sigterm_on_one_rank_resumes_to_the_uninterrupted_weights(tmp_path):
    """Both ranks stop at the same step (the next sync point), save once, and a 2-rank resume ends
    where the uninterrupted 2-rank run ends."""
    import socket

    import torch.multiprocessing as mp

    def spawn(out, stop_at: int, resume: bool) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_ddp_rank_stopped_by_sigterm, args=(2, port, str(out), stop_at, resume), nprocs=2, join=True)

    full, cut = tmp_path / "full", tmp_path / "cut"
    spawn(full, 0, False)
    spawn(cut, 1, False)  # 4 steps; SIGTERM on rank 1 after step 1, seen by both at step 2
    assert [(cut / f"stopped{r}").read_text() for r in (0, 1)] == ["2", "2"]
    assert torch.load(cut / "checkpoint_last.pth", weights_only=True)["global_step"] == 2
    spawn(cut, 0, True)
    a = torch.load(full / "checkpoint_last.pth", weights_only=True)
    b = torch.load(cut / "checkpoint_last.pth", weights_only=True)
    assert b["global_step"] == a["global_step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    pd.testing.assert_frame_equal(read_scores(full), read_scores(cut))
