"""Classification metrics in percent: top-1, top-5 and mean per-class accuracy.

Mean per-class accuracy is the mean, over the classes present in the labels, of each class's
recall: the mean of the diagonal of the row-normalised confusion matrix, FGVC-Aircraft's official
metric (and ssl-transfer's for Aircraft, Flowers, Pets, Caltech-101). It is accumulated from
per-class counts, never a ``C x C`` matrix (iNat18 has 8,142 classes).

Scores are ``(M, C)``; a class scored ``-inf`` (or 0, for kNN vote sums) is never a prediction,
even where fewer than five classes scored: a kNN class that got no vote is not a top-5 hit.
"""

from __future__ import annotations

import torch

TOPK = (1, 5)


class AccuracyTally:
    """Counts hits over batches of ``(scores (M, C), labels (M,))``; :meth:`result` gives percents."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.total = 0
        self.hits = dict.fromkeys(TOPK, 0)
        self.class_count = torch.zeros(num_classes, dtype=torch.long)
        self.class_correct = torch.zeros(num_classes, dtype=torch.long)

    def update(
        self, scores: torch.Tensor, labels: torch.Tensor, zero_is_no_vote: bool = False
    ) -> torch.Tensor:
        """Add a batch; returns its top-1 predictions ``(M,)``. With ``zero_is_no_vote`` (kNN vote
        sums, positive wherever a class got a vote) a score of 0 is "no prediction" like -inf."""
        if scores.ndim != 2 or scores.shape[1] != self.num_classes or len(scores) != len(labels):
            raise ValueError(
                f"expected scores (M, {self.num_classes}) and labels (M,), got "
                f"{tuple(scores.shape)} and {tuple(labels.shape)}"
            )
        scores, labels = scores.float().cpu(), labels.long().cpu()
        top = scores.topk(min(max(TOPK), self.num_classes), dim=1)
        # a -inf score is "no prediction": it can fill a top-5 slot but never counts as a hit
        scored = top.values > 0 if zero_is_no_vote else torch.isfinite(top.values)
        hit = (top.indices == labels[:, None]) & scored
        for k in TOPK:
            self.hits[k] += int(hit[:, :k].any(dim=1).sum())
        self.total += len(labels)
        self.class_count += torch.bincount(labels, minlength=self.num_classes)
        self.class_correct += torch.bincount(labels[hit[:, 0]], minlength=self.num_classes)
        return top.indices[:, 0]

    def result(self) -> dict[str, float]:
        if self.total == 0:
            raise ValueError("no samples were scored")
        present = self.class_count > 0
        recall = self.class_correct[present].double() / self.class_count[present].double()
        return {
            "top1": 100.0 * self.hits[1] / self.total,
            "top5": 100.0 * self.hits[5] / self.total,
            "mean_per_class": 100.0 * float(recall.mean()),
        }


def accuracy_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``top1``, ``top5``, ``mean_per_class`` (percent) of ``scores (M, C)`` against ``labels (M,)``."""
    tally = AccuracyTally(scores.shape[1])
    tally.update(scores, labels)
    return tally.result()
