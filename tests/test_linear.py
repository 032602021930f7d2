"""Linear probes: the L-BFGS C sweep (ssl-transfer) and the SGD head on a frozen backbone (MoCo)."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sslbench.errors import ConfigError
from sslbench.evaluate.linear import (
    SgdSettings,
    c_grid,
    check_backbone_unchanged,
    head_scores,
    lbfgs_probe,
    train_linear_head,
)
from sslbench.evaluate.metrics import accuracy_metrics


def _blobs(n: int, dim: int, num_classes: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(num_classes, dim)) * 3
    labels = rng.integers(0, num_classes, n)
    return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


def test_c_grid_is_ssl_transfer_logspace_in_its_order() -> None:
    grid = c_grid()
    assert len(grid) == 45 and grid[0] == pytest.approx(1e6) and grid[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in itertools.pairwise(grid))


def test_c_grid_is_the_float64_reciprocal_of_float32_weight_decays_as_ssl_transfer_computes_it() -> None:
    # by hand: the exponents -6 + 11 k / 44 = -6 + k / 4 are exact; each wd is 10**exponent rounded
    # to float32 (torch.logspace's default dtype), and C = 1. / wd.item() divides in float64
    wd32 = [float(np.float32(10.0 ** (-6 + k / 4))) for k in range(45)]
    expected = [1.0 / wd for wd in wd32]
    assert c_grid() == expected  # bit for bit
    assert c_grid()[:2] == [1000000.0025247573, 562341.3291514061]
    # a float64 grid is not the same list: ~5e-8 relative apart on most values
    float64 = 1.0 / np.logspace(-6, 5, 45)
    relative = np.abs(np.asarray(expected) / float64 - 1)
    assert (relative > 0).sum() >= 30 and 1e-8 < relative.max() < 1e-7
    assert c_grid(9) == [1.0 / float(np.float32(10.0 ** (-6 + 11 * k / 8))) for k in range(9)]


def test_lbfgs_chooses_the_c_with_the_best_validation_accuracy() -> None:
    # overlapping classes in many dimensions: regularisation matters, validation accuracy varies with C
    train, val, trainval, test = (
        _blobs(n, 40, 4, 6.0, seed) for n, seed in ((120, 1), (200, 2), (320, 3), (200, 4))
    )
    cs = c_grid(9)
    result = lbfgs_probe(train, val, trainval, test, num_classes=4, cs=cs)

    # independent: the same warm-started sweep with sklearn's own score()
    clf = LogisticRegression(solver="lbfgs", warm_start=True)
    expected = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in cs:
            clf.set_params(C=c)
            expected.append(100 * clf.fit(*train).score(*val))
    assert [row["val_top1"] for row in result.sweep] == pytest.approx(expected)
    assert len(set(np.round(expected, 6))) > 1, "the validation accuracies should differ across C"
    assert result.best_c == cs[int(np.argmax(expected))]  # argmax keeps the first best, as ssl-transfer does
    assert [row["C"] for row in result.sweep] == cs


def test_lbfgs_reaches_100_percent_on_linearly_separable_features() -> None:
    parts = [_blobs(n, 16, 5, 0.3, seed) for n, seed in ((100, 1), (50, 2), (150, 3), (80, 4))]
    result = lbfgs_probe(*parts, num_classes=5, cs=c_grid(5))
    assert result.metrics == {"top1": 100.0, "top5": 100.0, "mean_per_class": 100.0}
    assert (result.predictions == parts[3][1]).all()


class TinyBackbone(nn.Module):
    """Conv + BN + pooling: enough to show that BN statistics stay frozen in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _colour_images(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = 0.3 * torch.randn(n, 3, 8, 8, generator=g)
    images[torch.arange(n), labels] += 2.0  # class = the bright channel
    return TensorDataset(images, labels)


def _loader(data: TensorDataset, interrupt_at: int | None = None):
    def for_epoch(epoch: int) -> DataLoader:
        if epoch == interrupt_at:
            raise KeyboardInterrupt
        return DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(epoch))

    return for_epoch


def test_sgd_probe_learns_and_leaves_the_frozen_backbone_unchanged() -> None:
    torch.manual_seed(0)
    backbone = TinyBackbone()
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    settings = SgdSettings(epochs=6, lr=1.0, batch_size=16)
    run = train_linear_head(backbone, 8, 3, _loader(_colour_images(96, 0)), settings, torch.device("cpu"))
    check_backbone_unchanged(backbone, reference)  # BN running stats too: eval mode throughout
    assert [h["lr"] for h in run.history] == pytest.approx([1.0] * 4 + [0.1] + [0.01])  # x0.1 at 60% and 80%
    test = _colour_images(60, 1)
    with torch.no_grad():
        features = backbone.eval()(test.tensors[0])
    assert accuracy_metrics(head_scores(run.head, features), test.tensors[1])["top1"] > 80

    backbone.body[1].running_mean += 1e-3
    with pytest.raises(RuntimeError, match=r"backbone changed .*body\.1\.running_mean"):
        check_backbone_unchanged(backbone, reference)


def test_interrupted_sgd_probe_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    data, settings, cpu = (
        _colour_images(48, 0),
        SgdSettings(epochs=3, lr=0.5, batch_size=16),
        torch.device("cpu"),
    )
    torch.manual_seed(0)
    straight = train_linear_head(TinyBackbone(), 8, 3, _loader(data), settings, cpu, progress=False)

    state = tmp_path / "linear_state.pth"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_linear_head(
            TinyBackbone(), 8, 3, _loader(data, interrupt_at=2), settings, cpu, state, progress=False
        )
    assert len(torch.load(state, weights_only=True)["history"]) == 2
    torch.manual_seed(0)
    resumed = train_linear_head(TinyBackbone(), 8, 3, _loader(data), settings, cpu, state, progress=False)
    assert resumed.resumed_from == 2 and len(resumed.history) == 3
    assert torch.equal(resumed.head.weight, straight.head.weight)

    with pytest.raises(ConfigError, match=r"linear_state\.pth: holds a linear probe of other settings"):
        other = SgdSettings(epochs=3, lr=0.1, batch_size=16)
        train_linear_head(TinyBackbone(), 8, 3, _loader(data), other, cpu, state, progress=False)
