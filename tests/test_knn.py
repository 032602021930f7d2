"""The FAISS kNN probe against an independent torch brute-force implementation of the same vote."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from sslbench.evaluate.knn import KNN_SETTINGS, knn_classify
from sslbench.evaluate.metrics import accuracy_metrics

# balanced_accuracy_score warns when a predicted class never occurs in the labels; that is expected here
pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")


def brute_force_knn(train, train_y, test, test_y, k, temperature):
    """The oracle: full similarity matrix, torch top-k, votes added one neighbour column at a time.
    Labels must be 0..C-1. Returns (predictions, top1, top5, mean per-class), in percent."""
    num_classes = int(torch.cat([train_y, test_y]).max()) + 1
    sims = F.normalize(test.double(), dim=1) @ F.normalize(train.double(), dim=1).T
    top = sims.topk(min(k, len(train)), dim=1)
    scores = torch.zeros(len(test), num_classes, dtype=torch.float64)
    rows = torch.arange(len(test))
    for j in range(top.indices.shape[1]):
        scores[rows, train_y[top.indices[:, j]]] += (top.values[:, j] / temperature).exp()
    predictions = scores.argmax(dim=1)
    own = scores[rows, test_y]
    # top-5: the true class got a vote and fewer than five classes scored higher
    top5 = ((own > 0) & ((scores > own[:, None]).sum(dim=1) < 5)).double().mean().item()
    top1 = (predictions == test_y).double().mean().item()
    mean_per_class = balanced_accuracy_score(test_y.numpy(), predictions.numpy())
    return predictions, 100 * top1, 100 * top5, 100 * mean_per_class


def clustered_features(num_train, num_test, dim, num_classes, spread, seed=0):
    """Gaussian clusters around random class centres, so accuracies are neither 0 nor 100."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)
    train_y = torch.randint(0, num_classes, (num_train,), generator=g)
    test_y = torch.randint(0, num_classes, (num_test,), generator=g)
    train = centres[train_y] + spread * torch.randn(num_train, dim, generator=g)
    test = centres[test_y] + spread * torch.randn(num_test, dim, generator=g)
    return train, train_y, test, test_y


def _assert_matches_oracle(outcomes, train, train_y, test, test_y, settings) -> None:
    for k, temperature in settings:
        predictions, top1, top5, mean_per_class = brute_force_knn(
            train, train_y, test, test_y, k, temperature
        )
        outcome = outcomes[(k, temperature)]
        assert torch.equal(outcome.predictions, predictions), (k, temperature)
        assert outcome.metrics["top1"] == pytest.approx(top1, abs=1e-9)
        assert outcome.metrics["top5"] == pytest.approx(top5, abs=1e-9)
        assert outcome.metrics["mean_per_class"] == pytest.approx(mean_per_class, abs=1e-9)


def test_faiss_knn_equals_brute_force_vote_for_every_k_and_temperature() -> None:
    train, train_y, test, test_y = clustered_features(3000, 700, 48, 12, spread=2.5)
    outcomes = knn_classify(train, train_y, test, test_y, KNN_SETTINGS, chunk_size=256)
    assert set(outcomes) == set(KNN_SETTINGS)
    _assert_matches_oracle(outcomes, train, train_y, test, test_y, KNN_SETTINGS)
    top1 = [o.metrics["top1"] for o in outcomes.values()]
    assert min(top1) > 20 and max(top1) < 95  # a non-trivial problem, or the comparison proves little


def test_knn_with_a_small_temperature_still_equals_the_oracle() -> None:
    # T=0.01 (in solo-learn's grid): exp(sim/T) leaves float32's range; the vote must not lose votes
    train, train_y, test, test_y = clustered_features(2000, 300, 8, 6, spread=2.0, seed=6)
    settings = [(200, 0.01), (20, 0.01)]
    outcomes = knn_classify(train, train_y, test, test_y, settings)
    _assert_matches_oracle(outcomes, train, train_y, test, test_y, settings)


def test_knn_query_chunking_does_not_change_results() -> None:
    train, train_y, test, test_y = clustered_features(500, 123, 16, 5, spread=2.0, seed=1)
    whole = knn_classify(train, train_y, test, test_y, chunk_size=10_000)
    chunked = knn_classify(train, train_y, test, test_y, chunk_size=7)
    for setting in KNN_SETTINGS:
        assert torch.equal(whole[setting].predictions, chunked[setting].predictions)
        assert whole[setting].metrics == chunked[setting].metrics


def test_knn_remaps_non_contiguous_labels_and_answers_in_the_original_values() -> None:
    train, train_y, test, test_y = clustered_features(800, 200, 16, 4, spread=2.0, seed=2)
    values = torch.tensor([900, -3, 42, 7])  # not 0..C-1, not even sorted
    settings = [(20, 0.07), (200, 0.1)]
    remapped = knn_classify(train, values[train_y], test, values[test_y], settings)
    _assert_matches_oracle(
        {
            s: type(o)(o.k, o.temperature, o.k_used, o.metrics, _index_of(values, o.predictions))
            for s, o in remapped.items()
        },
        train,
        train_y,
        test,
        test_y,
        settings,
    )
    assert set(remapped[(20, 0.07)].predictions.tolist()) <= set(values.tolist())


def _index_of(values: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    return (predictions[:, None] == values[None, :]).long().argmax(dim=1)


def test_knn_handles_inat18_sized_class_counts() -> None:
    num_classes = 8142  # iNat18; a default of 1000 classes (DINO's) would index out of range
    train, train_y, test, test_y = clustered_features(
        2 * num_classes, 400, 32, num_classes, spread=0.3, seed=3
    )
    settings = [(20, 0.07), (200, 0.1)]
    outcomes = knn_classify(train, train_y, test, test_y, settings)
    _assert_matches_oracle(outcomes, train, train_y, test, test_y, settings)
    assert int(outcomes[(20, 0.07)].predictions.max()) >= 1000


def test_knn_with_fewer_training_features_than_k_uses_them_all() -> None:
    train, train_y, test, test_y = clustered_features(30, 20, 8, 3, spread=1.0, seed=4)
    outcomes = knn_classify(train, train_y, test, test_y, [(200, 0.07)])
    assert outcomes[(200, 0.07)].k_used == 30
    _assert_matches_oracle(outcomes, train, train_y, test, test_y, [(200, 0.07)])


def test_knn_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\) and \(M, D\)"):
        knn_classify(torch.randn(5, 4), torch.zeros(5), torch.randn(3, 6), torch.zeros(3))


def test_class_without_a_vote_never_counts_as_a_top5_hit() -> None:
    scores = torch.tensor([[3.0, float("-inf"), float("-inf"), float("-inf"), float("-inf"), float("-inf")]])
    assert accuracy_metrics(scores, torch.tensor([2]))["top5"] == 0.0
    assert accuracy_metrics(scores, torch.tensor([0]))["top5"] == 100.0


def test_mean_per_class_accuracy_equals_sklearn_balanced_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(300, 7, generator=g)
    labels = torch.randint(0, 6, (300,), generator=g)  # class 6 never occurs: it must not count
    metrics = accuracy_metrics(scores, labels)
    expected = balanced_accuracy_score(labels.numpy(), scores.argmax(1).numpy())
    assert metrics["mean_per_class"] == pytest.approx(100 * expected)
    assert metrics["top1"] == pytest.approx(100 * (scores.argmax(1) == labels).double().mean().item())


@pytest.mark.gpu
def test_gpu_index_gives_the_cpu_neighbours() -> None:
    import faiss

    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss was built without GPU support (install faiss-gpu: the gpu extra)")
    train, train_y, test, test_y = clustered_features(2000, 300, 32, 10, spread=2.0, seed=5)
    cpu = knn_classify(train, train_y, test, test_y, gpu=False)
    gpu = knn_classify(train, train_y, test, test_y, gpu=True)
    for setting in KNN_SETTINGS:
        assert torch.equal(cpu[setting].predictions, gpu[setting].predictions)
