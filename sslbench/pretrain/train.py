"""The pretraining loop: MoCo(+FT) on one device or under ``torchrun`` (DDP), resumable bit for bit.

* Data: ``data.dataset`` from the registry (``trainval`` split, labels ignored), two MoCo views per
  image; each epoch is a seeded permutation cut into whole global batches, split over the ranks.
  A view depends only on (seed, epoch, index) (:class:`~sslbench.pretrain.augment.SeededTwoCrops`),
  so a resumed run sees the same views without replaying the data it skips.
* Optimisation as in MoCo's ``main_moco.py``: SGD (momentum 0.9, wd 1e-4) on the query encoder,
  lr = ``optim.lr`` x global batch / 256, set at the start of each epoch (cosine or step schedule).
* GPU: bf16 autocast (the logits and FT stay in fp32) and channels_last; DDP over NCCL.
* Checkpoints (``<out>/checkpoint_last.pth``, our ``sslbench`` format, written atomically) every
  ``checkpoint_every`` epochs, at the end, and on SIGTERM after the step in flight. They hold both
  encoders, the queue, the optimizer, the RNG states and the open score interval, so ``--resume``
  continues where the run stopped (bit for bit on the CPU).
* Score statistics: a row of ``<out>/scores.csv`` every ``log_every`` steps (see ``scores.py``).
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from sslbench import __version__
from sslbench.atomic import torch_save, write_text
from sslbench.config import config_to_dict
from sslbench.data.registry import build_dataset
from sslbench.errors import CheckpointError, ConfigError, SslbenchError
from sslbench.pretrain.augment import SeededTwoCrops, moco_augmentation
from sslbench.pretrain.config import PretrainConfig, validate
from sslbench.pretrain.moco import MoCo
from sslbench.pretrain.scores import TABLE_NAME, ScoreAccumulator, ScoreTable

CHECKPOINT_NAME = "checkpoint_last.pth"
CHECKPOINT_FORMAT_VERSION = 1


class PretrainingInterrupted(SslbenchError):
    """SIGTERM stopped the run; its checkpoint was saved and ``--resume`` continues it."""

    def __init__(self, checkpoint: Path, epoch: int, step: int) -> None:
        super().__init__(
            f"stopped by SIGTERM in epoch {epoch} after step {step}; saved {checkpoint}; "
            "continue with --resume"
        )
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


class EpochBatches:
    """Batches of ``(epoch, index)`` for one rank: a seeded permutation of the images per epoch, cut
    into whole global batches (the remainder is dropped), each split evenly over the ranks; the first
    ``skip`` batches are left out (a resumed epoch)."""

    def __init__(
        self,
        size: int,
        global_batch: int,
        epoch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        skip: int = 0,
    ) -> None:
        self.size, self.global_batch, self.epoch, self.seed = size, global_batch, epoch, seed
        self.rank, self.local_batch, self.skip = rank, global_batch // world, skip

    def __len__(self) -> int:
        return self.size // self.global_batch - self.skip

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(int(state)))
        for step in range(self.skip, self.size // self.global_batch):
            start = step * self.global_batch + self.rank * self.local_batch
            yield [(self.epoch, int(i)) for i in order[start : start + self.local_batch]]


@dataclass
class Runtime:
    """Where this process runs: its rank among ``world`` processes and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _start_runtime() -> Runtime:
    """One process, or one rank of a ``torchrun`` launch (RANK/WORLD_SIZE/LOCAL_RANK in the environment)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Runtime(0, 1, torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Runtime(
        dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    )


@contextmanager
def _sigterm_flag() -> Iterator[dict[str, bool]]:
    """A flag set by SIGTERM for the duration of the block (the previous handler is restored after)."""
    flag = {"stop": False}

    def handler(signum: int, frame: FrameType | None) -> None:
        flag["stop"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rng_state(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """Holds a run's state (model, optimizer, counters) and saves and restores it."""

    def __init__(self, cfg: PretrainConfig, runtime: Runtime) -> None:
        self.cfg, self.runtime = cfg, runtime
        self.out = Path(cfg.out)
        self.checkpoint_path = self.out / CHECKPOINT_NAME
        device = runtime.device
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
        ).to(device)
        self.channels_last = device.type == "cuda" and cfg.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.query_parameters(),
            lr=learning_rate(cfg, 0),
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )
        self.scores = ScoreAccumulator(device)
        self.table = ScoreTable(self.out / TABLE_NAME)
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # steps done in epoch ``self.epoch`` (non-zero after a SIGTERM)
        self.global_step = 0

    def state(self) -> dict[str, Any]:
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
            "config": config_to_dict(self.cfg),
            "rng": _rng_state(self.runtime.device),
            "scores": self.scores.state_dict(),
            "world_size": self.runtime.world,
            "sslbench_version": __version__,
        }

    def save(self) -> None:
        if self.runtime.main:
            state = self.state()
            torch_save(state, self.checkpoint_path)
            if self.cfg.keep_every and self.step_in_epoch == 0 and self.epoch % self.cfg.keep_every == 0:
                torch_save(state, self.out / f"checkpoint_epoch{self.epoch:04d}.pth")
        if self.runtime.distributed:
            dist.barrier()

    def load(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scores.load_state_dict(state["scores"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"{path}: cannot resume from it with this config: {first}") from None
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        _set_rng_state(state["rng"], self.runtime.device)
        if self.runtime.main:
            self.table.truncate_after(self.global_step)


def _check_out_folder(cfg: PretrainConfig, resume: bool) -> None:
    if not resume and (Path(cfg.out) / CHECKPOINT_NAME).exists():
        raise ConfigError(
            f"out={cfg.out} already holds {CHECKPOINT_NAME}: pass --resume to continue that run, "
            "or choose another out"
        )


def run_pretraining(
    cfg: PretrainConfig, resume: bool = False, step_callback: Callable[[int], None] | None = None
) -> Path:
    """Pretrain MoCo(+FT) as ``cfg`` says; return the final checkpoint's path.

    ``resume`` continues from ``<out>/checkpoint_last.pth`` (a fresh start if there is none);
    ``step_callback(global_step)`` is called after every optimisation step. Raises
    :class:`PretrainingInterrupted` after saving a checkpoint when SIGTERM arrives.
    """
    runtime = _start_runtime()
    try:
        return _train(validate(cfg, runtime.world), runtime, resume, step_callback)
    finally:
        if runtime.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    cfg: PretrainConfig, runtime: Runtime, resume: bool, step_callback: Callable[[int], None] | None
) -> Path:
    _check_out_folder(cfg, resume)
    images = build_dataset(dataset_name(cfg), cfg.data.root, "trainval")
    views = SeededTwoCrops(images, moco_augmentation(cfg.augment), cfg.seed, cfg.data.max_images)
    steps_per_epoch = len(views) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds the {len(views)} images of {images.name}")

    trainer = Trainer(cfg, runtime)
    if resume and trainer.checkpoint_path.exists():
        trainer.load(trainer.checkpoint_path)
    elif resume and runtime.main:
        print(f"sslbench pretrain: no {trainer.checkpoint_path} yet; starting from scratch", file=sys.stderr)
    if runtime.main:
        write_text(trainer.out / "config.yaml", OmegaConf.to_yaml(config_to_dict(cfg)))

    model: torch.nn.Module = trainer.model
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        # The queue is identical on every rank (same seed, gathered keys): no per-step buffer broadcast.
        model = DistributedDataParallel(trainer.model, device_ids=device_ids, broadcast_buffers=False)
    cuda = runtime.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.amp else nullcontext()
    memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
    labels = torch.zeros(cfg.batch_size // runtime.world, dtype=torch.long, device=runtime.device)

    with _sigterm_flag() as sigterm:
        while trainer.epoch < cfg.epochs:
            epoch = trainer.epoch
            lr = learning_rate(cfg, epoch)
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr
            batches = EpochBatches(
                len(views),
                cfg.batch_size,
                epoch,
                cfg.seed,
                runtime.rank,
                runtime.world,
                trainer.step_in_epoch,
            )
            # its own generator: making the iterator must not draw from the global RNG (a resumed run
            # makes one iterator more than the run it continues)
            loader = DataLoader(
                views,
                batch_sampler=batches,
                num_workers=cfg.data.workers,
                pin_memory=cuda,
                generator=torch.Generator().manual_seed(cfg.seed + epoch),
            )
            bar = tqdm(
                total=steps_per_epoch * cfg.batch_size,
                initial=trainer.step_in_epoch * cfg.batch_size,
                unit="img",
                unit_scale=True,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not runtime.main,
                dynamic_ncols=True,
            )
            for im_q, im_k in loader:
                im_q = im_q.to(runtime.device, non_blocking=True, memory_format=memory_format)
                im_k = im_k.to(runtime.device, non_blocking=True, memory_format=memory_format)
                with autocast:
                    output = model(im_q, im_k, apply_ft=epoch >= cfg.ft.start_epoch)
                loss = F.cross_entropy(output.logits, labels)
                trainer.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                trainer.optimizer.step()
                trainer.scores.add(loss, output.stats_before_ft, output.stats_after_ft)
                trainer.global_step += 1
                trainer.step_in_epoch += 1
                bar.update(cfg.batch_size)
                logged = trainer.global_step % cfg.log_every == 0
                if logged:
                    row = trainer.scores.flush()
                    if runtime.main:
                        trainer.table.append({"step": trainer.global_step, "epoch": epoch, "lr": lr, **row})
                    bar.set_postfix(loss=f"{row['loss']:.3f}")
                if step_callback is not None:
                    step_callback(trainer.global_step)
                if _stop_requested(sigterm["stop"], runtime, logged):
                    bar.close()
                    trainer.save()
                    raise PretrainingInterrupted(trainer.checkpoint_path, epoch, trainer.global_step)
            bar.close()
            trainer.epoch += 1
            trainer.step_in_epoch = 0
            if trainer.epoch == cfg.epochs and trainer.scores.steps:
                row = trainer.scores.flush()
                if runtime.main:
                    trainer.table.append({"step": trainer.global_step, "epoch": epoch, "lr": lr, **row})
            if trainer.epoch % cfg.checkpoint_every == 0 or trainer.epoch == cfg.epochs:
                trainer.save()
    return trainer.checkpoint_path


def _stop_requested(local_flag: bool, runtime: Runtime, at_sync_point: bool) -> bool:
    """SIGTERM seen (by any rank, under DDP: checked only at logging steps, where ranks sync anyway)."""
    if not runtime.distributed:
        return local_flag
    if not at_sync_point:
        return False
    flag = torch.tensor([float(local_flag)], device=runtime.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
