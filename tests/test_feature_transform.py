"""Feature Transformation (DESIGN.md 4.1) on fixed tensors, against the reference code's formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sslbench.pretrain.config import FeatureTransformConfig
from sslbench.pretrain.feature_transform import (
    FTDraws,
    contrast_scores,
    feature_transform_scores,
    sample_draws,
    transform_features,
)

B, D, K = 6, 8, 16


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture
def qkq() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _unit(B, D, seed=0), _unit(B, D, seed=1), _unit(K, D, seed=2)


def test_extrapolated_positives_never_score_above_the_original_positive(qkq):
    q, k, queue = qkq
    cfg = FeatureTransformConfig(enabled=True, target="pos")
    original = (q * k).sum(dim=1)
    for seed in range(20):
        torch.manual_seed(seed)
        draws = sample_draws(cfg, B, D, K, torch.device("cpu"))
        assert draws.lam.shape == () and 1.0 <= float(draws.lam) <= 2.0
        q_t, k_t, _ = transform_features(q, k, queue, cfg, draws)
        assert torch.all((q_t * k_t).sum(dim=1) <= original + 1e-6)
    # the bounds of lambda: 1 leaves the pair alone, 2 gives 2*lam*(lam-1)*(s-1) lower
    for lam in (1.0, 2.0):
        q_t, k_t, _ = transform_features(q, k, queue, cfg, FTDraws(torch.tensor(lam), None, None))
        expected = original * (lam**2 + (1 - lam) ** 2) + 2 * lam * (1 - lam)
        torch.testing.assert_close((q_t * k_t).sum(dim=1), expected)


@pytest.mark.parametrize("dim_mask", ["none", "neg", "both"])
def test_interpolated_negatives_lie_between_two_queue_entries(qkq, dim_mask):
    q, k, queue = qkq
    cfg = FeatureTransformConfig(enabled=True, target="neg", dim_mask=dim_mask)
    torch.manual_seed(3)
    draws = sample_draws(cfg, B, D, K, torch.device("cpu"))
    assert torch.equal(draws.perm.sort().values, torch.arange(K))
    assert torch.all((draws.mu >= 0) & (draws.mu <= 1))
    _, _, negatives = transform_features(q, k, queue, cfg, draws)
    a, b = queue, queue[draws.perm]
    # coordinate-wise between the two entries (the convex hull's bounding box) ...
    assert torch.all(negatives >= torch.minimum(a, b) - 1e-6)
    assert torch.all(negatives <= torch.maximum(a, b) + 1e-6)
    if dim_mask == "none":
        # ... and, with one mu, on the segment between them: Q' = b + t (a - b) with t in [0, 1]
        t = ((negatives - b) * (a - b)).sum(1) / (a - b).pow(2).sum(1).clamp_min(1e-12)
        assert torch.all((t >= -1e-6) & (t <= 1 + 1e-6))
        torch.testing.assert_close(negatives, b + t[:, None] * (a - b))


@pytest.mark.parametrize(
    ("dim_mask", "lam_shape", "mu_shape"),
    [("none", (), ()), ("pos", (B, D), ()), ("neg", (), (K, D)), ("both", (B, D), (K, D))],
)
def test_draws_are_one_scalar_per_step_or_per_element(qkq, dim_mask, lam_shape, mu_shape):
    q, k, queue = qkq
    cfg = FeatureTransformConfig(enabled=True, dim_mask=dim_mask)
    draws = sample_draws(cfg, B, D, K, torch.device("cpu"))
    assert draws.lam.shape == lam_shape and draws.mu.shape == mu_shape and draws.perm.shape == (K,)
    assert feature_transform_scores(q, k, queue, cfg, draws).shape == (B, 1 + K)
    both = FeatureTransformConfig(enabled=True, dim_mask=dim_mask, negatives="both")
    assert feature_transform_scores(q, k, queue, both, draws).shape == (B, 1 + 2 * K)


def test_targets_leave_the_other_side_untouched(qkq):
    q, k, queue = qkq
    pos = FeatureTransformConfig(enabled=True, target="pos")
    draws = sample_draws(pos, B, D, K, torch.device("cpu"))
    assert draws.mu is None and draws.perm is None
    assert torch.equal(transform_features(q, k, queue, pos, draws)[2], queue)
    neg = FeatureTransformConfig(enabled=True, target="neg")
    draws = sample_draws(neg, B, D, K, torch.device("cpu"))
    assert draws.lam is None
    q_t, k_t, _ = transform_features(q, k, queue, neg, draws)
    assert torch.equal(q_t, q) and torch.equal(k_t, k)


def test_uniform_and_interpolating_draws_have_their_ranges():
    cfg = FeatureTransformConfig(enabled=True, distribution="uniform", extrapolate=False, dim_mask="both")
    draws = sample_draws(cfg, 64, 32, 128, torch.device("cpu"))
    assert float(draws.lam.min()) >= 0.0 and float(draws.lam.max()) <= 1.0
    # Beta(2, 2) + 1: mean 1.5, variance 1/20 (a^2 / ((2a)^2 (2a+1)) with a = 2)
    beta = FeatureTransformConfig(enabled=True, dim_mask="both", alpha_pos=2.0)
    lam = sample_draws(beta, 256, 128, 8, torch.device("cpu")).lam
    assert abs(float(lam.mean()) - 1.5) < 0.01 and abs(float(lam.var()) - 0.05) < 0.005


def _reference_logits(q, k, queue, pos_mask, neg_mask, indices, postmix_norm, temperature):
    """RGBMoCo_dropmix_norm.forward (mix_target posneg) and _compute_logit, transcribed step by step."""
    q_mix = pos_mask * q + (1 - pos_mask) * k
    k_mix = pos_mask * k + (1 - pos_mask) * q
    q, k = q_mix, k_mix
    queue = neg_mask * queue + (1 - neg_mask) * queue[indices]
    if postmix_norm:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    bsz = q.shape[0]
    pos = torch.bmm(q.view(bsz, 1, -1), k.view(bsz, -1, 1)).view(bsz, 1)
    neg = torch.mm(queue, q.transpose(1, 0)).transpose(0, 1)
    return torch.div(torch.cat((pos, neg), dim=1), temperature)


@pytest.mark.parametrize("dim_mask", ["none", "both"])
@pytest.mark.parametrize("renormalize", [False, True])
def test_ft_logits_match_the_reference_code_on_fixed_draws(qkq, dim_mask, renormalize):
    q, k, queue = qkq
    gen = torch.Generator().manual_seed(4)
    lam_shape, mu_shape = ((B, D), (K, D)) if dim_mask == "both" else ((), ())
    lam = 1 + torch.rand(lam_shape, generator=gen)
    mu = torch.rand(mu_shape, generator=gen)
    perm = torch.randperm(K, generator=gen)
    cfg = FeatureTransformConfig(enabled=True, dim_mask=dim_mask, renormalize=renormalize)
    ours = feature_transform_scores(q, k, queue, cfg, FTDraws(lam, mu, perm)) / 0.2
    torch.testing.assert_close(ours, _reference_logits(q, k, queue, lam, mu, perm, renormalize, 0.2))


def test_gradient_reaches_the_query_through_both_transformed_positives(qkq):
    q0, k, queue = qkq
    q = q0.clone().requires_grad_(True)
    cfg = FeatureTransformConfig(enabled=True, target="pos")
    lam = torch.tensor(1.5)
    q_t, k_t, _ = transform_features(q, k, queue, cfg, FTDraws(lam, None, None))
    (grad,) = torch.autograd.grad((q_t * k_t).sum(), q)
    # d(q'.k')/dq = lam k' + (1 - lam) q' : the second term is the path through k'
    q_t, k_t = q_t.detach(), k_t.detach()
    torch.testing.assert_close(grad, lam * k_t + (1 - lam) * q_t)
    assert not torch.allclose(grad, lam * k_t)


def test_plain_scores_are_the_moco_einsums(qkq):
    q, k, queue = qkq
    expected = torch.cat(
        [torch.einsum("nc,nc->n", q, k).unsqueeze(-1), torch.einsum("nc,ck->nk", q, queue.T)], dim=1
    )
    torch.testing.assert_close(contrast_scores(q, k, queue), expected)
