"""The three SGD-style linear-probe recipes that one loop (``linear.train_linear_head``) runs.

A recipe says what differs between the sources: the head, the optimizer, the learning-rate schedule
(per epoch through a torch scheduler, or per iteration from the fractional epoch), whether the last
incomplete batch is dropped, and what the record says about it. The features it trains on are the
caller's (a frozen backbone module).

* :class:`MocoLinearRecipe`: MoCo ``main_lincls.py``; ``Linear`` N(0, 0.01), SGD, x0.1 at milestones.
* :class:`DinoLinearRecipe`: DINO ``eval_linear.py``; the same head, SGD momentum 0.9, lr = base x
  batch / 256, ``CosineAnnealingLR(epochs, eta_min=0)`` stepped per epoch.
* :class:`MaeLinearRecipe`: MAE ``main_linprobe.py``; ``BatchNorm1d(affine=False, eps=1e-6)`` then
  ``Linear`` (trunc-normal std 0.01, bias 0), LARS (:mod:`sslbench.evaluate.lars`), lr = blr x batch /
  256 with 10 warm-up epochs then half-cycle cosine, set every iteration (``util/lr_sched.py``), the
  last incomplete batch dropped.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sslbench.evaluate.lars import Lars
from sslbench.evaluate.protocol_defaults import (
    LR_REFERENCE_BATCH,
    DinoLinearSettings,
    MaeLinearSettings,
    SgdSettings,
)

Scheduler = torch.optim.lr_scheduler.LRScheduler

MOCO_SOURCE = "MoCo main_lincls.py (He et al. 2020)"
DINO_SOURCE = "facebookresearch/dino eval_linear.py (Caron et al. 2021)"
MAE_SOURCE = "facebookresearch/mae main_linprobe.py, util/lars.py, util/lr_sched.py (He et al. 2022)"
LAST_EPOCH_NOTE = (
    "the head after the last epoch is scored once on test; DINO and MAE print the best test accuracy "
    "over epochs, which selects on the test set, so sslbench reports the last (as MoCo main_lincls's "
    "final model)"
)


def linear_head(feature_dim: int, num_classes: int) -> nn.Linear:
    """``Linear(D, C)``, weights N(0, 0.01), bias 0 (MoCo main_lincls; DINO's LinearClassifier)."""
    head = nn.Linear(feature_dim, num_classes)
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def mae_head(feature_dim: int, num_classes: int, bn_eps: float) -> nn.Sequential:
    """``BatchNorm1d(D, affine=False, eps)`` then ``Linear(D, C)`` with weights truncated-normal
    std 0.01 (cut at +-2, timm's ``trunc_normal_`` bounds) and bias 0 (MAE main_linprobe)."""
    linear = nn.Linear(feature_dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01, a=-2.0, b=2.0)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False, eps=bn_eps), linear)


def mae_lr(fractional_epoch: float, settings: MaeLinearSettings) -> float:
    """MAE util/lr_sched.py ``adjust_learning_rate``: linear warm-up from 0 over ``warmup_epochs``,
    then half-cycle cosine from the lr to ``min_lr`` at ``epochs`` (same arithmetic order)."""
    lr, warmup = settings.effective_lr(), settings.warmup_epochs
    if fractional_epoch < warmup:
        return lr * fractional_epoch / warmup
    progress = (fractional_epoch - warmup) / (settings.epochs - warmup)
    return settings.min_lr + (lr - settings.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _lr_rule(lr: float | None) -> str:
    return "given by --lr" if lr is not None else f"base_lr x batch_size / {LR_REFERENCE_BATCH}"


class LinearRecipe(ABC):
    """What a source's linear probe trains: see the module docstring."""

    name: ClassVar[str]  # the record's protocol name
    source: ClassVar[str]
    drop_last: ClassVar[bool] = False
    lr_per_iteration: ClassVar[bool] = False  # True: iteration_lr sets the lr before every step
    settings: Any  # SgdSettings | DinoLinearSettings | MaeLinearSettings: epochs, batch_size, seed, as_dict()

    @abstractmethod
    def head(self, feature_dim: int, num_classes: int) -> nn.Module: ...

    @abstractmethod
    def optimizer(self, head: nn.Module) -> torch.optim.Optimizer: ...

    def epoch_scheduler(self, optimizer: torch.optim.Optimizer) -> Scheduler | None:
        """A torch scheduler stepped after every epoch (None: the lr is set per iteration)."""
        return None

    def iteration_lr(self, fractional_epoch: float) -> float:
        """The lr of the step at ``epoch + step / steps_per_epoch`` (``lr_per_iteration`` recipes)."""
        raise TypeError(f"{type(self).__name__} sets its lr per epoch, not per iteration")

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Every setting of the recipe, for the record."""


@dataclass
class MocoLinearRecipe(LinearRecipe):
    settings: SgdSettings
    name: ClassVar[str] = "linear-sgd"
    source: ClassVar[str] = MOCO_SOURCE

    def head(self, feature_dim: int, num_classes: int) -> nn.Module:
        return linear_head(feature_dim, num_classes)

    def optimizer(self, head: nn.Module) -> torch.optim.Optimizer:
        s = self.settings
        return torch.optim.SGD(head.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)

    def epoch_scheduler(self, optimizer: torch.optim.Optimizer) -> Scheduler:
        s = self.settings
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, s.milestone_epochs(), s.gamma)

    def describe(self) -> dict[str, Any]:
        return {
            **self.settings.as_dict(),
            "optimizer": "SGD on the head only; backbone frozen in eval mode",
            "head_init": "N(0, 0.01), bias 0",
        }


@dataclass
class DinoLinearRecipe(LinearRecipe):
    settings: DinoLinearSettings
    name: ClassVar[str] = "linear-dino"
    source: ClassVar[str] = DINO_SOURCE

    def head(self, feature_dim: int, num_classes: int) -> nn.Module:
        return linear_head(feature_dim, num_classes)

    def optimizer(self, head: nn.Module) -> torch.optim.Optimizer:
        s = self.settings
        return torch.optim.SGD(
            head.parameters(), lr=s.effective_lr(), momentum=s.momentum, weight_decay=s.weight_decay
        )

    def epoch_scheduler(self, optimizer: torch.optim.Optimizer) -> Scheduler:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.settings.epochs, eta_min=0)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            **s.as_dict(),
            "lr_rule": _lr_rule(s.lr),
            "head": "Linear(D, C), weights N(0, 0.01), bias 0 (DINO LinearClassifier)",
            "optimizer": f"SGD momentum {s.momentum}, weight decay {s.weight_decay}, on the head only; "
            "backbone frozen in eval mode",
            "schedule": f"CosineAnnealingLR(T_max={s.epochs}, eta_min=0), stepped after every epoch",
            "drop_last": self.drop_last,
            "source_batch": "DINO's README runs 8 GPUs x 128 = 1024 (lr 0.004); its argparse default, "
            "one process, is 128",
        }


@dataclass
class MaeLinearRecipe(LinearRecipe):
    settings: MaeLinearSettings
    name: ClassVar[str] = "linear-mae"
    source: ClassVar[str] = MAE_SOURCE
    drop_last: ClassVar[bool] = True  # main_linprobe.py: data_loader_train(drop_last=True)
    lr_per_iteration: ClassVar[bool] = True  # engine_finetune.py: adjust_learning_rate every iteration

    def head(self, feature_dim: int, num_classes: int) -> nn.Module:
        return mae_head(feature_dim, num_classes, self.settings.bn_eps)

    def optimizer(self, head: nn.Module) -> torch.optim.Optimizer:
        s = self.settings
        return Lars(
            head.parameters(),
            lr=s.effective_lr(),
            weight_decay=s.weight_decay,
            momentum=s.momentum,
            trust_coefficient=s.trust_coefficient,
        )

    def iteration_lr(self, fractional_epoch: float) -> float:
        return mae_lr(fractional_epoch, self.settings)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            **s.as_dict(),
            "lr_rule": _lr_rule(s.lr),
            "head": f"BatchNorm1d(D, affine=False, eps={s.bn_eps}) then Linear(D, C), weights "
            "trunc_normal std 0.01, bias 0 (MAE main_linprobe)",
            "optimizer": f"LARS (MAE util/lars.py): momentum {s.momentum}, trust coefficient "
            f"{s.trust_coefficient}, weight decay {s.weight_decay} and trust ratio on parameters with "
            "ndim > 1 only; head only, backbone frozen in eval mode",
            "schedule": f"linear warm-up over {s.warmup_epochs} epochs, then half-cycle cosine to min_lr "
            f"{s.min_lr}, set before every iteration at epoch + step / steps_per_epoch "
            "(MAE util/lr_sched.py, engine_finetune.py)",
            "drop_last": self.drop_last,
            "source_batch": "MAE's linear-probing runs use 4 nodes x 8 GPUs x 512 = 16384 (lr 6.4); its "
            "argparse default, one process, is 512",
            "backbone_mode": "eval; MAE calls model.train(), but its linear-probe ViT has no dropout or drop "
            "path, so its features are the same",
            "bn_statistics": "each process's share of the batch under DDP (MAE has no SyncBatchNorm); the "
            "running statistics score the test set",
        }


def as_recipe(settings: LinearRecipe | SgdSettings) -> LinearRecipe:
    """A recipe as given, or MoCo's for plain :class:`SgdSettings`."""
    return MocoLinearRecipe(settings) if isinstance(settings, SgdSettings) else settings
