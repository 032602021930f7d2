"""LARS as MAE's linear probe uses it (MAE ``util/lars.py``, itself MoCo v3's).

timm's ``timm.optim.Lars`` is not the same rule: it adapts the rate only when the group's weight
decay is non-zero (or ``always_adapt``), then for every parameter of the group, biases included, and
its trust ratio divides by ``|g| + wd |w| + eps`` instead of ``|g + wd w|``. With MAE's weight decay
0 it is plain SGD with momentum; hence this small optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

MAE_TRUST_COEFFICIENT = 0.001  # MAE util/lars.py default
MAE_LARS_MOMENTUM = 0.9  # MAE util/lars.py default


class Lars(torch.optim.Optimizer):
    """MAE ``util/lars.py``: for a parameter ``p`` with ``p.ndim > 1`` (weights; biases and norm
    parameters are left alone), ``d = g + wd * p``, scaled by ``trust * |p| / |d|`` (1 where either
    norm is 0); then ``mu = momentum * mu + d`` (``mu`` starts at 0, no dampening) and
    ``p -= lr * mu``. Parameters with ``ndim <= 1`` take ``d = g`` (no decay, no scaling)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = MAE_LARS_MOMENTUM,
        trust_coefficient: float = MAE_TRUST_COEFFICIENT,
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    p_norm, u_norm = torch.norm(p), torch.norm(update)
                    ratio = group["trust_coefficient"] * p_norm / u_norm
                    one = torch.ones_like(p_norm)
                    ratio = torch.where((p_norm > 0) & (u_norm > 0), ratio, one)
                    update = update.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                state["mu"].mul_(group["momentum"]).add_(update)
                p.add_(state["mu"], alpha=-group["lr"])
