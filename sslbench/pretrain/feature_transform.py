"""Feature Transformation (FT; Zhu et al., "Improving Contrastive Learning by Visualizing Feature
Transformation", ICCV 2021) as a pure function of ``(q, k, queue, draws)``.

What the reference code does (DTennant/CL-Visualizing-Feature-Transformation, ``memory/mem_moco.py``
class ``RGBMoCo_dropmix_norm``), restated in DESIGN.md 4.1, line by line here:

* positive extrapolation (target ``pos``/``posneg``): ``q' = lam*q + (1-lam)*k`` and
  ``k' = lam*k + (1-lam)*q``, both from the original ``q`` and ``k``; ``lam = 1 + Beta(a_pos, a_pos)``
  with ``extrapolate`` (``--expolation_mask``), else ``Beta(a_pos, a_pos)``. ``k'`` contains ``q``, so
  the positive score ``q'.k'`` sends gradient to the query through both factors;
* negative interpolation (target ``neg``/``posneg``): ``Q' = mu*Q + (1-mu)*Q[perm]``, ``perm`` a fresh
  permutation of the queue rows, ``mu ~ Beta(a_neg, a_neg)``; ``Q'`` replaces ``Q`` (or, with
  ``negatives="both"``, ``[Q', Q]`` are the 2K negatives: the paper's "Neg FT + original");
* ``dim_mask``: ``none`` draws one scalar ``lam`` and one scalar ``mu`` per step; ``pos``/``neg``/``both``
  draw that side per element, ``(B, D)`` for ``lam`` and ``(K, D)`` for ``mu``;
* ``distribution="uniform"`` draws U(0, 1) instead of Beta;
* ``renormalize`` (``--postmix_norm``) L2-normalises ``q'`` and ``k'`` only, never ``Q'`` (the code
  forces ``norm_target='pos'``);
* the queue itself is never changed here: the caller enqueues the original keys.

Two reference quirks we do not copy: its ``dim_mask`` takes effect only together with ``--sep_alpha``
and Beta draws (otherwise every draw is per element), and target ``pos`` uses ``--beta_alpha`` rather
than ``--pos_alpha``. Here ``dim_mask`` always sets the shape and ``alpha_pos``/``alpha_neg`` always
apply; the reference's ``--beta_alpha a`` is ``alpha_pos=alpha_neg=a``.

The reference draws ``lam``/``mu`` with NumPy on the host (up to 65536 x 128 Beta samples a step for
``both``) and copies them to the GPU; :func:`sample_draws` draws on the tensors' device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sslbench.pretrain.config import FeatureTransformConfig


@dataclass(frozen=True)
class FTDraws:
    """The random part of one FT step; ``None`` where the target leaves that side untouched."""

    lam: Tensor | None  # positive weight: () one per step, or (B, D) per element
    mu: Tensor | None  # queue weight: () one per step, or (K, D) per element
    perm: Tensor | None  # (K,) permutation of the queue rows


def transforms_positives(cfg: FeatureTransformConfig) -> bool:
    return cfg.target in ("pos", "posneg")


def transforms_negatives(cfg: FeatureTransformConfig) -> bool:
    return cfg.target in ("neg", "posneg")


def _mixing_weights(distribution: str, alpha: float, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Weights in [0, 1] of ``shape`` drawn on ``device``: Beta(alpha, alpha) or U(0, 1)."""
    if distribution == "uniform":
        return torch.rand(shape, device=device)
    concentration = torch.full(shape, float(alpha), device=device)
    return torch.distributions.Beta(concentration, concentration).sample()


def sample_draws(
    cfg: FeatureTransformConfig, batch: int, dim: int, queue_size: int, device: torch.device
) -> FTDraws:
    """One step's draws on ``device``: ``lam`` ((B, D) or ()), ``mu`` ((K, D) or ()), ``perm`` (K,)."""
    lam = mu = perm = None
    if transforms_positives(cfg):
        shape = (batch, dim) if cfg.dim_mask in ("pos", "both") else ()
        lam = _mixing_weights(cfg.distribution, cfg.alpha_pos, shape, device)
        if cfg.extrapolate:
            lam = lam + 1.0
    if transforms_negatives(cfg):
        shape = (queue_size, dim) if cfg.dim_mask in ("neg", "both") else ()
        mu = _mixing_weights(cfg.distribution, cfg.alpha_neg, shape, device)
        perm = torch.randperm(queue_size, device=device)
    return FTDraws(lam=lam, mu=mu, perm=perm)


def transform_features(
    q: Tensor, k: Tensor, queue: Tensor, cfg: FeatureTransformConfig, draws: FTDraws
) -> tuple[Tensor, Tensor, Tensor]:
    """FT of one step: ``(q', k', negatives)`` from q (B, D), k (B, D) and the queue (K, D).

    ``q`` is the normalised query (with gradient), ``k`` the normalised key and ``queue`` the queue
    (both without gradient). ``negatives`` is ``(K, D)``, or ``(2K, D)`` for ``negatives="both"``.
    """
    q_t, k_t, negatives = q, k, queue
    if transforms_positives(cfg):
        lam = draws.lam
        q_t = lam * q + (1 - lam) * k
        k_t = lam * k + (1 - lam) * q
    if transforms_negatives(cfg):
        # mu * Q + (1 - mu) * Q[perm], in one fused pass over the (K, D) queue
        mixed = torch.lerp(queue.index_select(0, draws.perm), queue, draws.mu)
        negatives = mixed if cfg.negatives == "transformed" else torch.cat([mixed, queue], dim=0)
    if cfg.renormalize:
        q_t, k_t = F.normalize(q_t, dim=1), F.normalize(k_t, dim=1)
    return q_t, k_t, negatives


def contrast_scores(q: Tensor, k: Tensor, negatives: Tensor) -> Tensor:
    """InfoNCE scores (B, 1+N) before the temperature: column 0 is ``q.k``, then ``q`` against each of N."""
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ negatives.T
    return torch.cat([positive, negative], dim=1)


def feature_transform_scores(
    q: Tensor, k: Tensor, queue: Tensor, cfg: FeatureTransformConfig, draws: FTDraws
) -> Tensor:
    """The scores (B, 1+N) MoCo+FT trains on; divide by T for the logits (positive at index 0)."""
    return contrast_scores(*transform_features(q, k, queue, cfg, draws))
