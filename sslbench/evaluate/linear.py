"""Linear probes on a frozen backbone: L-BFGS on cached features, and trained heads (MoCo, DINO, MAE).

* :func:`lbfgs_probe`: ssl-transfer ``linear.py`` (Ericsson et al. CVPR 2021). Multinomial
  logistic regression (scikit-learn, L-BFGS, ``warm_start=True``, its default ``max_iter=100``),
  ``C = 1 / wd`` with wd over ``logspace(-6, 5, 45)`` in that order; the C with the best validation
  score (the dataset's headline metric; the first best wins, as ssl-transfer keeps a strictly
  better one) is refit on train+val and scored on test once. The grid is built with ssl-transfer's
  arithmetic (:func:`c_grid`: wd in float32, the reciprocal in float64): a float64 grid differs by
  ~5e-8 relative, and through the warm starts and the capped iterations that can change the
  chosen C and the test score by more than a point.
* :func:`train_linear_head`: one loop for the SGD-style recipes of :mod:`~sslbench.evaluate.linear_recipes`
  (MoCo's, DINO's, MAE's: head, optimizer, per-epoch or per-iteration lr). MoCo's
  ``main_lincls.py`` (He et al. 2020), the default: a ``Linear(D, C)`` head
  (weights N(0, 0.01), bias 0) on the frozen backbone kept in eval mode (BN statistics fixed),
  SGD lr 30, momentum 0.9, weight decay 0, batch 256, 100 epochs, lr x0.1 at epochs 60 and 80,
  RandomResizedCrop 224 + flip. The state is saved every epoch and a rerun resumes from it (a stop
  signal exits 143 and the rerun redoes the unfinished epoch); at the end
  :func:`check_backbone_unchanged` compares every backbone tensor with the checkpoint's (MoCo's
  ``sanity_check``). Under ``torchrun`` the head is in DDP and each global batch is split across the
  ranks (as ``main_lincls.py`` does); the loss is scaled so that the averaged gradient is the
  gradient of the global batch's mean loss, whatever the ranks' shares.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sslbench.atomic import torch_save
from sslbench.checkpoints.canonical import tensors_differing
from sslbench.errors import CheckpointError, ConfigError
from sslbench.evaluate.linear_recipes import LinearRecipe, Scheduler, as_recipe
from sslbench.evaluate.metrics import AccuracyTally
from sslbench.evaluate.protocol_defaults import C_GRID_SIZE, LBFGS_MAX_ITER, WD_RANGE, SgdSettings
from sslbench.runtime.precision import Precision
from sslbench.runtime.process import Runtime
from sslbench.runtime.progress import MetricsLog, Progress, tracked
from sslbench.runtime.resume import change_entry, check_fingerprint, read_state
from sslbench.runtime.sampling import SeededBatches, SeededSamples, steps_per_epoch
from sslbench.runtime.signals import (
    STOP_CHECK_EVERY,
    StopSignal,
    TrainingInterrupted,
    catch_stop_signals,
)

C_GRID_ARITHMETIC = "wd = torch.logspace(-6, 5, N) in float32; C = 1 / wd in float64 (ssl-transfer)"


def c_grid(size: int = C_GRID_SIZE) -> list[float]:
    """``C = 1 / wd`` for wd over ``logspace(-6, 5, size)``, in ssl-transfer's order (wd rising) and
    with its arithmetic: wd is ``torch.logspace`` in float32 (torch's default dtype) and each C the
    float64 reciprocal of one float32 value (ssl-transfer: ``C = 1. / wd.item()``)."""
    if size < 1:
        raise ValueError("the C grid needs at least one value")
    wds = torch.logspace(*WD_RANGE, size, dtype=torch.float32)
    return [1.0 / wd for wd in wds.tolist()]  # tolist(): the exact float32 values as Python floats


@dataclass
class LbfgsResult:
    best_c: float
    sweep: list[dict[str, float]]  # per C: validation metrics and L-BFGS iterations
    metrics: dict[str, float]  # test, after the refit on train+val
    predictions: np.ndarray  # (M,) top-1 test predictions


def _scores(clf: Any, features: np.ndarray, num_classes: int) -> torch.Tensor:
    """``(M, num_classes)`` decision scores; classes absent from the fit score -inf."""
    decision = np.asarray(clf.decision_function(features), dtype=np.float64)
    if decision.ndim == 1:  # two classes: sklearn returns the score of the second
        decision = np.stack([-decision, decision], axis=1)
    scores = torch.full((len(features), num_classes), float("-inf"), dtype=torch.float64)
    scores[:, torch.as_tensor(clf.classes_, dtype=torch.long)] = torch.from_numpy(decision)
    return scores


def _evaluate(
    clf: Any, features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[dict, np.ndarray]:
    tally = AccuracyTally(num_classes)
    predictions = tally.update(_scores(clf, features, num_classes), torch.as_tensor(labels, dtype=torch.long))
    return tally.result(), predictions.numpy()


def lbfgs_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    trainval: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    cs: list[float] | None = None,
    select_metric: str = "top1",
    max_iter: int = LBFGS_MAX_ITER,
    progress: bool = False,
) -> LbfgsResult:
    """Sweep ``cs`` on (train -> val), refit the best on trainval, score test. Each pair is
    ``(features (N, D), labels (N,) in 0..num_classes-1)``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    cs = c_grid() if cs is None else cs
    clf = LogisticRegression(solver="lbfgs", warm_start=True, max_iter=max_iter)
    sweep: list[dict[str, float]] = []
    best_c, best_score = cs[0], -1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # as ssl-transfer: max_iter is the protocol
        for c in tracked(cs, "C sweep", progress):
            clf.set_params(C=c)
            clf.fit(*train)
            metrics, _ = _evaluate(clf, *val, num_classes)
            sweep.append(
                {"C": c, **{f"val_{k}": v for k, v in metrics.items()}, "iterations": int(clf.n_iter_[0])}
            )
            if metrics[select_metric] > best_score:
                best_c, best_score = c, metrics[select_metric]
        clf.set_params(C=best_c)
        clf.fit(*trainval)
    metrics, predictions = _evaluate(clf, *test, num_classes)
    return LbfgsResult(best_c, sweep, metrics, predictions)


@dataclass
class SgdRun:
    head: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, lr, train top-1
    resumed_from: int = 0  # epochs already done when this run started
    config_changes: list[dict[str, Any]] = field(default_factory=list)  # allowed on resume


def epoch_loaders(
    dataset: Dataset,
    settings: Any,
    runtime: Runtime,
    workers: int = 0,
    drop_last: bool = False,
) -> Callable[[int], DataLoader]:
    """``loader(epoch)``: this rank's share of each global batch of ``settings.batch_size`` in
    ``epoch``, seeded by (seed, epoch) and augmented by (seed, epoch, index) whatever the world size
    (:mod:`sslbench.runtime.sampling`). ``drop_last``: False keeps the last, incomplete batch
    (main_lincls, DINO eval_linear), True drops it (MAE main_linprobe). ``settings``: any recipe's
    settings (``batch_size``, ``seed``)."""
    if settings.batch_size % runtime.world:
        raise ConfigError(f"--batch-size {settings.batch_size} is not divisible by {runtime.world} processes")
    size = len(dataset)  # type: ignore[arg-type]
    per_epoch = steps_per_epoch(size, settings.batch_size, runtime.world, drop_last=drop_last)
    samples = SeededSamples(dataset, settings.seed)

    def loader(epoch: int) -> DataLoader:
        batches = SeededBatches(
            size,
            settings.batch_size,
            settings.seed,
            epoch * per_epoch,
            (epoch + 1) * per_epoch,
            runtime.rank,
            runtime.world,
            drop_last=drop_last,
        )
        pin = runtime.device.type == "cuda"
        return DataLoader(samples, batch_sampler=batches, num_workers=workers, pin_memory=pin)

    return loader


def _probe_loss(
    logits: torch.Tensor, labels: torch.Tensor, runtime: Runtime
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss to back-propagate and the summed loss of the local samples (for the history).

    One process: the mean cross-entropy. Under DDP the global batch's mean is the sum over ranks of
    ``CE_sum_r / n``; DDP averages the ranks' gradients, so each rank back-propagates
    ``world * CE_sum_r / n`` (``n``: the global batch, counted over the ranks)."""
    if not runtime.distributed:
        loss = F.cross_entropy(logits, labels)
        return loss, loss.detach() * len(labels)
    count = runtime.sum(torch.tensor(float(len(labels)), device=logits.device))
    summed = F.cross_entropy(logits, labels, reduction="sum")
    return summed * runtime.world / count, summed.detach()


def _load_probe_state(
    path: Path | None, fingerprint: dict[str, Any], allow_change: bool
) -> dict[str, Any] | None:
    state = read_state(path) if path is not None else None
    if state is None:
        return None
    assert path is not None
    changes = check_fingerprint(
        path, state.get("fingerprint", {}), fingerprint, "a linear probe", allow_change
    )
    if changes:
        entry = change_entry(len(state["history"]), changes)
        state["config_changes"] = [*state.get("config_changes", []), entry]
    return state


@dataclass
class _Trainer:
    """The head, its optimizer and epoch scheduler (if the recipe has one), and the run so far."""

    head: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    run: SgdRun

    def restore(self, state: dict[str, Any], path: Path) -> None:
        try:
            self.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError) as exc:  # another recipe's head (an allowed change)
            why = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"{path}: its head or optimizer state does not fit this probe ({why}); use another --out"
            ) from None
        torch.set_rng_state(state["rng"])
        self.run.history = list(state["history"])
        self.run.resumed_from = len(self.run.history)
        self.run.config_changes = list(state.get("config_changes", []))

    def save(self, path: Path, fingerprint: dict[str, Any]) -> None:
        torch_save(
            {
                "fingerprint": fingerprint,
                "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                "rng": torch.get_rng_state(),
                "history": self.run.history,
                "config_changes": self.run.config_changes,
            },
            path,
        )


def train_linear_head(
    backbone: nn.Module,
    feature_dim: int,
    num_classes: int,
    loader_for_epoch: Callable[[int], DataLoader],
    recipe: LinearRecipe | SgdSettings,
    device: torch.device,
    state_path: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    progress: bool = True,
    runtime: Runtime | None = None,
    allow_change: bool = False,
    metrics: MetricsLog | None = None,
) -> SgdRun:
    """Train ``recipe``'s head (MoCo's for plain :class:`SgdSettings`) on ``backbone`` (frozen, eval
    mode; its output is the feature) for ``recipe.settings.epochs`` epochs over
    ``loader_for_epoch(epoch)`` (this rank's share of each global batch under DDP); resume from
    ``state_path`` when it holds the same ``fingerprint`` (another is refused unless ``allow_change``)."""
    recipe = as_recipe(recipe)
    settings = recipe.settings
    runtime = runtime if runtime is not None else Runtime(device=device)
    torch.manual_seed(settings.seed)
    precision = Precision(device)
    backbone = precision.model(backbone.eval())
    for p in backbone.parameters():
        p.requires_grad_(False)
    head = recipe.head(feature_dim, num_classes).to(device)
    net = runtime.wrap(head)
    optimizer = recipe.optimizer(head)
    trainer = _Trainer(head, optimizer, recipe.epoch_scheduler(optimizer), SgdRun(head))
    fingerprint = {"settings": settings.as_dict(), **(fingerprint or {})}
    state = _load_probe_state(state_path, fingerprint, allow_change)
    if state is not None and state_path is not None:
        trainer.restore(state, state_path)
    run = trainer.run

    with catch_stop_signals() as stop:
        for epoch in range(run.resumed_from, settings.epochs):
            loader = loader_for_epoch(epoch)
            lr_at = _iteration_schedule(recipe, epoch, len(loader))
            lr = lr_at(0) if lr_at is not None else optimizer.param_groups[0]["lr"]
            desc = f"linear epoch {epoch + 1}/{settings.epochs}"
            bar = Progress(len(loader), desc, 0, settings.batch_size, progress)
            sums = _train_epoch(backbone, net, optimizer, loader, precision, runtime, stop, bar, lr_at)
            bar.close()
            if sums is None:
                raise TrainingInterrupted(
                    f"the linear probe (epoch {epoch + 1})",
                    state_path or Path("(no state file)"),
                    bar.step,
                    f" at the end of epoch {epoch}; the rerun redoes epoch {epoch + 1}",
                )
            if trainer.scheduler is not None:
                trainer.scheduler.step()
            row = _epoch_row(epoch, lr, *sums, runtime)
            run.history.append(row)
            if metrics is not None:
                metrics.write("linear", epoch + 1, **{k: v for k, v in row.items() if k != "epoch"})
            if state_path is not None and runtime.main:
                trainer.save(state_path, fingerprint)
            runtime.barrier()
    return run


def _iteration_schedule(recipe: LinearRecipe, epoch: int, steps: int) -> Callable[[int], float] | None:
    """``step -> lr`` for a recipe that sets the lr every iteration (MAE: at ``step / steps + epoch``,
    as its engine computes the fractional epoch), None for one with an epoch scheduler."""
    if not recipe.lr_per_iteration:
        return None
    return lambda step: recipe.iteration_lr(step / steps + epoch)


def _train_epoch(
    backbone: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    precision: Precision,
    runtime: Runtime,
    stop: StopSignal,
    bar: Progress,
    lr_at: Callable[[int], float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """One epoch of training ``head`` over the frozen ``backbone``'s features: the summed loss, the
    correct count (both on the device: no host sync per step) and the sample count; ``None`` when a
    stop signal ended it early. ``lr_at(step)``: the lr set before each step (0-based), if any."""
    head.train()
    total_loss = torch.zeros((), device=precision.device)
    correct = torch.zeros((), dtype=torch.long, device=precision.device)
    seen = 0
    for step, (images, labels) in enumerate(loader, 1):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step - 1)
        labels = torch.as_tensor(labels, dtype=torch.long).to(precision.device, non_blocking=True)
        with torch.no_grad(), precision.autocast():
            features = backbone(precision.images(images))
        logits = head(features.float().flatten(1))
        loss, summed = _probe_loss(logits, labels, runtime)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += summed
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        bar.update()
        if stop.requested(runtime, at_sync_point=step % STOP_CHECK_EVERY == 0):
            return None
    return total_loss, correct, seen


def _epoch_row(
    epoch: int, lr: float, total_loss: torch.Tensor, correct: torch.Tensor, seen: int, runtime: Runtime
) -> dict[str, float]:
    """The history row of one epoch: mean loss and train top-1 over every rank's samples."""
    if runtime.distributed:
        totals = torch.stack([total_loss.double(), correct.double(), total_loss.new_tensor(seen).double()])
        runtime.sum(totals)
        loss_sum, hits, seen = float(totals[0]), int(totals[1]), int(totals[2])
    else:
        loss_sum, hits = float(total_loss), int(correct)
    return {"epoch": epoch + 1, "lr": lr, "loss": loss_sum / seen, "train_top1": 100.0 * hits / seen}


def check_backbone_unchanged(backbone: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """MoCo's ``sanity_check``: every backbone tensor (BN statistics included) equals the
    checkpoint's. Raises ``RuntimeError`` naming the tensors that moved."""
    changed = tensors_differing(backbone, reference)
    if changed:
        raise RuntimeError(f"the frozen backbone changed during the linear probe: {changed[:8]}")


@torch.no_grad()
def head_scores(head: nn.Module, features: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
    """``(M, C)`` logits of the head (eval mode: a BatchNorm uses its running statistics) on frozen
    features ``(M, D)``, on the CPU."""
    head = head.eval().cpu().float()
    return torch.cat(
        [head(features[i : i + batch_size].float()) for i in range(0, len(features), batch_size)]
    )
