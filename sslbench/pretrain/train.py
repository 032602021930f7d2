"""The pretraining loop: MoCo(+FT) on one device or under ``torchrun`` (DDP), resumable bit for bit.

* Data: ``data.dataset`` from the registry (``trainval`` split, labels ignored), two MoCo views per
  image; each epoch is a seeded permutation cut into whole global batches, split over the ranks.
  A view depends only on (seed, epoch, index) (:class:`~sslbench.pretrain.augment.SeededTwoCrops`),
  so a resumed run sees the same views without replaying the data it skips.
* Optimisation as in MoCo's ``main_moco.py``: SGD (momentum 0.9, wd 1e-4) on the query encoder,
  lr = ``optim.lr`` x global batch / 256, set at the start of each epoch (cosine or step schedule).
* GPU: bf16 autocast (the logits and FT stay in fp32) and channels_last; DDP over NCCL. Process
  group, precision, sampling, resume and signals come from :mod:`sslbench.runtime`.
* Checkpoints (``<out>/checkpoint_last.pth``, our ``sslbench`` format, written atomically) every
  ``checkpoint_every`` epochs, at the end, and on SIGTERM/SIGUSR1 after the step in flight. They hold both
  encoders, the queue, the optimizer, the RNG states and the open score interval, so ``--resume``
  continues where the run stopped (bit for bit on the CPU).
* Score statistics and the collapse metric: a row of ``<out>/scores.csv`` and of ``metrics.jsonl``
  every ``log_every`` steps (see ``scores.py``); TensorBoard scalars with ``logging.tensorboard``.
* The collapse alarm watches those rows (``alarm.py``); the online kNN monitor (``monitor.py``) adds
  a row every ``monitor.every`` epochs.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from sslbench import __version__
from sslbench.atomic import torch_save, write_text
from sslbench.config import config_to_dict
from sslbench.data.registry import build_dataset
from sslbench.errors import CheckpointError, ConfigError
from sslbench.pretrain.alarm import CollapseAlarm, PretrainingCollapsed, run_log_line, warning_line
from sslbench.pretrain.augment import SeededTwoCrops, moco_augmentation
from sslbench.pretrain.config import PretrainConfig, validate
from sslbench.pretrain.moco import MoCo
from sslbench.pretrain.monitor import KnnMonitor
from sslbench.pretrain.scores import TABLE_NAME, ScoreAccumulator, ScoreTable
from sslbench.run_folder import refuse_previous_run
from sslbench.runtime.precision import Precision
from sslbench.runtime.process import Runtime, launched
from sslbench.runtime.progress import MetricsLog, Progress
from sslbench.runtime.resume import change_entry, check_fingerprint, read_state, rng_state, set_rng_state
from sslbench.runtime.sampling import SeededBatches
from sslbench.runtime.signals import TrainingInterrupted, catch_stop_signals

CHECKPOINT_NAME = "checkpoint_last.pth"
CHECKPOINT_FORMAT_VERSION = 1


class PretrainingInterrupted(TrainingInterrupted):
    """A stop signal ended the run; its checkpoint was saved and ``--resume`` continues it."""

    def __init__(self, checkpoint: Path, epoch: int, step: int) -> None:
        super().__init__("pretraining", checkpoint, step, f" (epoch {epoch})")
        self.checkpoint = checkpoint


def dataset_name(cfg: PretrainConfig) -> str:
    """``data.dataset``, else ``imagefolder`` when ``data.root`` is given, else the built-in ``digits``."""
    if cfg.data.dataset:
        return cfg.data.dataset
    return "imagefolder" if cfg.data.root else "digits"


def learning_rate(cfg: PretrainConfig, epoch: int) -> float:
    """MoCo's per-epoch lr: ``lr * batch / 256``, cosine to 0 over the run or x0.1 at each milestone."""
    base = cfg.optim.lr * cfg.batch_size / 256
    if cfg.optim.schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return base * 0.1 ** sum(epoch >= milestone for milestone in cfg.optim.milestones)


def EpochBatches(
    size: int, global_batch: int, epoch: int, seed: int, rank: int = 0, world: int = 1, skip: int = 0
) -> SeededBatches:
    """Batches of ``(epoch, index)`` for one rank in ``epoch``: whole global batches of a seeded
    permutation, split over the ranks; the first ``skip`` batches are left out (a resumed epoch)."""
    per_epoch = size // global_batch
    return SeededBatches(
        size, global_batch, seed, epoch * per_epoch + skip, (epoch + 1) * per_epoch, rank, world
    )


# Keys of the config that change how a run is stored or watched, not what it computes.
OPERATIONAL_KEYS = (
    "out",
    "data.workers",
    "checkpoint_every",
    "keep_every",
    "log_every",
    "collapse",
    "stop_on_collapse",
    "monitor",
    "logging",
)


def resume_fingerprint(config: dict[str, Any], world: int) -> dict[str, Any]:
    """What a resumed run must share with the run it continues: the config but its operational keys,
    and the number of ranks (shuffle BN and the batch split depend on it)."""
    fingerprint = json.loads(json.dumps(config))
    for key in OPERATIONAL_KEYS:
        *parents, last = key.split(".")
        node = fingerprint
        for parent in parents:
            node = node.get(parent, {})
        node.pop(last, None)
    return {"config": fingerprint, "world_size": world}


class Trainer:
    """Holds a run's state (model, optimizer, counters) and saves and restores it."""

    def __init__(self, cfg: PretrainConfig, runtime: Runtime) -> None:
        self.cfg, self.runtime = cfg, runtime
        self.out = Path(cfg.out)
        self.checkpoint_path = self.out / CHECKPOINT_NAME
        self.precision = Precision(runtime.device, cfg.amp, cfg.channels_last)
        torch.manual_seed(cfg.seed)
        self.model = MoCo(
            cfg.moco.arch,
            dim=cfg.moco.dim,
            queue_size=cfg.moco.queue_size,
            momentum=cfg.moco.momentum,
            temperature=cfg.moco.temperature,
            mlp=cfg.moco.mlp,
            bn_splits=cfg.moco.bn_splits if runtime.world == 1 else 1,
            ft=cfg.ft,
        )
        self.precision.model(self.model)
        self.optimizer = torch.optim.SGD(
            self.model.query_parameters(),
            lr=learning_rate(cfg, 0),
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )
        self.scores = ScoreAccumulator(runtime.device)
        self.alarm = CollapseAlarm(cfg.collapse)
        self.table = ScoreTable(self.out / TABLE_NAME)
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # steps done in epoch ``self.epoch`` (non-zero after a SIGTERM)
        self.global_step = 0
        self.config_changes: list[dict[str, Any]] = []  # allowed changes on resume, with their step

    def step(self, model: torch.nn.Module, im_q: torch.Tensor, im_k: torch.Tensor) -> None:
        """One optimisation step of ``model`` (the MoCo model, DDP-wrapped under torchrun) on a batch
        of query and key views; its score statistics join the open interval."""
        cfg, precision = self.cfg, self.precision
        every = cfg.collapse.feature_every  # backbone features measured on steps N, 2N, ... (1-based)
        labels = torch.zeros(len(im_q), dtype=torch.long, device=self.runtime.device)  # the positive: 0
        with precision.autocast():
            output = model(
                precision.images(im_q),
                precision.images(im_k),
                apply_ft=self.epoch >= cfg.ft.start_epoch,
                measure_features=bool(every and (self.global_step + 1) % every == 0),
            )
        loss = F.cross_entropy(output.logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scores.add(
            loss, output.stats_before_ft, output.stats_after_ft, output.output_std, output.feature_std
        )
        self.global_step += 1
        self.step_in_epoch += 1

    def state(self) -> dict[str, Any]:
        config = config_to_dict(self.cfg)
        return {
            "format": "sslbench",
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "arch": self.cfg.moco.arch,
            "backbone_prefix": "backbone_q.",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "config": config,
            "config_changes": self.config_changes,
            "rng": rng_state(self.runtime.device),
            "scores": self.scores.state_dict(),
            "collapse_alarm": self.alarm.fired,
            "collapse_alarm_state": self.alarm.state_dict(),
            "world_size": self.runtime.world,
            "sslbench_version": __version__,
        }

    def save(self) -> None:
        if self.runtime.main:
            state = self.state()
            torch_save(state, self.checkpoint_path)
            if self.cfg.keep_every and self.step_in_epoch == 0 and self.epoch % self.cfg.keep_every == 0:
                torch_save(state, self.out / f"checkpoint_epoch{self.epoch:04d}.pth")
        self.runtime.barrier()

    def load(self, path: Path, allow_change: bool) -> None:
        """Continue from ``path``; a changed fingerprint is refused unless ``allow_change``."""
        state = read_state(path)
        assert state is not None
        if not isinstance(state.get("config"), dict):
            raise CheckpointError(f"{path}: not an sslbench pretraining checkpoint (no config)")
        changes = check_fingerprint(
            path,
            resume_fingerprint(state["config"], int(state.get("world_size", 1))),
            resume_fingerprint(config_to_dict(self.cfg), self.runtime.world),
            "a pretraining run",
            allow_change,
        )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scores.load_state_dict(state["scores"])
            self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
            self.global_step = int(state["global_step"])
            set_rng_state(state["rng"], self.runtime.device)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"{path}: cannot resume from it with this config: {first}") from None
        self.config_changes = list(state.get("config_changes", []))
        self.alarm.load_state_dict(state.get("collapse_alarm_state"))
        if changes:
            self.config_changes.append(change_entry(self.global_step, changes))
            if self.runtime.main:
                print(
                    f"sslbench pretrain: resuming at step {self.global_step} with {changes}", file=sys.stderr
                )
        if self.runtime.main:
            self.table.truncate_after(self.global_step)

    def config_yaml(self) -> str:
        """config.yaml: the config now in force, headed by the run log (as comments): the changes
        made on resume and the collapse alarm."""
        header = "".join(
            f"# resumed at step {entry['step']} with changes (key: [before, after]): "
            f"{json.dumps(entry['changes'])}\n"
            for entry in self.config_changes
        )
        if self.alarm.fired is not None:
            header += run_log_line(self.alarm.fired)
        return header + OmegaConf.to_yaml(config_to_dict(self.cfg))


def _check_out_folder(cfg: PretrainConfig, resume: bool) -> None:
    if not resume:
        refuse_previous_run(Path(cfg.out), (CHECKPOINT_NAME,), "pretraining run")


def run_pretraining(
    cfg: PretrainConfig,
    resume: bool = False,
    step_callback: Callable[[int], None] | None = None,
    allow_config_change: bool = False,
    tensorboard: bool = False,
) -> Path:
    """Pretrain MoCo(+FT) as ``cfg`` says; return the final checkpoint's path.

    ``resume`` continues from ``<out>/checkpoint_last.pth`` (a fresh start if there is none); a
    checkpoint of another config is refused unless ``allow_config_change`` (then the change is
    recorded in the checkpoint and config.yaml). ``step_callback(global_step)`` is called after every
    optimisation step. Raises :class:`PretrainingInterrupted` after saving a checkpoint when SIGTERM
    or SIGUSR1 arrives, and :class:`~sslbench.pretrain.alarm.PretrainingCollapsed` after saving one
    when the collapse alarm fires with ``stop_on_collapse``. ``tensorboard`` (or
    ``logging.tensorboard``) also writes the logged values as TensorBoard scalars.
    """
    with launched() as runtime:
        return _train(
            validate(cfg, runtime.world),
            runtime,
            resume,
            step_callback,
            allow_config_change,
            tensorboard or cfg.logging.tensorboard,
        )


def _epoch_loader(
    views: SeededTwoCrops, cfg: PretrainConfig, runtime: Runtime, epoch: int, done_steps: int
) -> DataLoader:
    """This rank's batches of ``epoch`` from step ``done_steps`` on."""
    batches = EpochBatches(
        len(views), cfg.batch_size, epoch, cfg.seed, runtime.rank, runtime.world, done_steps
    )
    # its own generator: making the iterator must not draw from the global RNG (a resumed run
    # makes one iterator more than the run it continues)
    return DataLoader(
        views,
        batch_sampler=batches,
        num_workers=cfg.data.workers,
        pin_memory=runtime.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed + epoch),
    )


class RunLog:
    """What a run reports as it goes: the score rows (``scores.csv``, ``metrics.jsonl``, TensorBoard),
    the collapse alarm that watches them, the online kNN monitor and the progress line."""

    def __init__(
        self, trainer: Trainer, monitor: KnnMonitor | None, steps_per_epoch: int, tensorboard: bool
    ) -> None:
        cfg, runtime = trainer.cfg, trainer.runtime
        self.trainer, self.cfg, self.main, self.monitor = trainer, cfg, runtime.main, monitor
        self.metrics = MetricsLog(trainer.out, runtime.main, tensorboard)
        self.progress = Progress(
            cfg.epochs * steps_per_epoch,
            "pretrain",
            trainer.global_step,
            images_per_step=cfg.batch_size,
            enabled=runtime.main,
        )

    def row(self, epoch: int, lr: float) -> None:
        """Close the open score interval into a row; raises :class:`PretrainingCollapsed` (after
        saving) when the alarm fires with ``stop_on_collapse``."""
        trainer = self.trainer
        row = trainer.scores.flush()  # the same values on every rank: the alarm agrees across ranks
        alarm = trainer.alarm.observe(trainer.global_step, row)
        if self.main:
            values = {"step": trainer.global_step, "epoch": epoch, "lr": lr, **row}
            values["collapse_alarm"] = int(alarm is not None)
            trainer.table.append(values)
            self.metrics.write(
                "pretrain", trainer.global_step, **{k: v for k, v in values.items() if k != "step"}
            )
        self.progress.note(loss=row["loss"], output_std=row["output_std"])
        if alarm is None:
            return
        if self.main:
            if self.progress.bar is not None:  # a line of its own above the bar
                self.progress.bar.write(warning_line(alarm), file=sys.stderr)
            else:
                print(warning_line(alarm), file=sys.stderr, flush=True)
            write_text(trainer.out / "config.yaml", trainer.config_yaml())
        if self.cfg.stop_on_collapse:
            self.close()
            trainer.save()
            raise PretrainingCollapsed(trainer.checkpoint_path, alarm)

    def end_of_epoch(self, epoch: int) -> None:
        """The online kNN monitor's row, every ``monitor.every`` epochs."""
        trainer = self.trainer
        if self.monitor is None or trainer.epoch % self.cfg.monitor.every:
            return
        top1 = self.monitor.top1(trainer.model.backbone_q, trainer.runtime)
        if top1 is not None:
            trainer.table.append({"step": trainer.global_step, "epoch": epoch, "knn_top1": top1})
            self.metrics.write("pretrain", trainer.global_step, epoch=epoch, knn_top1=top1)
            self.progress.note(knn_top1=top1)

    def close(self) -> None:
        self.progress.close()
        self.metrics.close()


def _train(
    cfg: PretrainConfig,
    runtime: Runtime,
    resume: bool,
    step_callback: Callable[[int], None] | None,
    allow_config_change: bool,
    tensorboard: bool,
) -> Path:
    _check_out_folder(cfg, resume)
    images = build_dataset(dataset_name(cfg), cfg.data.root, "trainval")
    views = SeededTwoCrops(images, moco_augmentation(cfg.augment), cfg.seed, cfg.data.max_images)
    steps_per_epoch = len(views) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds the {len(views)} images of {images.name}")

    monitor = KnnMonitor.from_config(cfg) if cfg.monitor.every else None
    trainer = Trainer(cfg, runtime)
    if resume and trainer.checkpoint_path.exists():
        trainer.load(trainer.checkpoint_path, allow_config_change)
    elif resume and runtime.main:
        print(f"sslbench pretrain: no {trainer.checkpoint_path} yet; starting from scratch", file=sys.stderr)
    if runtime.main:
        write_text(trainer.out / "config.yaml", trainer.config_yaml())

    # The queue is identical on every rank (same seed, gathered keys): no per-step buffer broadcast.
    model = runtime.wrap(trainer.model, broadcast_buffers=False)
    log = RunLog(trainer, monitor, steps_per_epoch, tensorboard)
    with catch_stop_signals() as stop:
        while trainer.epoch < cfg.epochs:
            epoch = trainer.epoch
            lr = learning_rate(cfg, epoch)
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr
            for im_q, im_k in _epoch_loader(views, cfg, runtime, epoch, trainer.step_in_epoch):
                trainer.step(model, im_q, im_k)
                log.progress.update()
                logged = trainer.global_step % cfg.log_every == 0
                if logged:
                    log.row(epoch, lr)
                if step_callback is not None:
                    step_callback(trainer.global_step)
                if stop.requested(runtime, at_sync_point=logged):
                    log.progress.close()
                    trainer.save()
                    raise PretrainingInterrupted(trainer.checkpoint_path, epoch, trainer.global_step)
            trainer.epoch += 1
            trainer.step_in_epoch = 0
            if trainer.epoch == cfg.epochs and trainer.scores.steps:
                log.row(epoch, lr)
            log.end_of_epoch(epoch)
            if trainer.epoch % cfg.checkpoint_every == 0 or trainer.epoch == cfg.epochs:
                trainer.save()
    log.close()
    return trainer.checkpoint_path
