"""Core-tuning: contrast-regularised fine-tuning (Zhang et al., NeurIPS 2021), as pure tensor functions.

The loss of one batch of ``n`` backbone features ``z (n, D)`` with labels ``y (n,)``:

    L = L_ce^m + eta * L_con^f

* Hard samples (feature mixup). Cosine similarity of the features within the batch picks, for each
  anchor ``i``, its hardest positive ``hp(i)`` (the *least* similar other sample of its class) and
  its hardest negative ``hn(i)`` (the *most* similar sample of another class).
  Hard positive ``z_i+ = lam * z_hp + (1 - lam) * z_hn``, ``lam ~ Beta(alpha, alpha)``.
  Hard negative ``z_i- = (1 - lam) * z_i + lam * z_j`` for a random partner ``j`` of another class,
  ``lam ~ Beta(alpha, alpha)`` clipped to ``>= 0.8``. Labels are mixed the same way (soft labels).
  An anchor with no other sample of its class, or no sample of another class, gets no hard
  positive (no hard negative): it is skipped, never paired with itself.
* ``L_ce^m`` (smooth classifier): soft-label cross-entropy of the classifier over the ``n``
  originals and the ``m`` generated features. ``ce_mean="joint"`` (default; the reference code):
  one mean over all ``n + m``; ``"separate"`` (the slides): mean over the originals plus mean over
  the generated.
* ``L_con^f``: focal supervised contrastive loss on ``G_c`` of all ``N = n + m`` features (originals
  and generated), L2-normalised. The anchors are the ``n`` originals; for anchor ``i`` every other
  feature ``k`` is in the softmax ``p_ik = exp(h_i.h_k / T) / sum_{k' != i} exp(h_i.h_k' / T)``. Its
  positives ``P_i`` are the other originals of its class and, with ``positives="own"`` (default; the
  slides), its own hard positive ``z_i+`` only; ``positives="same_class"`` (an extension, not the
  method) also counts the hard positives generated for every other anchor of its class. Hard
  negatives are never positives. Each positive term ``-(1 - p_ij) log p_ij`` is weighted by
  ``1 - p_ij``, and with ``S_i = sum_{j in P_i} (1 - p_ij)(-log p_ij)``, over the anchors with
  ``|P_i| > 0``:

  - ``reduction="reference"`` (default): ``L_con^f = mean_i S_i / N``, as ``focal_SupConLoss`` does
    it (SupContrast's ``.mean(1)`` over the whole row of ``N`` features, then the sum over anchors
    divided by the number of anchors with a positive);
  - ``reduction="paper"``: ``L_con^f = mean_i S_i / |P_i|``, the slide's formula.

  The published ``eta = 0.1`` was tuned under the reference's reduction; the paper's makes
  ``L_con^f`` ~25-30x larger on typical batches (C=10, n=64), so ``eta = 0.1`` with it behaves like
  the reference's ``eta ~ 2.5``.

Defaults and their sources (Vanint/Core-tuning, ``Core-tuning.py`` and its README command):
``eta = 0.1`` and ``alpha = 1`` from the README's training command (the script's own ``eta`` default
is 10), ``T = 0.07`` (``focal_SupConLoss``), hard-negative ``lam`` clipped at 0.8 (``feature_mixup``),
contrastive head ``Linear(D, D) -> ReLU -> Linear(D, 256)`` (``Contrastor``, ``--contrast_dim 256``),
the reference's loss reduction and joint cross-entropy mean (under which ``eta = 0.1`` was tuned),
and the slides' own-anchor hard positives.

Where the reference code departs from the method we follow the method (each has a test in
``tests/test_coretuning.py``): the original features keep their gradient in both losses (the code
feeds ``clone().detach()`` copies); positives are found from integer class labels (the code groups
soft labels by a dot product with ``10**arange(C)``, which overflows int64 from 19 classes); the
hardest positive is the least similar *positive* (the code's argmin of ``similarity * mask`` lands on
a masked zero); the anchors are the originals, with their hard positive and their classmates as
positives (the code makes every generated feature an anchor too, grouped by identical soft labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ETA = 0.1  # README command: --eta_weight 0.1 (Core-tuning.py's default of 10 is not what was run)
ALPHA = 1.0  # README command: --mixup_alpha 1
TEMPERATURE = 0.07  # focal_SupConLoss: temperature = base_temperature = 0.07
MIN_NEGATIVE_LAMBDA = 0.8  # feature_mixup: hard-negative lam <= 0.8 is set to 0.8
CONTRAST_DIM = 256  # --contrast_dim 256
# (default first) the reference's 1/N row mean | the slide's 1/|P_i| average
REDUCTIONS = ("reference", "paper")
# (default first) the slides' own-anchor hard positive | also a positive of every same-class anchor
POSITIVES = ("own", "same_class")
# (default first) one CE mean over n + m (reference) | mean(originals) + mean(generated) (slides)
CE_MEANS = ("joint", "separate")


class ContrastHead(nn.Module):
    """``G_c``: ``Linear(D, D) -> ReLU -> Linear(D, dim)``, output L2-normalised ``(B, dim)``."""

    def __init__(self, feature_dim: int, dim: int = CONTRAST_DIM) -> None:
        super().__init__()
        self.hidden = nn.Linear(feature_dim, feature_dim)
        self.output = nn.Linear(feature_dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.output(F.relu(self.hidden(features))), dim=1)


@dataclass(frozen=True)
class MixDraws:
    """The random numbers of one batch of ``n`` anchors, each ``(n,)`` float32."""

    positive_lambda: torch.Tensor  # Beta(alpha, alpha): weight of the hardest positive in z_i+
    negative_lambda: torch.Tensor  # Beta(alpha, alpha), before the clip: weight of the partner in z_i-
    partner_uniform: torch.Tensor  # U[0, 1): which other-class sample is the hard-negative partner


def draw_mixing(n: int, alpha: float = ALPHA, seed: Sequence[int] = (0,)) -> MixDraws:
    """Draws for ``n`` anchors from a NumPy generator seeded with ``seed`` (e.g. ``(seed, step, rank)``),
    so that a resumed run draws exactly what the uninterrupted one drew."""
    rng = np.random.default_rng(list(seed))
    as_tensor = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    return MixDraws(
        positive_lambda=as_tensor(rng.beta(alpha, alpha, n)),
        negative_lambda=as_tensor(rng.beta(alpha, alpha, n)),
        partner_uniform=as_tensor(rng.random(n)),
    )


class HardestPairs(NamedTuple):
    """Per anchor ``(n,)``: index of its hardest positive / negative, and whether it has one."""

    positive: torch.Tensor
    negative: torch.Tensor
    has_positive: torch.Tensor
    has_negative: torch.Tensor


@torch.no_grad()
def hardest_pairs(features: torch.Tensor, labels: torch.Tensor) -> HardestPairs:
    """Hardest positive (least cosine-similar other sample of the same class) and hardest negative
    (most similar sample of another class) of each of ``features (n, D)`` with ``labels (n,)``.
    Where an anchor has none, its index is meaningless and ``has_*`` is False."""
    z = F.normalize(features.detach().float(), dim=1)
    similarity = z @ z.T
    same = labels[:, None] == labels[None, :]
    itself = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~itself
    negative = ~same
    return HardestPairs(
        positive=similarity.masked_fill(~positive, float("inf")).argmin(dim=1),
        negative=similarity.masked_fill(~negative, float("-inf")).argmax(dim=1),
        has_positive=positive.any(dim=1),
        has_negative=negative.any(dim=1),
    )


def random_negative_partners(labels: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """``(n,)``: for anchor ``i``, the ``floor(u_i * m_i)``-th (in batch order) of its ``m_i`` samples of
    another class. Meaningless where ``m_i = 0``."""
    negative = labels[:, None] != labels[None, :]
    count = negative.sum(dim=1)
    rank = (uniform.to(labels.device) * count).floor().long().clamp(max=(count - 1).clamp(min=0))
    kth = (negative.cumsum(dim=1) == (rank + 1)[:, None]) & negative
    return kth.int().argmax(dim=1)


class GeneratedFeatures(NamedTuple):
    """``m`` generated features: hard negatives first, then hard positives (as the reference orders them)."""

    features: torch.Tensor  # (m, D)
    soft_labels: torch.Tensor  # (m, C), rows sum to 1
    anchors: torch.Tensor  # (m,) the original each was generated for
    is_positive: torch.Tensor  # (m,) True for z_i+, False for z_i-
    mix_lambda: torch.Tensor  # (m,) the lam used (after the clip, for hard negatives)
    partners: torch.Tensor  # (m,) z_j of a hard negative; z_hp of a hard positive
    others: torch.Tensor  # (m,) the anchor itself for a hard negative; z_hn for a hard positive


def generate_hard_samples(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    draws: MixDraws,
    min_negative_lambda: float = MIN_NEGATIVE_LAMBDA,
) -> GeneratedFeatures:
    """Hard negatives ``(1 - lam) z_i + lam z_j`` (``lam >= min_negative_lambda``) and hard positives
    ``lam z_hp + (1 - lam) z_hn`` of ``features (n, D)``, with their mixed soft labels. Gradients flow
    into ``features`` through the mixtures."""
    one_hot = F.one_hot(labels, num_classes).to(features.dtype)
    pairs = hardest_pairs(features, labels)
    partner = random_negative_partners(labels, draws.partner_uniform)
    device, dtype = features.device, features.dtype

    neg = pairs.has_negative.nonzero().squeeze(1)
    lam_n = draws.negative_lambda.to(device, dtype)[neg].clamp(min=min_negative_lambda)[:, None]
    j = partner[neg]
    neg_features = (1 - lam_n) * features[neg] + lam_n * features[j]
    neg_labels = (1 - lam_n) * one_hot[neg] + lam_n * one_hot[j]

    pos = (pairs.has_positive & pairs.has_negative).nonzero().squeeze(1)
    lam_p = draws.positive_lambda.to(device, dtype)[pos][:, None]
    hp, hn = pairs.positive[pos], pairs.negative[pos]
    pos_features = lam_p * features[hp] + (1 - lam_p) * features[hn]
    pos_labels = lam_p * one_hot[hp] + (1 - lam_p) * one_hot[hn]

    return GeneratedFeatures(
        features=torch.cat([neg_features, pos_features]),
        soft_labels=torch.cat([neg_labels, pos_labels]),
        anchors=torch.cat([neg, pos]),
        is_positive=torch.cat(
            [torch.zeros(len(neg), dtype=torch.bool, device=device), torch.ones_like(pos, dtype=torch.bool)]
        ),
        mix_lambda=torch.cat([lam_n[:, 0], lam_p[:, 0]]),
        partners=torch.cat([j, hp]),
        others=torch.cat([neg, hn]),
    )


def contrastive_positives(
    labels: torch.Tensor, generated: GeneratedFeatures | None, positives: str = POSITIVES[0]
) -> torch.Tensor:
    """``(n, n + m)`` bool: positives of each original anchor among [originals; generated]: the other
    originals of its class and its own hard positive (``positives="own"``), or the hard positives
    generated for every anchor of its class (``"same_class"``)."""
    if positives not in POSITIVES:
        raise ValueError(f"positives {positives!r}: expected one of {', '.join(POSITIVES)}")
    n = len(labels)
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool, device=labels.device)
    if generated is None:
        return same
    if positives == "own":
        arange = torch.arange(n, device=labels.device)
        of_anchor = arange[:, None] == generated.anchors[None, :]
    else:
        of_anchor = labels[:, None] == labels[generated.anchors][None, :]
    return torch.cat([same, of_anchor & generated.is_positive[None, :]], dim=1)


class FocalContrast(NamedTuple):
    loss: torch.Tensor  # scalar
    probability: torch.Tensor  # (n, N) p_ik, 0 on the diagonal
    weight: torch.Tensor  # (n, N) the focal weight 1 - p_ij where j is a positive, else 0


def focal_supcon_loss(
    embeddings: torch.Tensor,
    positives: torch.Tensor,
    temperature: float = TEMPERATURE,
    reduction: str = REDUCTIONS[0],
) -> FocalContrast:
    """Focal supervised contrastive loss of the first ``n`` rows of ``embeddings (N, E)`` (L2-normalised)
    as anchors against all other rows, with ``positives (n, N)``; anchors without positives are skipped
    (the loss is 0 when none has one). Each anchor's positive terms are summed and divided by ``N``
    (``reduction="reference"``) or by its number of positives (``"paper"``)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r}: expected one of {', '.join(REDUCTIONS)}")
    n, total = positives.shape
    h = embeddings.float()
    logits = (h[:n] @ h.T) / temperature
    itself = torch.zeros_like(positives)
    itself[:, :n] = torch.eye(n, dtype=torch.bool, device=positives.device)
    log_p = F.log_softmax(logits.masked_fill(itself, float("-inf")), dim=1)
    p = log_p.exp()
    # torch.where, not a product with a mask: the diagonal holds log p = -inf
    weight = torch.where(positives, 1 - p, torch.zeros_like(p))
    terms = -weight * torch.where(positives, log_p, torch.zeros_like(log_p))
    count = positives.sum(dim=1)
    has = count > 0
    if not bool(has.any()):
        return FocalContrast(h.sum() * 0.0, p.detach(), weight.detach())
    per_anchor = terms.sum(dim=1)[has]
    divisor = count[has].to(per_anchor.dtype) if reduction == "paper" else float(total)
    loss = (per_anchor / divisor).mean()
    return FocalContrast(loss, p.detach(), weight.detach())


class CoreTuningLoss(NamedTuple):
    total: torch.Tensor  # ce + eta * contrastive
    ce: torch.Tensor  # L_ce^m
    contrastive: torch.Tensor  # L_con^f
    logits: torch.Tensor  # (n, C) the classifier on the originals (for training accuracy)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, n: int, ce_mean: str) -> torch.Tensor:
    """Soft-label cross-entropy of ``logits (n + m, C)`` (the ``n`` originals first): one mean over all
    rows (``ce_mean="joint"``) or the mean over the originals plus the mean over the rest (``"separate"``)."""
    if ce_mean not in CE_MEANS:
        raise ValueError(f"ce_mean {ce_mean!r}: expected one of {', '.join(CE_MEANS)}")
    per_sample = -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if ce_mean == "joint" or len(per_sample) == n:
        return per_sample.mean()
    return per_sample[:n].mean() + per_sample[n:].mean()


def coretuning_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    classifier: nn.Module,
    contrast_head: nn.Module,
    num_classes: int,
    draws: MixDraws | None,
    eta: float = ETA,
    temperature: float = TEMPERATURE,
    min_negative_lambda: float = MIN_NEGATIVE_LAMBDA,
    reduction: str = REDUCTIONS[0],
    positives: str = POSITIVES[0],
    ce_mean: str = CE_MEANS[0],
) -> CoreTuningLoss:
    """``L_ce^m + eta * L_con^f`` of ``features (n, D)`` with ``labels (n,)``. ``draws=None`` turns the
    mixing off (no generated features): then ``eta = 0`` gives plain cross-entropy."""
    one_hot = F.one_hot(labels, num_classes).to(features.dtype)
    generated = None
    every, targets = features, one_hot
    if draws is not None:
        generated = generate_hard_samples(features, labels, num_classes, draws, min_negative_lambda)
        every = torch.cat([features, generated.features])
        targets = torch.cat([one_hot, generated.soft_labels])
    logits = classifier(every)
    ce = soft_cross_entropy(logits, targets, len(labels), ce_mean)
    contrast = focal_supcon_loss(
        contrast_head(every), contrastive_positives(labels, generated, positives), temperature, reduction
    )
    return CoreTuningLoss(ce + eta * contrast.loss, ce, contrast.loss, logits[: len(labels)])
