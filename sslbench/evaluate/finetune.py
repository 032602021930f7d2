"""Fine-tuning the whole backbone with a new linear head: the training loop of ``sslbench finetune``.

Protocol (ssl-transfer ``finetune.py``, Ericsson et al. CVPR 2021): the pretrained backbone plus a
new ``Linear(D, C)`` head, all in train mode, SGD with Nesterov momentum 0.9 and weight decay on every
parameter, batch 64, a fixed number of steps (5000) with a cosine schedule stepped every step
(``CosineAnnealingLR(T_max=steps)``), RandomResizedCrop (bicubic) + flip. The VISSL schedule
(multistep over epochs, lr scaled by batch / 256) is the same loop with other settings. Every step
takes a full batch: the last partial batch of an epoch is dropped (:data:`LAST_PARTIAL_BATCH`;
ssl-transfer's DataLoader keeps it), so that a global batch splits evenly across ranks. With
``method="coretuning"`` the loss is Core-tuning's (:mod:`sslbench.evaluate.coretuning`; by default
the reference code's loss reduction and CE mean, under which its published eta was tuned, and the
slides' own-anchor hard positives) and the head a bias-free ``Linear(D, C)`` plus the contrastive
head, as in Vanint/Core-tuning.

Guarantees:

* The backbone is loaded with ``strict=True`` and, before the first step of a fresh run, every
  backbone tensor is compared with the checkpoint's (:func:`check_backbone_matches`).
* Resumable: the state (model, optimizer, scheduler, step, history) is written atomically every
  ``save_every`` steps and at the end. Data order and augmentation are functions of
  ``(seed, step)`` and ``(seed, epoch, sample)`` (:class:`StepBatches`, :class:`SeededSamples`) and
  Core-tuning's draws of ``(seed, step, rank)``, so a resumed run repeats the uninterrupted one.
* CUDA: bf16 autocast for the backbone and channels_last; the losses run in float32.
  Launched by ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DDP, each global batch is
  split across ranks and the test tallies are summed over ranks; rank 0 writes the files.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from sslbench.atomic import torch_save
from sslbench.checkpoints.canonical import CanonicalCheckpoint, tensors_differing
from sslbench.checkpoints.formats import SSLBENCH_FORMAT, SSLBENCH_FORMAT_VERSION
from sslbench.errors import CheckpointError, ConfigError
from sslbench.evaluate import coretuning
from sslbench.evaluate.metrics import AccuracyTally
from sslbench.models.archs import feature_dim
from sslbench.models.resnet import build_backbone

# ssl-transfer's DataLoader (drop_last=False) also trains on the last partial batch of an epoch; ours
# keeps every step a full global batch, which splitting it across ranks and mining Core-tuning's
# hard pairs over the gathered batch rely on. Recorded in result.json.
LAST_PARTIAL_BATCH = "dropped (every step a full batch; ssl-transfer's DataLoader keeps it)"
METHODS = ("ce", "coretuning")
SCHEDULES = ("cosine", "multistep")
STATE_VERSION = 1


@dataclass
class CoreTuningSettings:
    """Core-tuning's loss settings; defaults as in Vanint/Core-tuning (see :mod:`coretuning`)."""

    eta: float = coretuning.ETA
    alpha: float = coretuning.ALPHA
    temperature: float = coretuning.TEMPERATURE
    min_negative_lambda: float = coretuning.MIN_NEGATIVE_LAMBDA
    contrast_dim: int = coretuning.CONTRAST_DIM
    mixing: bool = True  # hard positive / negative generation (False: only for ablations and tests)
    # reference: Core-tuning.py's 1/N row mean, under which the published eta = 0.1 was tuned |
    # paper: the slide's 1/|P_i| (~25-30x larger on typical batches)
    reduction: str = coretuning.REDUCTIONS[0]
    # own: z_i+ is a positive of its anchor i only (the slides) | same_class: of every same-class anchor
    positives: str = coretuning.POSITIVES[0]
    # joint: one CE mean over originals + generated (Core-tuning.py) | separate: the two means added (slides)
    ce_mean: str = coretuning.CE_MEANS[0]

    def problems(self) -> list[str]:
        """The choices that are not one of their options, one phrase each naming the ``coretuning.*`` key."""
        choices = (
            ("reduction", coretuning.REDUCTIONS),
            ("positives", coretuning.POSITIVES),
            ("ce_mean", coretuning.CE_MEANS),
        )
        return [
            f"coretuning.{key} {getattr(self, key)!r} is not one of {', '.join(allowed)}"
            for key, allowed in choices
            if getattr(self, key) not in allowed
        ]


@dataclass
class RunSettings:
    """One fine-tuning run, fully resolved (steps and milestones in optimizer steps)."""

    method: str
    lr: float
    weight_decay: float
    steps: int
    batch_size: int = 64  # ssl-transfer finetune.py -b 64
    momentum: float = 0.9  # ssl-transfer and Core-tuning: SGD(momentum=0.9, nesterov=True)
    nesterov: bool = True
    schedule: str = "cosine"  # ssl-transfer: CosineAnnealingLR(T_max=steps), stepped each step
    milestones: list[int] = field(default_factory=list)  # multistep: lr x gamma at these steps
    gamma: float = 0.1
    seed: int = 0
    save_every: int = 500
    coretuning: CoreTuningSettings = field(default_factory=CoreTuningSettings)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.steps < 1 or self.batch_size < 1 or self.save_every < 1:
            raise ConfigError("steps, batch_size and save_every must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"lr must be > 0 and weight decay >= 0 (got {self.lr}, {self.weight_decay})")

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base lr after ``step`` optimizer steps."""
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, self.steps) / self.steps))
        return self.gamma ** sum(step >= m for m in self.milestones)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- data order and augmentation


class StepBatches:
    """Batch sampler over ``[start_step, end_step)``: step ``s`` takes batch ``s % E`` of epoch
    ``s // E`` of a permutation seeded by ``(seed, epoch)``, ``E = max(1, N // batch_size)`` (the last
    incomplete batch of an epoch is dropped, so every step sees a full batch). Under DDP, rank ``r``
    takes ``batch[r::world_size]``. Yields ``[(index, epoch), ...]`` for :class:`SeededSamples`."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        start_step: int,
        end_step: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ConfigError("cannot fine-tune on an empty split")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start_step, self.end_step = start_step, end_step
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = max(1, num_samples // batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        for step in range(self.start_step, self.end_step):
            e, k = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, self.permutation(e)
            batch = order[k * self.batch_size : (k + 1) * self.batch_size][self.rank :: self.world_size]
            yield [(int(i), epoch) for i in batch]


class SeededSamples(Dataset):
    """``dataset[index]`` with the CPU RNG seeded from ``(seed, epoch, index)`` for the transform, and
    restored afterwards: augmentation depends on neither the worker count nor the resume point."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        sample_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed)
            return self.dataset[index]


# ---------------------------------------------------------------- model


class FinetuneModel(nn.Module):
    """Backbone -> ``(B, D)`` features -> classifier; Core-tuning adds the contrastive head.

    ``forward(images)`` gives logits ``(B, C)``; ``forward(images, labels, draws)`` the training
    loss terms (so that DDP sees one forward per step)."""

    def __init__(
        self, backbone: nn.Module, dim: int, num_classes: int, method: str, core: CoreTuningSettings
    ) -> None:
        super().__init__()
        self.method, self.num_classes, self.core = method, num_classes, core
        self.backbone = backbone
        # ssl-transfer: nn.Linear(feature_dim, C); Core-tuning: nn.Linear(2048, C, bias=False)
        self.classifier = nn.Linear(dim, num_classes, bias=method == "ce")
        self.contrast_head = (
            coretuning.ContrastHead(dim, core.contrast_dim) if method == "coretuning" else None
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        cuda = images.device.type == "cuda"
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=cuda):
            return self.backbone(images).float().flatten(1)

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        draws: coretuning.MixDraws | None = None,
    ) -> Any:
        features = self.features(images)
        if labels is None:
            return self.classifier(features)
        if self.method == "ce":
            logits = self.classifier(features)
            loss = F.cross_entropy(logits, labels)
            return {
                "loss": loss,
                "ce": loss.detach(),
                "contrastive": torch.zeros_like(loss),
                "logits": logits,
            }
        assert self.contrast_head is not None
        out = coretuning.coretuning_loss(
            features,
            labels,
            self.classifier,
            self.contrast_head,
            self.num_classes,
            draws if self.core.mixing else None,
            eta=self.core.eta,
            temperature=self.core.temperature,
            min_negative_lambda=self.core.min_negative_lambda,
            reduction=self.core.reduction,
            positives=self.core.positives,
            ce_mean=self.core.ce_mean,
        )
        return {
            "loss": out.total,
            "ce": out.ce.detach(),
            "contrastive": out.contrastive.detach(),
            "logits": out.logits,
        }


def build_finetune_model(
    ckpt: CanonicalCheckpoint, num_classes: int, method: str, core: CoreTuningSettings, seed: int
) -> FinetuneModel:
    """The checkpoint's backbone (loaded with ``strict=True``) and freshly initialised heads (seeded)."""
    backbone = build_backbone(ckpt.arch)
    try:
        backbone.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.source_path}: the backbone does not load strictly: {exc}") from None
    torch.manual_seed(seed)
    return FinetuneModel(backbone, feature_dim(ckpt.arch), num_classes, method, core)


def check_backbone_matches(backbone: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """Every backbone tensor equals the checkpoint's (no silent re-initialisation); raises
    :class:`CheckpointError` naming the tensors that differ."""
    differ = tensors_differing(backbone, reference)
    if differ:
        raise CheckpointError(f"at step 0 the backbone differs from the checkpoint in {differ[:8]}")


def save_finetuned(model: FinetuneModel, arch: str, path: Path, extra: dict[str, Any]) -> Path:
    """Write the fine-tuned model in sslbench's own checkpoint format (readable by every command:
    ``read_checkpoint`` takes the backbone from ``model`` under ``backbone.``)."""
    torch_save(
        {
            "format": SSLBENCH_FORMAT,
            "format_version": SSLBENCH_FORMAT_VERSION,
            "arch": arch,
            "backbone_prefix": "backbone.",
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            **extra,
        },
        path,
    )
    return path


# ---------------------------------------------------------------- distribution


@dataclass(frozen=True)
class Distributed:
    """This process's place in a ``torchrun`` launch (rank 0 of 1 when not launched by it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


def init_distributed(device: torch.device | None) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``): NCCL with one GPU per
    process on CUDA, Gloo on the CPU. Returns the context and this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if world_size <= 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank), device


# ---------------------------------------------------------------- training


@dataclass
class FinetuneRun:
    model: FinetuneModel
    history: list[dict[str, float]]  # per saved interval: step, lr, mean loss terms, train top-1
    resumed_from: int  # steps already done when this call started


StepHook = Callable[[int, FinetuneModel], None]


def _load_state(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != STATE_VERSION or state.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{path}: holds a fine-tuning run of other settings, checkpoint or data; "
            "use another --out folder (or delete the file to start over)"
        )
    return state


def finetune(
    model: FinetuneModel,
    train_data: Dataset,
    settings: RunSettings,
    device: torch.device,
    state_path: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    initial_backbone: dict[str, torch.Tensor] | None = None,
    on_step: StepHook | None = None,
    workers: int = 0,
    dist: Distributed = Distributed(),
    progress: bool = True,
    desc: str = "fine-tune",
) -> FinetuneRun:
    """Train ``model`` on ``train_data`` (augmenting transform; ``(image, label)`` samples) for
    ``settings.steps`` steps, resuming from ``state_path`` when it holds the same ``fingerprint``.

    ``initial_backbone``: the checkpoint's tensors, checked against the backbone before step 0 of a
    fresh run. ``on_step(step, model)`` is called before each step's forward (tests use it)."""
    fingerprint = {"settings": settings.as_dict(), **(fingerprint or {})}
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.nesterov,
        weight_decay=settings.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor)
    history: list[dict[str, float]] = []
    state = _load_state(state_path, fingerprint) if state_path is not None else None
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start = list(state["history"]), int(state["step"])
    elif initial_backbone is not None:
        check_backbone_matches(model.backbone, initial_backbone)

    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    sampler = StepBatches(
        len(train_data),  # type: ignore[arg-type]
        settings.batch_size,
        settings.seed,
        start,
        settings.steps,
        dist.rank,
        dist.world_size,
    )
    loader = DataLoader(
        SeededSamples(train_data, settings.seed),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=cuda,
        persistent_workers=False,
    )
    sums = torch.zeros(4, device=device)  # loss, ce, contrastive, correct
    seen = 0

    def save(step: int) -> None:
        nonlocal sums, seen
        if dist.enabled:  # the history is over all ranks' samples
            sums = torch.cat([sums, torch.tensor([float(seen)], device=device)])
            torch_dist.all_reduce(sums)
            sums, seen = sums[:4], int(sums[4])
        totals = sums.tolist()
        history.append(
            {
                "step": step,
                "lr": optimizer.param_groups[0]["lr"],
                "loss": totals[0] / max(seen, 1),
                "ce": totals[1] / max(seen, 1),
                "contrastive": totals[2] / max(seen, 1),
                "train_top1": 100.0 * totals[3] / max(seen, 1),
            }
        )
        sums, seen = torch.zeros(4, device=device), 0
        if state_path is not None and dist.is_main:
            torch_save(
                {
                    "version": STATE_VERSION,
                    "fingerprint": fingerprint,
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                },
                state_path,
            )
        dist.barrier()

    bar = tqdm(
        total=settings.steps, initial=start, desc=desc, unit="step", disable=not progress, file=sys.stderr
    )
    step = start
    for images, labels in loader:
        if on_step is not None:
            on_step(step, model)
        model.train()
        images = images.to(device, non_blocking=True)
        labels = torch.as_tensor(labels, dtype=torch.long).to(device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        draws = None
        if settings.method == "coretuning":
            draws = coretuning.draw_mixing(
                len(labels), settings.coretuning.alpha, (settings.seed, step, dist.rank)
            )
        out = net(images, labels, draws)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        scheduler.step()
        n = len(labels)
        sums += torch.stack(
            [
                out["loss"].detach() * n,
                out["ce"] * n,
                out["contrastive"] * n,
                (out["logits"].detach().argmax(1) == labels).sum().float(),
            ]
        )
        seen += n
        step += 1
        bar.update(1)
        if step % settings.save_every == 0 or step == settings.steps:
            save(step)
    bar.close()
    return FinetuneRun(model, history, start)


@torch.no_grad()
def evaluate(
    model: FinetuneModel,
    dataset: Dataset,
    num_classes: int,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    dist: Distributed = Distributed(),
    progress: bool = True,
    desc: str = "evaluate",
) -> dict[str, float]:
    """top1 / top5 / mean_per_class (percent) of ``model`` on ``dataset`` (eval transform), eval mode.
    Under DDP each rank scores ``dataset[rank::world_size]`` and the tallies are summed."""
    model = model.eval().to(device)
    cuda = device.type == "cuda"
    indices = list(range(dist.rank, len(dataset), dist.world_size))  # type: ignore[arg-type]
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=workers, pin_memory=cuda)
    tally = AccuracyTally(num_classes)
    for images, labels in tqdm(loader, desc=desc, unit="batch", disable=not progress, file=sys.stderr):
        images = images.to(device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        tally.update(model(images).float().cpu(), torch.as_tensor(labels, dtype=torch.long))
    if dist.enabled:
        counts = torch.tensor([tally.total, *tally.hits.values()], dtype=torch.long)
        per_class = torch.stack([tally.class_count, tally.class_correct])
        if cuda:
            counts, per_class = counts.to(device), per_class.to(device)
        torch_dist.all_reduce(counts)
        torch_dist.all_reduce(per_class)
        counts, per_class = counts.cpu(), per_class.cpu()
        tally.total = int(counts[0])
        tally.hits = {k: int(v) for k, v in zip(tally.hits, counts[1:].tolist(), strict=True)}
        tally.class_count, tally.class_correct = per_class[0], per_class[1]
    return tally.result()
