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

ViT backbones (the canonical timm ViT at the run's image size, position embeddings resized as the
checkpoint's source does) take the same loop. MAE's fine-tuning recipe (facebookresearch/mae
``main_finetune.py``) is the same loop with other settings: AdamW over layer-wise lr-decayed groups
(:mod:`sslbench.evaluate.layer_decay`), linear warmup then half-cycle cosine to ``min_lr`` per step
(``util/lr_sched.py``), drop path, the mean of the patch tokens through a new ``fc_norm``
(``models_vit.py`` ``global_pool``), a head initialised with std 2e-5, label smoothing and timm's
Mixup / CutMix on soft targets (:class:`ModelOptions`, :class:`RunSettings`).

Guarantees:

* The backbone is loaded with ``strict=True`` and, before the first step of a fresh run, every
  backbone tensor is compared with the checkpoint's (:func:`check_backbone_matches`).
* Resumable: the state (model, optimizer, scheduler, step, history, the open history interval) is
  written atomically every ``save_every`` steps, at the end, and on SIGTERM / SIGUSR1 (then the
  command exits 143). Data order and augmentation are functions of ``(seed, step)`` and
  ``(seed, epoch, sample)`` (:mod:`sslbench.runtime.sampling`), Core-tuning's draws of
  ``(seed, step)``, Mixup / CutMix (numpy) and drop path (torch) of ``(seed, step, rank)``, so a
  resumed run repeats the uninterrupted one.
* CUDA: bf16 autocast for the backbone and channels_last; the losses run in float32.
  Launched by ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DDP, each global batch is
  split across ranks and the test tallies are summed over ranks; rank 0 writes the files.
  Core-tuning mines its hard pairs and computes its loss over the whole global batch
  (:func:`~sslbench.runtime.collectives.gather_for_global_loss`): N ranks give the one-process loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from sslbench.atomic import torch_save
from sslbench.checkpoints.canonical import CanonicalCheckpoint, tensors_differing
from sslbench.checkpoints.formats import SSLBENCH_FORMAT, SSLBENCH_FORMAT_VERSION
from sslbench.errors import CheckpointError, ConfigError
from sslbench.evaluate import coretuning
from sslbench.evaluate.layer_decay import layer_scales, param_groups
from sslbench.evaluate.metrics import AccuracyTally
from sslbench.models.archs import feature_dim
from sslbench.models.resnet import build_backbone
from sslbench.models.vit import LAYERNORM_EPS
from sslbench.models.vit_archs import is_vit_arch, parse_vit_arch
from sslbench.runtime.collectives import gather_for_global_loss, gather_rows
from sslbench.runtime.precision import Precision, autocast_for
from sslbench.runtime.process import Runtime
from sslbench.runtime.progress import MetricsLog, Progress
from sslbench.runtime.resume import change_entry, check_fingerprint, read_state
from sslbench.runtime.sampling import SeededBatches, SeededSamples, numpy_rng, shard
from sslbench.runtime.signals import STOP_CHECK_EVERY, TrainingInterrupted, catch_stop_signals

# ssl-transfer's DataLoader (drop_last=False) also trains on the last partial batch of an epoch; ours
# keeps every step a full global batch, which splitting it across ranks and mining Core-tuning's
# hard pairs over the gathered batch rely on. Recorded in result.json.
LAST_PARTIAL_BATCH = "dropped (every step a full batch; ssl-transfer's DataLoader keeps it)"
METHODS = ("ce", "coretuning")
SCHEDULES = ("cosine", "multistep")
OPTIMIZERS = ("sgd", "adamw")  # sgd: ssl-transfer / VISSL / Core-tuning | adamw: MAE main_finetune.py
POOLS = ("token", "avg")  # token: final-norm CLS (DINO's feature) | avg: patch-token mean + fc_norm (MAE)
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
class ModelOptions:
    """How the fine-tuned network is built around the checkpoint; the defaults are ssl-transfer's."""

    image_size: int = 224  # a ViT is built for this input size (position embeddings resized)
    # token: the canonical feature, the CLS token after the final norm | avg (ViT only): the mean of
    # the last block's patch tokens through a new LayerNorm ``fc_norm``, the final norm unused (MAE
    # models_vit.py global_pool; timm VisionTransformer(global_pool="avg", fc_norm=True))
    pool: str = "token"
    drop_path: float = 0.0  # ViT only: timm's drop_path_rate (MAE --drop_path; 0.1 for ViT-B)
    # None: torch's nn.Linear init (ssl-transfer) | std: weight trunc_normal(std), bias 0 (MAE: 2e-5)
    head_init_std: float | None = None


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
    optimizer: str = "sgd"  # sgd: one group, weight decay on every parameter | adamw: MAE's groups
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW (MAE: torch's defaults)
    layer_decay: float = 1.0  # adamw: lr x layer_decay ** (L - layer) (MAE util/lr_decay.py); 1 = off
    warmup_steps: int = 0  # linear from 0 over these steps, then the schedule (MAE util/lr_sched.py)
    min_lr: float = 0.0  # cosine: the floor the half cycle ends at (MAE --min_lr 1e-6)
    label_smoothing: float = 0.0  # soft targets (1 - s) one-hot + s / C (MAE --smoothing 0.1)
    mixup: float = 0.0  # timm Mixup: mixup Beta alpha (MAE ViT-B 0.8); 0 with cutmix 0 = off
    cutmix: float = 0.0  # CutMix Beta alpha (MAE ViT-B 1.0)
    mixup_prob: float = 1.0  # MAE --mixup_prob: probability of mixing a batch
    mixup_switch_prob: float = 0.5  # MAE --mixup_switch_prob: CutMix instead of mixup, with both on

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.steps < 1 or self.batch_size < 1 or self.save_every < 1:
            raise ConfigError("steps, batch_size and save_every must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"lr must be > 0 and weight decay >= 0 (got {self.lr}, {self.weight_decay})")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ConfigError(
                f"warmup of {self.warmup_steps} steps is not shorter than the run ({self.steps})"
            )
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr {self.min_lr} must lie in [0, lr {self.lr:g}]")

    @property
    def mixes(self) -> bool:
        """Mixup or CutMix is on (MAE: ``mixup_active``)."""
        return self.mixup > 0 or self.cutmix > 0

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base lr at ``step`` (the lr the step trains with).

        Warmup (MAE ``lr_sched.adjust_learning_rate`` per iteration): ``step / warmup_steps``. Then
        cosine: ``m + (1 - m) * 0.5 * (1 + cos(pi * (step - W) / (steps - W)))`` with ``m = min_lr / lr``
        (without warmup and floor, ssl-transfer's ``CosineAnnealingLR(T_max=steps)``); multistep:
        ``gamma ** (milestones passed)``."""
        warmup = self.warmup_steps
        if step < warmup:
            return step / warmup
        if self.schedule == "cosine":
            cosine = 0.5 * (
                1.0 + math.cos(math.pi * (min(step, self.steps) - warmup) / (self.steps - warmup))
            )
            if self.min_lr == 0:
                return cosine
            floor = self.min_lr / self.lr
            return floor + (1.0 - floor) * cosine
        return self.gamma ** sum(step >= m for m in self.milestones)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- model


class FinetuneModel(nn.Module):
    """Backbone -> ``(B, D)`` features -> classifier; Core-tuning adds the contrastive head.

    ``forward(images)`` gives logits ``(B, C)``; ``forward(images, labels, draws, soft_targets)`` the
    training loss terms (so that DDP sees one forward per step): cross-entropy on ``labels``, or on
    ``soft_targets`` ``(B, C)`` when given (mixed and/or smoothed labels: timm's
    SoftTargetCrossEntropy, as MAE). Under DDP (``runtime`` with several ranks) Core-tuning's loss is
    over the global batch: ``draws`` are for the global batch, every rank's local batch has the same
    size and the returned logits are the local rows.

    ``vit_depth``: the number of blocks when the backbone is a ViT (layer-wise lr decay needs it).
    ``options.pool == "avg"`` adds ``fc_norm`` and freezes the backbone's final norm, which the
    pooled feature never uses (MAE deletes it; DDP refuses parameters without a gradient)."""

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        num_classes: int,
        method: str,
        core: CoreTuningSettings,
        options: ModelOptions | None = None,
        vit_depth: int | None = None,
    ) -> None:
        super().__init__()
        self.method, self.num_classes, self.core = method, num_classes, core
        self.options = options if options is not None else ModelOptions()
        self.vit_depth = vit_depth
        self.runtime = Runtime()  # set by :func:`finetune` to the run's
        self.backbone = backbone
        # ssl-transfer: nn.Linear(feature_dim, C); Core-tuning: nn.Linear(2048, C, bias=False)
        self.classifier = nn.Linear(dim, num_classes, bias=method == "ce")
        if self.options.head_init_std is not None:  # MAE main_finetune.py: trunc_normal_(head.weight, 2e-5)
            nn.init.trunc_normal_(self.classifier.weight, std=self.options.head_init_std)
            if self.classifier.bias is not None:
                nn.init.zeros_(self.classifier.bias)  # timm's ViT head init, which MAE keeps
        self.contrast_head = (
            coretuning.ContrastHead(dim, core.contrast_dim) if method == "coretuning" else None
        )
        self.fc_norm = None
        if self.options.pool == "avg":
            if vit_depth is None:
                raise ConfigError("pool avg (the mean of patch tokens) needs a ViT backbone")
            self.fc_norm = nn.LayerNorm(dim, eps=LAYERNORM_EPS)  # MAE models_vit.py: norm_layer(embed_dim)
            for parameter in backbone.norm.parameters():  # type: ignore[union-attr]
                parameter.requires_grad_(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with autocast_for(images):
            if self.fc_norm is not None:
                from sslbench.models.vit import last_block_patch_tokens

                pooled = last_block_patch_tokens(self.backbone, images).mean(dim=1)
                return self.fc_norm(pooled).float()
            return self.backbone(images).float().flatten(1)

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        draws: coretuning.MixDraws | None = None,
        soft_targets: torch.Tensor | None = None,
    ) -> Any:
        features = self.features(images)
        if labels is None:
            return self.classifier(features)
        if self.method == "ce":
            logits = self.classifier(features)
            if soft_targets is None:
                loss = F.cross_entropy(logits, labels)
            else:
                from timm.loss import SoftTargetCrossEntropy

                loss = SoftTargetCrossEntropy()(logits, soft_targets)
            return {
                "loss": loss,
                "ce": loss.detach(),
                "contrastive": torch.zeros_like(loss),
                "logits": logits,
            }
        assert self.contrast_head is not None
        every = gather_for_global_loss(features, self.runtime)
        every_labels = gather_rows(labels, self.runtime)
        out = coretuning.coretuning_loss(
            every,
            every_labels,
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
        local = slice(self.runtime.rank * len(labels), (self.runtime.rank + 1) * len(labels))
        return {
            "loss": out.total,
            "ce": out.ce.detach(),
            "contrastive": out.contrastive.detach(),
            "logits": out.logits[local],
        }


def reference_backbone(ckpt: CanonicalCheckpoint, options: ModelOptions) -> dict[str, torch.Tensor]:
    """The tensors the backbone must hold at step 0: the checkpoint's, a ViT's position embeddings
    resized to ``options.image_size`` as its source's eval code does (what the model loaded)."""
    if not is_vit_arch(ckpt.arch):
        return ckpt.state_dict
    from sslbench.models.vit import pos_embed_method, resized_state

    return resized_state(ckpt.arch, ckpt.state_dict, options.image_size, pos_embed_method(ckpt.source_format))


def build_finetune_model(
    ckpt: CanonicalCheckpoint,
    num_classes: int,
    method: str,
    core: CoreTuningSettings,
    seed: int,
    options: ModelOptions | None = None,
) -> FinetuneModel:
    """The checkpoint's backbone (loaded with ``strict=True``; a ResNet, or the canonical ViT at
    ``options.image_size``) and freshly initialised heads (seeded)."""
    options = options if options is not None else ModelOptions()
    vit_depth = None
    try:
        if is_vit_arch(ckpt.arch):
            from sslbench.models.vit import build_vit, pos_embed_method

            method_name = pos_embed_method(ckpt.source_format)
            backbone = build_vit(
                ckpt.arch, ckpt.state_dict, options.image_size, method_name, options.drop_path
            )
            vit_depth, dim = parse_vit_arch(ckpt.arch).depth, parse_vit_arch(ckpt.arch).width
        else:
            backbone, dim = build_backbone(ckpt.arch), feature_dim(ckpt.arch)
            backbone.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.source_path}: the backbone does not load strictly: {exc}") from None
    torch.manual_seed(seed)
    return FinetuneModel(backbone, dim, num_classes, method, core, options, vit_depth)


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


# ---------------------------------------------------------------- optimizer, targets, randomness

MIXUP_STREAM, DROP_PATH_STREAM = 1, 2  # tags that keep the per-step seeds of the two apart


def build_optimizer(model: FinetuneModel, settings: RunSettings) -> torch.optim.Optimizer:
    """sgd: ssl-transfer's one group with weight decay on every parameter; adamw: MAE's groups
    (:func:`~sslbench.evaluate.layer_decay.param_groups`), each at lr x its layer's scale."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            nesterov=settings.nesterov,
            weight_decay=settings.weight_decay,
        )
    groups = param_groups(
        model.named_parameters(), settings.weight_decay, settings.layer_decay, model.vit_depth
    )
    for group in groups:
        del group["names"]
        group["lr"] = settings.lr * group["lr_scale"]
    beta1, beta2 = settings.betas
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(beta1, beta2))


def optimizer_record(settings: RunSettings, vit_depth: int | None) -> dict[str, Any]:
    """What ``result.json`` says about the optimizer actually used."""
    if settings.optimizer == "sgd":
        kind = "Nesterov momentum" if settings.nesterov else "momentum"
        return {"name": f"SGD, {kind} {settings.momentum}, weight decay on every parameter"}
    record: dict[str, Any] = {
        "name": f"AdamW, betas {tuple(settings.betas)}, eps 1e-8 (torch default)",
        "weight_decay": f"{settings.weight_decay:g} on >= 2-d parameters but pos_embed and cls_token; "
        "0 on 1-d parameters, pos_embed, cls_token (MAE util/lr_decay.py)",
    }
    if vit_depth is not None:
        record["layer_decay"] = settings.layer_decay
        record["layer_scales"] = layer_scales(vit_depth, settings.layer_decay)
        record["layers"] = (
            "0: cls_token, pos_embed, patch_embed; i + 1: blocks.i; "
            f"{vit_depth + 1}: the rest (norms, fc_norm, head); "
            f"scale layer_decay ** ({vit_depth + 1} - layer)"
        )
    return record


def smoothed_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """``(B, C)`` targets ``(1 - s)`` on the label plus ``s / C`` everywhere (label smoothing as timm's
    LabelSmoothingCrossEntropy and Mixup's targets spread it)."""
    one_hot = F.one_hot(labels, num_classes).float()
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def _timm_mixup(settings: RunSettings, num_classes: int) -> Any:
    """timm's Mixup / CutMix in MAE's mode (per batch), or None when both are off."""
    if not settings.mixes:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=settings.mixup,
        cutmix_alpha=settings.cutmix,
        prob=settings.mixup_prob,
        switch_prob=settings.mixup_switch_prob,
        mode="batch",
        label_smoothing=settings.label_smoothing,
        num_classes=num_classes,
    )


@contextmanager
def _drop_path_rng(active: bool, device: torch.device, key: tuple[int, int, int]) -> Iterator[None]:
    """While ``active``: torch's generators seeded from ``key`` (seed, step, rank), restored afterwards,
    so that drop path draws the same masks when a run resumes."""
    if not active:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        number = np.random.SeedSequence([*key, DROP_PATH_STREAM]).generate_state(1, np.uint64)[0]
        torch.manual_seed(int(number))
        yield


# ---------------------------------------------------------------- training


@dataclass
class FinetuneRun:
    model: FinetuneModel
    history: list[dict[str, float]]  # per saved interval: step, lr, mean loss terms, train top-1
    resumed_from: int  # steps already done when this call started
    config_changes: list[dict[str, Any]] = field(default_factory=list)  # allowed on resume


StepHook = Callable[[int, FinetuneModel], None]


def _load_state(path: Path, fingerprint: dict[str, Any], allow_change: bool) -> dict[str, Any] | None:
    state = read_state(path)
    if state is None:
        return None
    if state.get("version") != STATE_VERSION or not isinstance(state.get("fingerprint"), dict):
        raise CheckpointError(f"{path}: not a fine-tuning state of this sslbench; delete it to start over")
    changes = check_fingerprint(path, state["fingerprint"], fingerprint, "a fine-tuning run", allow_change)
    if changes:
        state["config_changes"] = [
            *state.get("config_changes", []),
            change_entry(int(state["step"]), changes),
        ]
    return state


class _Interval:
    """The history's running sums since the last saved row: loss, ce, contrastive, correct, seen."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(5, device=device)

    def add(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        n = len(labels)
        correct = (out["logits"].detach().argmax(1) == labels).sum().float()
        self.sums += torch.stack(
            [out["loss"].detach() * n, out["ce"] * n, out["contrastive"] * n, correct, correct.new_tensor(n)]
        )

    def total(self, runtime: Runtime) -> list[float]:
        """The sums over every rank (a collective under DDP); then zero here."""
        totals = runtime.sum(self.sums).tolist()
        self.sums = torch.zeros_like(self.sums)
        return totals


class _RunState:
    """One fine-tuning run's optimizer, schedule, history and open interval; saves and restores them."""

    def __init__(
        self,
        model: FinetuneModel,
        settings: RunSettings,
        runtime: Runtime,
        fingerprint: dict[str, Any],
        state_path: Path | None,
    ) -> None:
        self.model, self.settings, self.runtime = model, settings, runtime
        self.fingerprint, self.state_path = fingerprint, state_path
        self.optimizer = build_optimizer(model, settings)
        self.mixup = _timm_mixup(settings, model.num_classes)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, settings.lr_factor)
        self.run = FinetuneRun(model, [], 0)
        self.interval = _Interval(runtime.device)

    def restore(self, allow_change: bool, initial_backbone: dict[str, torch.Tensor] | None) -> None:
        """Continue from the saved state if there is one, else check the backbone of a fresh run."""
        path = self.state_path
        state = _load_state(path, self.fingerprint, allow_change) if path is not None else None
        if state is None:
            if initial_backbone is not None:
                check_backbone_matches(self.model.backbone, initial_backbone)
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.run.history, self.run.resumed_from = list(state["history"]), int(state["step"])
        self.run.config_changes = list(state.get("config_changes", []))
        if self.runtime.main and "interval" in state:  # the open interval's sums, over all ranks
            self.interval.sums = state["interval"].to(self.runtime.device)

    def train_step(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, step: int) -> None:
        settings, rank = self.settings, self.runtime.rank
        draws, soft_targets = None, None
        if settings.method == "coretuning":
            global_batch = len(labels) * self.runtime.world  # equal shares: see SeededBatches
            draws = coretuning.draw_mixing(global_batch, settings.coretuning.alpha, (settings.seed, step))
        if self.mixup is not None:  # within each rank's batch, as MAE (one timm Mixup per process)
            with numpy_rng(settings.seed, step, rank, MIXUP_STREAM):
                images, soft_targets = self.mixup(images, labels)
        elif settings.label_smoothing > 0:
            soft_targets = smoothed_targets(labels, self.model.num_classes, settings.label_smoothing)
        with _drop_path_rng(self.model.options.drop_path > 0, images.device, (settings.seed, step, rank)):
            out = net(images, labels, draws, soft_targets)
            self.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
        self.optimizer.step()
        self.scheduler.step()
        self.interval.add(out, labels)

    def save(self, step: int, interrupted: bool = False) -> dict[str, float] | None:
        """Close the interval into a history row (kept open when ``interrupted``) and write the state
        (main rank); returns the row."""
        totals = self.interval.total(self.runtime)
        row = None
        if not interrupted:
            seen = max(totals[4], 1.0)
            row = {
                "step": step,
                "lr": self.optimizer.param_groups[0]["lr"],
                "loss": totals[0] / seen,
                "ce": totals[1] / seen,
                "contrastive": totals[2] / seen,
                "train_top1": 100.0 * totals[3] / seen,
            }
            self.run.history.append(row)
        if self.state_path is not None and self.runtime.main:
            torch_save(
                {
                    "version": STATE_VERSION,
                    "fingerprint": self.fingerprint,
                    "step": step,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "history": self.run.history,
                    "interval": torch.tensor(totals if interrupted else [0.0] * 5),
                    "config_changes": self.run.config_changes,
                },
                self.state_path,
            )
        self.runtime.barrier()
        return row


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
    runtime: Runtime | None = None,
    progress: bool = True,
    desc: str = "fine-tune",
    allow_change: bool = False,
    metrics: MetricsLog | None = None,
) -> FinetuneRun:
    """Train ``model`` on ``train_data`` (augmenting transform; ``(image, label)`` samples) for
    ``settings.steps`` steps, resuming from ``state_path`` when it holds the same ``fingerprint``
    (another one is refused unless ``allow_change``).

    ``initial_backbone``: the checkpoint's tensors, checked against the backbone before step 0 of a
    fresh run. ``on_step(step, model)`` is called before each step's forward (tests use it).
    ``runtime``: the process's place in a ``torchrun`` launch (default: one process on ``device``).
    A stop signal saves the state and raises :class:`TrainingInterrupted`."""
    runtime = runtime if runtime is not None else Runtime(device=device)
    precision = Precision(device)
    model = precision.model(model)
    model.runtime = runtime
    fingerprint = {"settings": settings.as_dict(), **(fingerprint or {})}
    state = _RunState(model, settings, runtime, fingerprint, state_path)
    state.restore(allow_change, initial_backbone)
    start = state.run.resumed_from
    net = runtime.wrap(model)
    sampler = SeededBatches(
        len(train_data),
        settings.batch_size,
        settings.seed,
        start,
        settings.steps,
        runtime.rank,
        runtime.world,
    )
    loader = DataLoader(
        SeededSamples(train_data, settings.seed),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    bar = Progress(settings.steps, desc, start, settings.batch_size, enabled=progress)
    with catch_stop_signals() as stop:
        for step, (images, labels) in enumerate(loader, start):
            if on_step is not None:
                on_step(step, model)
            model.train()
            labels = torch.as_tensor(labels, dtype=torch.long).to(device, non_blocking=True)
            state.train_step(net, precision.images(images), labels, step)
            done = step + 1
            bar.update()
            saved = done % settings.save_every == 0 or done == settings.steps
            if saved and (row := state.save(done)) is not None and metrics is not None:
                metrics.write(desc, done, **{k: v for k, v in row.items() if k != "step"})
            sync_point = saved or done % STOP_CHECK_EVERY == 0
            if done < settings.steps and stop.requested(runtime, at_sync_point=sync_point):
                bar.close()
                if not saved:
                    state.save(done, interrupted=True)
                raise TrainingInterrupted(f"fine-tuning ({desc})", state_path or Path("(no state)"), done)
    bar.close()
    return state.run


@torch.no_grad()
def evaluate(
    model: FinetuneModel,
    dataset: Dataset,
    num_classes: int,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    runtime: Runtime | None = None,
    progress: bool = True,
    desc: str = "evaluate",
) -> dict[str, float]:
    """top1 / top5 / mean_per_class (percent) of ``model`` on ``dataset`` (eval transform), eval mode.
    Under DDP each rank scores its shard of ``dataset`` and the tallies are summed."""
    runtime = runtime if runtime is not None else Runtime(device=device)
    precision = Precision(device)
    model = precision.model(model.eval())
    indices = list(shard(len(dataset), runtime.rank, runtime.world))  # type: ignore[arg-type]
    loader = DataLoader(
        Subset(dataset, indices), batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda"
    )
    tally = AccuracyTally(num_classes)
    bar = Progress(len(loader), desc, images_per_step=batch_size, enabled=progress)
    for images, labels in loader:
        tally.update(model(precision.images(images)).float().cpu(), torch.as_tensor(labels, dtype=torch.long))
        bar.update()
    bar.close()
    if runtime.distributed:
        counts = torch.tensor([tally.total, *tally.hits.values()], dtype=torch.long, device=device)
        per_class = torch.stack([tally.class_count, tally.class_correct]).to(device)
        counts, per_class = runtime.sum(counts).cpu(), runtime.sum(per_class).cpu()
        tally.total = int(counts[0])
        tally.hits = {k: int(v) for k, v in zip(tally.hits, counts[1:].tolist(), strict=True)}
        tally.class_count, tally.class_correct = per_class[0], per_class[1]
    return tally.result()
