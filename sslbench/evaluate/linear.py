"""Linear probes on a frozen backbone: L-BFGS on cached features, and the SGD protocol of MoCo.

* :func:`lbfgs_probe`: ssl-transfer ``linear.py`` (Ericsson et al. CVPR 2021). Multinomial
  logistic regression (scikit-learn, L-BFGS, ``warm_start=True``, its default ``max_iter=100``),
  ``C = 1 / wd`` with wd over ``logspace(-6, 5, 45)`` in that order; the C with the best validation
  score (the dataset's headline metric; the first best wins, as ssl-transfer keeps a strictly
  better one) is refit on train+val and scored on test once. The grid is built with ssl-transfer's
  arithmetic (:func:`c_grid`: wd in float32, the reciprocal in float64): a float64 grid differs by
  ~5e-8 relative, and through the warm starts and the capped iterations that can change the
  chosen C and the test score by more than a point.
* :func:`train_linear_head`: MoCo ``main_lincls.py`` (He et al. 2020). A ``Linear(D, C)`` head
  (weights N(0, 0.01), bias 0) on the frozen backbone kept in eval mode (BN statistics fixed),
  SGD lr 30, momentum 0.9, weight decay 0, batch 256, 100 epochs, lr x0.1 at epochs 60 and 80,
  RandomResizedCrop 224 + flip. The state is saved every epoch and a rerun resumes from it; at the
  end :func:`check_backbone_unchanged` compares every backbone tensor with the checkpoint's
  (MoCo's ``sanity_check``).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from sslbench.atomic import torch_save
from sslbench.checkpoints.canonical import tensors_differing
from sslbench.errors import ConfigError
from sslbench.evaluate.metrics import AccuracyTally
from sslbench.evaluate.protocol_defaults import C_GRID_SIZE, LBFGS_MAX_ITER, WD_RANGE, SgdSettings

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
        for c in tqdm(cs, desc="C sweep", disable=not progress, file=sys.stderr):
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


def linear_head(feature_dim: int, num_classes: int) -> nn.Linear:
    """``Linear(D, C)``, weights N(0, 0.01), bias 0 (MoCo main_lincls)."""
    head = nn.Linear(feature_dim, num_classes)
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return head


@dataclass
class SgdRun:
    head: nn.Linear
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, lr, train top-1
    resumed_from: int = 0  # epochs already done when this run started


def train_linear_head(
    backbone: nn.Module,
    feature_dim: int,
    num_classes: int,
    loader_for_epoch: Callable[[int], DataLoader],
    settings: SgdSettings,
    device: torch.device,
    state_path: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    progress: bool = True,
) -> SgdRun:
    """Train a linear head on ``backbone`` (frozen, eval mode) for ``settings.epochs`` epochs over
    ``loader_for_epoch(epoch)``; resume from ``state_path`` when it holds the same ``fingerprint``."""
    torch.manual_seed(settings.seed)
    backbone = backbone.eval().to(device)
    for p in backbone.parameters():
        p.requires_grad_(False)
    cuda = device.type == "cuda"
    if cuda:
        backbone = backbone.to(memory_format=torch.channels_last)
    head = linear_head(feature_dim, num_classes).to(device)
    optimizer = torch.optim.SGD(
        head.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, settings.milestone_epochs(), settings.gamma)
    run = SgdRun(head)
    fingerprint = {"settings": settings.as_dict(), **(fingerprint or {})}
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{state_path}: holds a linear probe of other settings, checkpoint or data; "
                "use another --out folder (or delete the file to start over)"
            )
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        run.history = list(state["history"])
        run.resumed_from = len(run.history)

    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(run.resumed_from, settings.epochs):
        head.train()
        # summed on the device: no host sync per step
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        lr = optimizer.param_groups[0]["lr"]
        batches = tqdm(
            loader_for_epoch(epoch),
            desc=f"linear epoch {epoch + 1}/{settings.epochs}",
            unit="batch",
            disable=not progress,
            file=sys.stderr,
        )
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            labels = torch.as_tensor(labels, dtype=torch.long).to(device, non_blocking=True)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                features = backbone(images)
            logits = head(features.float().flatten(1))
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
        scheduler.step()
        run.history.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "loss": float(total_loss) / seen,
                "train_top1": 100.0 * int(correct) / seen,
            }
        )
        if state_path is not None:
            torch_save(
                {
                    "fingerprint": fingerprint,
                    "head": head.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "history": run.history,
                },
                state_path,
            )
    return run


def check_backbone_unchanged(backbone: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """MoCo's ``sanity_check``: every backbone tensor (BN statistics included) equals the
    checkpoint's. Raises ``RuntimeError`` naming the tensors that moved."""
    changed = tensors_differing(backbone, reference)
    if changed:
        raise RuntimeError(f"the frozen backbone changed during the linear probe: {changed[:8]}")


@torch.no_grad()
def head_scores(head: nn.Linear, features: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
    """``(M, C)`` logits of the head on frozen features ``(M, D)``, on the CPU."""
    head = head.eval().cpu().float()
    return torch.cat(
        [head(features[i : i + batch_size].float()) for i in range(0, len(features), batch_size)]
    )
