"""The fine-tuning protocol: a learning-rate x weight-decay grid on val, a retrain on train+val, one test.

ssl-transfer ``finetune.py`` (Ericsson et al. CVPR 2021): lr over ``logspace(-4, -1, 4)`` (largest
first) and wd over ``{0} U logspace(-6, -3, 4) / lr``; each point fine-tunes the checkpoint on
``train`` and scores ``val`` once, at the end; the first point with the best validation score (the
dataset's headline metric) wins; it is retrained on ``trainval`` and scored on ``test`` once. An
explicit grid (``grid_lr`` x ``grid_wd``) replaces it; the record says which grid ran
(:meth:`FinetuneConfig.grid_record`).

Resumable: every grid point is a folder ``OUT/grid/NN_lr.._wd..`` holding its training state
(``state.pth``, while it runs) and its result (``point.json``, once done, when the state is
deleted); a rerun skips the points that have a result and continues the one that has a state. The
final run lives in ``OUT/final`` and its weights are kept in ``OUT/best.pth`` (sslbench format):
the model trained with the hyper-parameters that were best on val, at its last step. No weights are
ever chosen on the test split.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sslbench.atomic import write_json
from sslbench.checkpoints.canonical import CanonicalCheckpoint
from sslbench.errors import ConfigError
from sslbench.evaluate.finetune import (
    METHODS,
    SCHEDULES,
    CoreTuningSettings,
    RunSettings,
    StepHook,
    build_finetune_model,
    evaluate,
    finetune,
    save_finetuned,
)
from sslbench.runtime.process import Runtime
from sslbench.runtime.progress import Eta, MetricsLog
from sslbench.runtime.resume import change_entry, check_fingerprint, read_json_result

SSL_TRANSFER_SOURCE = "ssl-transfer finetune.py (Ericsson et al. CVPR 2021)"
CORETUNING_SOURCE = "Core-tuning (Zhang et al. NeurIPS 2021), Vanint/Core-tuning Core-tuning.py"
LR_RANGE = (-4.0, -1.0)  # ssl-transfer: lr = logspace(-4, -1, grid_size), largest first
WD_RANGE = (-6.0, -3.0)  # ssl-transfer: wd = [0] + logspace(-6, -3, grid_size), divided by lr
TEST_RESIZES = ("full", "crop_ratio")
BEST_CHECKPOINT = "best.pth"
POINT_RESULT = "point.json"


@dataclass
class FinetuneConfig:
    """A fine-tuning protocol (``sslbench/configs/finetune/*.yaml``); defaults are ssl-transfer's."""

    name: str = "ssl-transfer"
    source: str = SSL_TRANSFER_SOURCE
    method: str = "ce"  # ce | coretuning
    steps: int = 5000  # ssl-transfer --steps 5000; used when epochs == 0
    epochs: int = 0  # > 0: train for this many epochs of the training split (VISSL schedules)
    batch_size: int = 64  # ssl-transfer -b 64 (total over all GPUs)
    lr: float | None = None  # both lr and weight_decay set: no grid
    weight_decay: float | None = None
    lr_reference_batch: int = 0  # > 0: lr x batch_size / this (VISSL auto_lr_scaling, 256)
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"  # cosine (ssl-transfer) | multistep (VISSL)
    milestones: list[float] = field(default_factory=list)  # multistep: in epochs, or steps when epochs == 0
    gamma: float = 0.1
    grid_size: int = 4  # ssl-transfer -g 4: 4 lrs x 5 wds
    grid_lr: list[float] = field(default_factory=list)  # an explicit grid (absolute wd) instead
    grid_wd: list[float] = field(default_factory=list)
    image_size: int = 224
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop default
    interpolation: str = "bicubic"  # ssl-transfer: RandomResizedCrop(interpolation=BICUBIC)
    test_resize: str = "full"  # full: Resize S + CenterCrop S (ssl-transfer); crop_ratio: Resize S/0.875
    save_every: int = 500  # steps between resumable states
    coretuning: CoreTuningSettings = field(default_factory=CoreTuningSettings)

    def check(self) -> FinetuneConfig:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.test_resize not in TEST_RESIZES:
            problems.append(f"test_resize {self.test_resize!r} is not one of {', '.join(TEST_RESIZES)}")
        if self.interpolation not in ("bicubic", "bilinear"):
            problems.append(f"interpolation {self.interpolation!r} is not bicubic or bilinear")
        if (self.lr is None) != (self.weight_decay is None):
            problems.append("give both lr and weight decay (to skip the grid) or neither")
        if bool(self.grid_lr) != bool(self.grid_wd):
            problems.append("give both grid_lr and grid_wd or neither")
        if self.grid_size < 1 or self.batch_size < 1 or self.save_every < 1 or self.image_size < 8:
            problems.append("grid_size, batch_size, save_every must be >= 1 and image_size >= 8")
        if (self.steps < 1 and self.epochs < 1) or len(self.crop_scale) != 2:
            problems.append("need steps >= 1 (or epochs >= 1) and crop_scale = [min, max]")
        length, unit = (self.epochs, "epochs") if self.epochs > 0 else (self.steps, "steps")
        if self.schedule == "multistep" and not all(0 < m < length for m in self.milestones):
            problems.append(f"milestones {self.milestones} must lie inside the run (0, {length}) {unit}")
        if self.method == "coretuning":
            problems.extend(self.coretuning.problems())
        if problems:
            raise ConfigError(f"fine-tune config {self.name}: " + "; ".join(problems))
        return self

    def grid(self) -> list[tuple[float, float]]:
        """(lr, weight decay) points in search order."""
        if self.grid_lr:
            return [(float(lr), float(wd)) for lr in self.grid_lr for wd in self.grid_wd]
        return ssl_transfer_grid(self.grid_size)

    def grid_record(self) -> dict[str, Any]:
        """Which grid ran, for ``result.json``: ``grid_size`` only where the ssl-transfer grid ran,
        the explicit lists where they were given, neither when lr and weight decay were."""
        size, lrs, wds = None, [float(v) for v in self.grid_lr], [float(v) for v in self.grid_wd]
        if self.lr is not None and self.weight_decay is not None:
            kind, lrs, wds = "none: lr and weight_decay given", [], []
        elif self.grid_lr:
            kind = "explicit: grid_lr x grid_wd (absolute weight decays)"
        else:
            size = self.grid_size
            kind = f"ssl-transfer: lr logspace(-4, -1, {size}) x wd {{0}} U logspace(-6, -3, {size}) / lr"
        return {"grid": kind, "grid_size": size, "grid_lr": lrs, "grid_wd": wds}

    def run_settings(self, lr: float, weight_decay: float, num_samples: int, seed: int) -> RunSettings:
        """The settings of one run on a split of ``num_samples`` (epochs and milestones -> steps)."""
        per_epoch = max(1, num_samples // self.batch_size)  # SeededBatches drops the incomplete batch
        unit = per_epoch if self.epochs > 0 else 1
        scale = self.batch_size / self.lr_reference_batch if self.lr_reference_batch > 0 else 1.0
        return RunSettings(
            method=self.method,
            lr=lr * scale,
            weight_decay=weight_decay,
            steps=self.epochs * per_epoch if self.epochs > 0 else self.steps,
            batch_size=self.batch_size,
            momentum=self.momentum,
            nesterov=self.nesterov,
            schedule=self.schedule,
            milestones=[round(m * unit) for m in self.milestones],
            gamma=self.gamma,
            seed=seed,
            save_every=self.save_every,
            coretuning=self.coretuning,
        )


def ssl_transfer_grid(size: int = 4) -> list[tuple[float, float]]:
    """ssl-transfer's grid: lr over ``logspace(-4, -1, size)`` largest first, and for each lr the weight
    decays ``{0} U logspace(-6, -3, size) / lr``: ``size * (size + 1)`` points."""
    lrs = np.logspace(*LR_RANGE, size)[::-1]
    wds = [0.0, *np.logspace(*WD_RANGE, size)]
    return [(float(lr), float(w / lr)) for lr in lrs for w in wds]


@dataclass
class Splits:
    """The four datasets of the protocol: train and trainval augment, val and test do not."""

    train: Dataset
    val: Dataset
    trainval: Dataset
    test: Dataset
    num_classes: int


@dataclass
class Protocol:
    """What every run of one ``sslbench finetune`` call shares."""

    ckpt: CanonicalCheckpoint
    config: FinetuneConfig
    splits: Splits
    out: Path
    device: torch.device
    fingerprint: dict[str, Any]  # checkpoint, data and transforms: a run of other ones is refused
    select_metric: str = "top1"
    seed: int = 0
    eval_batch_size: int = 64
    workers: int = 0
    runtime: Runtime = field(default_factory=Runtime)
    on_step: StepHook | None = None
    progress: bool = True
    allow_change: bool = False  # --allow-config-change: resume a run whose settings changed
    metrics: MetricsLog | None = None  # OUT/metrics.jsonl (and TensorBoard)


@dataclass
class Outcome:
    grid: list[dict[str, Any]]  # per point: lr, weight_decay, val metrics, folder, skipped
    lr: float
    weight_decay: float
    final: dict[str, Any]  # the final run's point.json
    metrics: dict[str, float]  # test
    best_checkpoint: Path


def _run_point(
    protocol: Protocol,
    folder: Path,
    train: Dataset,
    scored: Dataset,
    scored_split: str,
    lr: float,
    weight_decay: float,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Fine-tune at (lr, wd) on ``train``, score ``scored`` once at the end; or read the result of a
    finished earlier run of the same point. ``keep``: write the final weights there."""
    config = protocol.config
    settings = config.run_settings(lr, weight_decay, len(train), protocol.seed)  # type: ignore[arg-type]
    fingerprint = {**protocol.fingerprint, "scored_split": scored_split, "settings": settings.as_dict()}
    result_path = folder / POINT_RESULT
    done = read_json_result(result_path)
    if done is not None:
        changes = check_fingerprint(
            result_path, done.get("fingerprint", {}), fingerprint, "a finished run", protocol.allow_change
        )
        if changes:  # allowed: the finished result stands, and says what changed after it
            done["config_changes"] = [*done.get("config_changes", []), change_entry(settings.steps, changes)]
        if keep is None or keep.is_file():
            return {**done, "skipped": True}
    model = build_finetune_model(
        protocol.ckpt, protocol.splits.num_classes, config.method, config.coretuning, protocol.seed
    )
    run = finetune(
        model,
        train,
        settings,
        protocol.device,
        state_path=folder / "state.pth",
        fingerprint=fingerprint,
        initial_backbone=protocol.ckpt.state_dict,
        on_step=protocol.on_step,
        workers=protocol.workers,
        runtime=protocol.runtime,
        progress=protocol.progress and protocol.runtime.main,
        desc=f"{folder.name} lr={lr:.3g} wd={weight_decay:.3g}",
        allow_change=protocol.allow_change,
        metrics=protocol.metrics,
    )
    metrics = evaluate(
        run.model,
        scored,
        protocol.splits.num_classes,
        protocol.device,
        protocol.eval_batch_size,
        protocol.workers,
        protocol.runtime,
        progress=protocol.progress and protocol.runtime.main,
        desc=f"{folder.name} {scored_split}",
    )
    result = {
        "lr": lr,
        "weight_decay": weight_decay,
        "effective_lr": settings.lr,
        "steps": settings.steps,
        "split": scored_split,
        "metrics": metrics,
        "history": run.history,
        "resumed_from_step": run.resumed_from,
        "config_changes": run.config_changes,
        "fingerprint": fingerprint,
    }
    if protocol.metrics is not None:
        protocol.metrics.write(folder.name, settings.steps, split=scored_split, **metrics)
    if protocol.runtime.main:
        if keep is not None:
            save_finetuned(
                run.model,
                protocol.ckpt.arch,
                keep,
                {
                    "method": config.method,
                    "num_classes": protocol.splits.num_classes,
                    "lr": lr,
                    "weight_decay": weight_decay,
                    "steps": settings.steps,
                    "source_checkpoint_sha256": protocol.ckpt.sha256,
                },
            )
        write_json(result_path, result)
        (folder / "state.pth").unlink(missing_ok=True)
    protocol.runtime.barrier()
    return {**result, "skipped": False}


def _grid_eta(protocol: Protocol, points: int, searched: bool) -> Eta:
    """An ETA over every run of the protocol: ``points`` grid runs on train, then the final run."""
    config, splits = protocol.config, protocol.splits
    per_point = config.run_settings(1.0, 0.0, len(splits.train), protocol.seed).steps  # type: ignore[arg-type]
    final = config.run_settings(1.0, 0.0, len(splits.trainval), protocol.seed).steps  # type: ignore[arg-type]
    return Eta(points * per_point + final if searched else final)


def _timed_point(protocol: Protocol, eta: Eta, *point: Any, **options: Any) -> dict[str, Any]:
    """:func:`_run_point`, then a line with the ETA of the whole protocol (main rank)."""
    started = time.monotonic()
    done = _run_point(protocol, *point, **options)
    eta.add(done["steps"], None if done["skipped"] else time.monotonic() - started)
    if protocol.runtime.main and protocol.progress:
        print(eta.line("fine-tune protocol"), file=sys.stderr, flush=True)
    return done


def run_protocol(protocol: Protocol) -> Outcome:
    """The grid on (train -> val) unless lr and wd are given, then (trainval -> test) at the best point."""
    config, splits, out = protocol.config.check(), protocol.splits, protocol.out
    grid_rows: list[dict[str, Any]] = []
    searched = config.lr is None or config.weight_decay is None
    eta = _grid_eta(protocol, len(config.grid()), searched)
    if not searched:
        lr, weight_decay = config.lr, config.weight_decay
    else:
        best, best_score = None, float("-inf")
        for i, (point_lr, point_wd) in enumerate(config.grid()):
            folder = out / "grid" / f"{i:02d}_lr{point_lr:.3g}_wd{point_wd:.3g}"
            done = _timed_point(protocol, eta, folder, splits.train, splits.val, "val", point_lr, point_wd)
            score = done["metrics"][protocol.select_metric]
            grid_rows.append(
                {
                    "lr": point_lr,
                    "weight_decay": point_wd,
                    **{f"val_{k}": v for k, v in done["metrics"].items()},
                    "folder": str(folder),
                    "skipped": done["skipped"],
                }
            )
            if score > best_score:  # the first best wins, as ssl-transfer keeps a strictly better one
                best, best_score = (point_lr, point_wd), score
        assert best is not None
        lr, weight_decay = best
    assert lr is not None and weight_decay is not None
    keep = out / BEST_CHECKPOINT
    final = _timed_point(
        protocol, eta, out / "final", splits.trainval, splits.test, "test", lr, weight_decay, keep=keep
    )
    return Outcome(grid_rows, lr, weight_decay, final, final["metrics"], keep)
