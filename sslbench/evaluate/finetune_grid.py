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

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sslbench.atomic import finite_or_null, write_json
from sslbench.checkpoints.canonical import CanonicalCheckpoint
from sslbench.errors import ConfigError
from sslbench.evaluate.finetune import (
    METHODS,
    OPTIMIZERS,
    POOLS,
    SCHEDULES,
    CoreTuningSettings,
    ModelOptions,
    RunSettings,
    StepHook,
    build_finetune_model,
    evaluate,
    finetune,
    reference_backbone,
    save_finetuned,
)
from sslbench.options import MAX_IMAGE_SIZE
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
    # MAE's fine-tuning recipe (sslbench/configs/finetune/mae.yaml); these defaults leave it all off
    optimizer: str = "sgd"  # sgd (momentum, nesterov above) | adamw (MAE's parameter groups)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    layer_decay: float = 1.0  # adamw on a ViT: lr x layer_decay ** (L - layer); 1 = off
    drop_path: float = 0.0  # ViT: timm's drop_path_rate
    warmup_epochs: float = 0.0  # linear warmup in epochs of the training split (MAE --warmup_epochs)
    warmup_steps: int = 0  # > 0: the warmup in steps instead of warmup_epochs
    min_lr: float = 0.0  # cosine ends at this lr (MAE --min_lr), not scaled with the batch
    pool: str = "token"  # token: final-norm CLS | avg: patch-token mean + fc_norm (ViT; MAE global_pool)
    head_init_std: float | None = None  # None: torch's Linear init | MAE: trunc_normal std 2e-5
    label_smoothing: float = 0.0
    mixup: float = 0.0  # timm Mixup alpha; mixup and cutmix 0: no mixing
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    randaug: str = ""  # timm auto_augment string (MAE: rand-m9-mstd0.5-inc1); "" = RandomResizedCrop + flip
    reprob: float = 0.0  # timm RandomErasing probability, mode pixel, count 1 (MAE --reprob 0.25)
    departures: list[str] = field(default_factory=list)  # how the config differs from its source (recorded)

    def check(self) -> FinetuneConfig:
        problems = self._recipe_problems()
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
        elif not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            problems.append(f"crop_scale {list(self.crop_scale)} must satisfy 0 < min <= max <= 1")
        if self.image_size > MAX_IMAGE_SIZE:
            problems.append(f"image_size {self.image_size} is above {MAX_IMAGE_SIZE} pixels")
        for name, values, low in (
            ("lr", [self.lr] if self.lr is not None else [], 0.0),
            ("weight_decay", [self.weight_decay] if self.weight_decay is not None else [], None),
            ("grid_lr", list(self.grid_lr or []), 0.0),
            ("grid_wd", list(self.grid_wd or []), None),
        ):
            if not all(math.isfinite(v) and (v > low if low is not None else v >= 0) for v in values):
                problems.append(f"{name} {values} must be finite and {'> 0' if low is not None else '>= 0'}")
        length, unit = (self.epochs, "epochs") if self.epochs > 0 else (self.steps, "steps")
        if self.schedule == "multistep" and not all(0 < m < length for m in self.milestones):
            problems.append(f"milestones {self.milestones} must lie inside the run (0, {length}) {unit}")
        if self.method == "coretuning":
            problems.extend(self.coretuning.problems())
            if self.mixup > 0 or self.cutmix > 0 or self.label_smoothing > 0:
                problems.append(
                    "mixup, cutmix and label_smoothing apply to method ce (Core-tuning mixes its own)"
                )
        if problems:
            raise ConfigError(f"fine-tune config {self.name}: " + "; ".join(problems))
        return self

    def _recipe_problems(self) -> list[str]:
        """The MAE-recipe keys that are out of range, one phrase each naming the key."""
        problems = []
        for key, allowed in (("optimizer", OPTIMIZERS), ("pool", POOLS)):
            if getattr(self, key) not in allowed:
                problems.append(f"{key} {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        ranges = (  # key, low, high, low included, high included
            ("layer_decay", 0.0, 1.0, False, True),
            ("drop_path", 0.0, 1.0, True, False),
            ("warmup_epochs", 0.0, math.inf, True, False),
            ("min_lr", 0.0, math.inf, True, False),
            ("label_smoothing", 0.0, 1.0, True, False),
            ("mixup", 0.0, math.inf, True, False),
            ("cutmix", 0.0, math.inf, True, False),
            ("mixup_prob", 0.0, 1.0, True, True),
            ("mixup_switch_prob", 0.0, 1.0, True, True),
            ("reprob", 0.0, 1.0, True, True),
        )
        for key, low, high, with_low, with_high in ranges:
            value = getattr(self, key)
            above = value >= low if with_low else value > low
            below = value <= high if with_high else value < high
            if not (math.isfinite(value) and above and below):
                interval = f"{'[' if with_low else '('}{low:g}, {high:g}{']' if with_high else ')'}"
                problems.append(f"{key} {value} must be finite and in {interval}")
        if len(self.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas):
            problems.append(f"betas {list(self.betas)} must be two numbers in [0, 1)")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps {self.warmup_steps} must be >= 0")
        if self.layer_decay != 1.0 and self.optimizer != "adamw":
            problems.append(f"layer_decay {self.layer_decay} needs optimizer adamw (MAE's parameter groups)")
        if self.head_init_std is not None and not (
            math.isfinite(self.head_init_std) and self.head_init_std > 0
        ):
            problems.append(f"head_init_std {self.head_init_std} must be finite and > 0 (or null)")
        if self.randaug:
            from sslbench.data.transforms import check_randaug

            problems.extend(check_randaug(self.randaug))
        return problems

    def vit_only_keys(self) -> list[str]:
        """The keys set away from their defaults that only a ViT backbone can honour."""
        keys = [f"layer_decay {self.layer_decay}"] if self.layer_decay != 1.0 else []
        keys += [f"drop_path {self.drop_path}"] if self.drop_path > 0 else []
        return keys + ([f"pool {self.pool}"] if self.pool != "token" else [])

    def model_options(self) -> ModelOptions:
        return ModelOptions(self.image_size, self.pool, self.drop_path, self.head_init_std)

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
        steps = self.epochs * per_epoch if self.epochs > 0 else self.steps
        # MAE counts warmup in epochs of data (per iteration): warmup_epochs x steps per epoch
        warmup = self.warmup_steps or round(self.warmup_epochs * per_epoch)
        if warmup >= steps:
            key = "warmup_steps" if self.warmup_steps else f"warmup_epochs {self.warmup_epochs:g} ="
            raise ConfigError(
                f"fine-tune config {self.name}: {key} {warmup} steps is not shorter than the run "
                f"({steps} steps on a split of {num_samples})"
            )
        if self.min_lr > lr * scale:
            raise ConfigError(
                f"fine-tune config {self.name}: min_lr {self.min_lr:g} is above the lr {lr * scale:g}"
            )
        return RunSettings(
            method=self.method,
            lr=lr * scale,
            weight_decay=weight_decay,
            steps=steps,
            batch_size=self.batch_size,
            momentum=self.momentum,
            nesterov=self.nesterov,
            schedule=self.schedule,
            milestones=[round(m * unit) for m in self.milestones],
            gamma=self.gamma,
            seed=seed,
            save_every=self.save_every,
            coretuning=self.coretuning,
            optimizer=self.optimizer,
            betas=list(self.betas),
            layer_decay=self.layer_decay,
            warmup_steps=warmup,
            min_lr=self.min_lr,
            label_smoothing=self.label_smoothing,
            mixup=self.mixup,
            cutmix=self.cutmix,
            mixup_prob=self.mixup_prob,
            mixup_switch_prob=self.mixup_switch_prob,
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
    options = config.model_options()
    fingerprint = {
        **protocol.fingerprint,
        "scored_split": scored_split,
        "settings": settings.as_dict(),
        "model": asdict(options),
    }
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
        protocol.ckpt, protocol.splits.num_classes, config.method, config.coretuning, protocol.seed, options
    )
    run = finetune(
        model,
        train,
        settings,
        protocol.device,
        state_path=folder / "state.pth",
        fingerprint=fingerprint,
        initial_backbone=reference_backbone(protocol.ckpt, options),
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
                    "model_options": asdict(options),
                    "source_checkpoint_sha256": protocol.ckpt.sha256,
                },
            )
        write_json(result_path, finite_or_null(result))  # a diverged run's NaN loss: null
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
