"""Core-tuning's loss on fixed tensors against hand computations; a test per reference-code bug we avoid."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslbench.evaluate.coretuning import (
    ContrastHead,
    MixDraws,
    contrastive_positives,
    coretuning_loss,
    draw_mixing,
    focal_supcon_loss,
    generate_hard_samples,
    hardest_pairs,
    random_negative_partners,
)


def _angles(*degrees: float) -> torch.Tensor:
    """Unit vectors in the plane (scaled differently, to show only the direction matters)."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    scale = torch.arange(1, len(degrees) + 1, dtype=torch.float64)
    return (torch.stack([rad.cos(), rad.sin()], dim=1) * scale[:, None]).float()


def _draws(positive: list[float], negative: list[float], uniform: list[float]) -> MixDraws:
    return MixDraws(torch.tensor(positive), torch.tensor(negative), torch.tensor(uniform))


def test_hardest_positive_is_the_least_similar_same_class_sample_not_a_masked_zero() -> None:
    # all similarities are positive (angles within 60 degrees): the reference's argmin of
    # similarity * mask would pick a masked zero (another class, or the anchor itself)
    features = _angles(0, 10, 40, 3, 60)
    labels = torch.tensor([0, 0, 0, 1, 1])
    pairs = hardest_pairs(features, labels)
    # anchor 0 (0 deg): same class at 10 and 40 deg -> 40 (index 2); other class at 3 and 60 -> 3 (index 3)
    # anchor 1 (10 deg): same class 0, 40 -> 40 (index 2); other 3, 60 -> 3 (index 3)
    # anchor 2 (40 deg): same class 0, 10 -> 0 (index 0); other 3, 60 -> 60 (index 4, 20 deg away)
    # anchor 3 (3 deg): its only classmate is 60 deg (index 4); other class nearest: 0 deg (index 0)
    # anchor 4 (60 deg): classmate index 3; other class nearest: 40 deg (index 2)
    assert pairs.positive.tolist() == [2, 2, 0, 4, 3]
    assert pairs.negative.tolist() == [3, 3, 4, 0, 2]
    assert pairs.has_positive.all() and pairs.has_negative.all()
    assert not (pairs.positive == torch.arange(5)).any(), "never the anchor itself"


def test_anchor_without_a_classmate_gets_no_hard_positive_and_no_self_pair() -> None:
    features = _angles(0, 30, 35, 90)
    labels = torch.tensor([0, 1, 1, 2])
    draws = _draws([0.5] * 4, [0.9] * 4, [0.0] * 4)
    generated = generate_hard_samples(features, labels, 3, draws)
    positives = generated.anchors[generated.is_positive].tolist()
    negatives = generated.anchors[~generated.is_positive].tolist()
    assert positives == [1, 2]  # anchors 0 and 3 are alone in their class
    assert negatives == [0, 1, 2, 3]  # everybody has another class
    # a batch of one class: no hard negatives, hence no hard positives either
    alone = generate_hard_samples(features, torch.zeros(4, dtype=torch.long), 3, draws)
    assert len(alone.features) == 0 and alone.soft_labels.shape == (0, 3)


def test_hard_negative_clips_lambda_at_0_8_and_mixes_the_label() -> None:
    features = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 0])
    # uniform 0 -> the first other-class sample in batch order; 0.99 -> the last
    partners = random_negative_partners(labels, torch.tensor([0.0, 0.99, 0.5, 0.99]))
    # others of 0: [1, 2] -> 1st; of 1: [0, 2, 3] -> 3rd; of 2: [0, 1, 3] -> floor(0.5 * 3) = 2nd;
    # of 3: [1, 2] -> 2nd
    assert partners.tolist() == [1, 3, 1, 2]
    draws = _draws([0.5] * 4, [0.3, 0.95, 0.8, 0.1], [0.0, 0.99, 0.5, 0.99])
    generated = generate_hard_samples(features, labels, 3, draws)
    neg = ~generated.is_positive
    assert generated.anchors[neg].tolist() == [0, 1, 2, 3]
    assert generated.partners[neg].tolist() == [1, 3, 1, 2]
    lam = torch.tensor([0.8, 0.95, 0.8, 0.8])  # clipped from below at 0.8
    torch.testing.assert_close(generated.mix_lambda[neg], lam)
    expected = (1 - lam[:, None]) * features + lam[:, None] * features[[1, 3, 1, 2]]
    torch.testing.assert_close(generated.features[neg], expected)
    one_hot = F.one_hot(labels, 3).float()
    expected_labels = (1 - lam[:, None]) * one_hot + lam[:, None] * one_hot[[1, 3, 1, 2]]
    torch.testing.assert_close(generated.soft_labels[neg], expected_labels)
    # anchor 0 (class 0) mixed with sample 1 (class 1): label 0.2 / 0.8
    assert generated.soft_labels[neg][0].tolist() == pytest.approx([0.2, 0.8, 0.0])


def test_hard_positive_mixes_hardest_positive_and_hardest_negative_with_beta_lambda() -> None:
    features = _angles(0, 10, 40, 3, 60)
    labels = torch.tensor([0, 0, 0, 1, 1])
    lam = [0.1, 0.2, 0.3, 0.4, 0.5]
    generated = generate_hard_samples(features, labels, 2, _draws(lam, [0.9] * 5, [0.0] * 5))
    pos = generated.is_positive
    hp, hn = [2, 2, 0, 4, 3], [3, 3, 4, 0, 2]  # from the hand computation above
    assert generated.anchors[pos].tolist() == [0, 1, 2, 3, 4]
    assert generated.partners[pos].tolist() == hp and generated.others[pos].tolist() == hn
    lam_t = torch.tensor(lam)[:, None]  # not clipped
    torch.testing.assert_close(generated.features[pos], lam_t * features[hp] + (1 - lam_t) * features[hn])
    one_hot = F.one_hot(labels, 2).float()
    torch.testing.assert_close(generated.soft_labels[pos], lam_t * one_hot[hp] + (1 - lam_t) * one_hot[hn])


def test_focal_weights_are_one_minus_p_and_the_two_reductions_divide_by_n_or_by_the_positives() -> None:
    torch.manual_seed(0)
    embeddings = F.normalize(torch.randn(6, 5, dtype=torch.float64), dim=1).float()
    # 4 anchors; anchor 0 has 3 positives, anchor 1 one, anchor 2 none, anchor 3 two
    positives = torch.zeros(4, 6, dtype=torch.bool)
    positives[0, [1, 3, 4]] = True
    positives[1, [5]] = True
    positives[3, [0, 4]] = True
    temperature = 0.07
    out = focal_supcon_loss(embeddings, positives, temperature)  # the default: the reference's
    paper = focal_supcon_loss(embeddings, positives, temperature, reduction="paper")

    e = embeddings.double()
    sums, counts = [], []
    for i in range(4):
        others = [k for k in range(6) if k != i]
        denominator = sum(math.exp(float(e[i] @ e[k]) / temperature) for k in others)
        p = {k: math.exp(float(e[i] @ e[k]) / temperature) / denominator for k in others}
        for k in others:
            assert float(out.probability[i, k]) == pytest.approx(p[k], rel=1e-4, abs=1e-6)
            expected_weight = 1 - p[k] if positives[i, k] else 0.0
            assert float(out.weight[i, k]) == pytest.approx(expected_weight, rel=1e-4, abs=1e-6)
        pos = positives[i].nonzero().squeeze(1).tolist()
        if pos:
            sums.append(sum(-(1 - p[j]) * math.log(p[j]) for j in pos))
            counts.append(len(pos))
    # reference (Core-tuning.py's focal_SupConLoss): each row's sum / N (its .mean(1) over all 6
    # features), then the sum over anchors / the 3 anchors that have a positive
    assert float(out.loss) == pytest.approx(sum(s / 6 for s in sums) / 3, rel=1e-4)
    # paper (the slide's formula): each row's sum / |P_i|, then the mean over the same 3 anchors
    assert float(paper.loss) == pytest.approx(
        sum(s / c for s, c in zip(sums, counts, strict=True)) / 3, rel=1e-4
    )
    with pytest.raises(ValueError, match="reduction 'mean'"):
        focal_supcon_loss(embeddings, positives, temperature, reduction="mean")


def test_own_anchor_hard_positives_by_default_and_the_same_class_extension_by_name() -> None:
    # anchors 0, 1 (class 0) and 2, 3 (class 1): each gets a hard negative and a hard positive
    features = _angles(0, 20, 50, 80)
    labels = torch.tensor([0, 0, 1, 1])
    generated = generate_hard_samples(features, labels, 2, _draws([0.5] * 4, [0.9] * 4, [0.0] * 4))
    assert generated.anchors.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert generated.is_positive.tolist() == [False] * 4 + [True] * 4
    originals = [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]
    own = contrastive_positives(labels, generated)  # the default, as the slides define z_i+
    # columns: 4 originals, 4 hard negatives (never positives), z_0+, z_1+, z_2+, z_3+
    assert own.int().tolist() == [
        row + [0, 0, 0, 0] + [int(i == a) for a in range(4)] for i, row in enumerate(originals)
    ]
    same_class = contrastive_positives(labels, generated, "same_class")
    assert same_class.int().tolist() == [
        row + [0, 0, 0, 0] + [int(labels[i] == labels[a]) for a in range(4)]
        for i, row in enumerate(originals)
    ]
    with pytest.raises(ValueError, match="positives 'all'"):
        contrastive_positives(labels, generated, "all")


def test_with_eta_zero_and_mixing_off_the_loss_is_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    features, labels = torch.randn(8, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    classifier, head = nn.Linear(16, 3, bias=False), ContrastHead(16, 4)
    out = coretuning_loss(features, labels, classifier, head, 3, draws=None, eta=0.0)
    torch.testing.assert_close(out.total, F.cross_entropy(classifier(features), labels))
    torch.testing.assert_close(out.logits, classifier(features))
    assert float(out.contrastive.detach()) > 0  # computed, but weighted by eta = 0


def test_smooth_classifier_trains_on_originals_and_generated_features_with_soft_labels() -> None:
    torch.manual_seed(0)
    features, labels = torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    classifier, head = nn.Linear(8, 3, bias=False), ContrastHead(8, 4)
    draws = draw_mixing(6, alpha=1.0, seed=(0, 0, 0))
    out = coretuning_loss(features, labels, classifier, head, 3, draws, eta=0.1)
    generated = generate_hard_samples(features, labels, 3, draws)
    every = torch.cat([features, generated.features])
    targets = torch.cat([F.one_hot(labels, 3).float(), generated.soft_labels])
    per_sample = -(targets * F.log_softmax(classifier(every), dim=1)).sum(1)
    # the default: one mean over the 6 originals and the m generated (Core-tuning.py)
    torch.testing.assert_close(out.ce, per_sample.mean())
    positives = contrastive_positives(labels, generated)
    expected_con = focal_supcon_loss(head(every), positives).loss
    torch.testing.assert_close(out.total, per_sample.mean() + 0.1 * expected_con)
    # the slides: mean over the originals plus mean over the generated
    separate = coretuning_loss(features, labels, classifier, head, 3, draws, eta=0.1, ce_mean="separate")
    torch.testing.assert_close(separate.ce, per_sample[:6].mean() + per_sample[6:].mean())
    # the paper's reduction and the same-class positives, passed through
    variant = coretuning_loss(
        features, labels, classifier, head, 3, draws, eta=0.1, reduction="paper", positives="same_class"
    )
    wide = contrastive_positives(labels, generated, "same_class")
    torch.testing.assert_close(
        variant.contrastive, focal_supcon_loss(head(every), wide, reduction="paper").loss
    )
    with pytest.raises(ValueError, match="ce_mean 'sum'"):
        coretuning_loss(features, labels, classifier, head, 3, draws, ce_mean="sum")


def test_separate_ce_mean_without_generated_features_is_the_mean_over_the_originals() -> None:
    torch.manual_seed(0)
    features, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    classifier, head = nn.Linear(8, 3, bias=False), ContrastHead(8, 4)
    out = coretuning_loss(features, labels, classifier, head, 3, draws=None, eta=0.0, ce_mean="separate")
    torch.testing.assert_close(out.total, F.cross_entropy(classifier(features), labels))


def test_original_features_get_gradient_from_both_losses() -> None:
    # the reference feeds clone().detach() copies of the originals into both losses
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    classifier, head = nn.Linear(8, 3, bias=False), ContrastHead(8, 4)
    for part in ("ce", "contrastive"):
        features = torch.randn(6, 8, requires_grad=True)
        out = coretuning_loss(features, labels, classifier, head, 3, draws=None)
        getattr(out, part).backward()
        assert features.grad is not None and bool((features.grad.abs().sum(1) > 0).all()), part


def test_positives_follow_integer_labels_beyond_19_classes() -> None:
    # the reference groups soft labels by a dot product with 10**arange(C) in int64: it overflows at 19
    labels = torch.tensor([19, 20, 24, 19, 20, 3])
    positives = contrastive_positives(labels, None)
    expected = (labels[:, None] == labels[None, :]) & ~torch.eye(6, dtype=torch.bool)
    assert torch.equal(positives, expected)
    features = torch.randn(6, 4)
    generated = generate_hard_samples(features, labels, 25, draw_mixing(6, seed=(1,)))
    torch.testing.assert_close(generated.soft_labels.sum(1), torch.ones(len(generated.features)))
    assert set(generated.soft_labels.nonzero()[:, 1].tolist()) <= {3, 19, 20, 24}


def test_draws_depend_only_on_their_seed() -> None:
    a, b, c = draw_mixing(5, 1.0, (3, 7, 0)), draw_mixing(5, 1.0, (3, 7, 0)), draw_mixing(5, 1.0, (3, 8, 0))
    assert torch.equal(a.positive_lambda, b.positive_lambda) and torch.equal(
        a.partner_uniform, b.partner_uniform
    )
    assert not torch.equal(a.negative_lambda, c.negative_lambda)
    assert bool(((a.positive_lambda >= 0) & (a.positive_lambda <= 1)).all())
