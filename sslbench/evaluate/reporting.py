"""What every evaluation command prints and records about its run: the one-line metrics summary and
the record's ``dataset`` block. No heavy import: the command modules import this at start-up."""

from __future__ import annotations

import argparse
from typing import Any


def dataset_record(
    args: argparse.Namespace, train: Any, test: Any, options: dict[str, Any], uses_val: bool = False
) -> dict[str, Any]:
    """The record's ``dataset``; ``uses_val``: the protocol selects on ``val``, so say how it is made."""
    from sslbench.data.registry import DATASETS
    from sslbench.data.splits import describe_val_split

    record = {
        "name": args.dataset,
        "root": str(args.root) if args.root is not None else None,
        "split": test.split,
        "train_split": train.split,
        "num_classes": test.num_classes,
        "num_train": len(train),
        "num_test": len(test),
        "options": {k: v for k, v in options.items() if v is not None},
    }
    if uses_val:
        record["val_split"] = describe_val_split(DATASETS[args.dataset].official_val)
    return record


def print_metrics(label: str, metrics: dict[str, float]) -> None:
    """One line: top-1, top-5 and mean per-class accuracy under ``label``."""
    print(
        f"{label:24s} top1 {metrics['top1']:6.2f}  top5 {metrics['top5']:6.2f}  "
        f"mean/class {metrics['mean_per_class']:6.2f}"
    )
