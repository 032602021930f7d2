"""``sslbench knn``: the weighted kNN probe (DINO ``eval_knn.py``) on frozen features through FAISS.

It reads any checkpoint, computes (or reads from the feature cache) the features of ``trainval`` and
``test``, classifies every test image by its k nearest training features and writes
``--out/result.json``. Under ``torchrun`` every rank extracts its shard; rank 0 searches and writes.
"""

from __future__ import annotations

import argparse
from typing import Any

from sslbench.errors import ConfigError
from sslbench.evaluate.eval_run import add_common_arguments, common_settings, open_run
from sslbench.evaluate.protocol_defaults import KNN_SETTINGS, PRIMARY_SETTING, QUERY_CHUNK
from sslbench.evaluate.reporting import dataset_record, print_metrics
from sslbench.options import knn_setting, positive_int

KNN_SOURCE = "DINO eval_knn.py (Caron et al. 2021); k=200, T=0.1 from InstDisc (Wu et al. 2018)"


def run_knn(args: argparse.Namespace) -> int:
    from sslbench.runtime.process import launched

    with launched(args.device) as runtime:
        return _run_knn(args, runtime)


def _run_knn(args: argparse.Namespace, runtime: Any) -> int:
    from sslbench.data.transforms import eval_transform, resize_for_crop
    from sslbench.evaluate.features import describe_splits
    from sslbench.evaluate.knn import index_description, knn_classify, use_gpu_index
    from sslbench.tools.records import ResultRecord, write_record

    settings = list(dict.fromkeys(args.knn))
    primary = args.primary
    if primary not in settings:
        raise ConfigError(f"--primary {primary[0]}:{primary[1]} is not among the --knn settings")
    run = open_run(args, runtime)
    transform = eval_transform(args.image_size)
    train_ds, train = run.split("trainval", transform)
    test_ds, test = run.split("test", transform)
    if not runtime.main:
        return 0
    outcomes = knn_classify(
        train.features, train.labels, test.features, test.labels, settings, args.chunk_size, progress=True
    )
    table = [{"k": o.k, "T": o.temperature, "k_used": o.k_used, **o.metrics} for o in outcomes.values()]
    for row in table:
        print_metrics(f"k={row['k']} T={row['T']}", row)
    record = ResultRecord(
        task="knn",
        protocol={
            "name": "knn",
            "source": KNN_SOURCE,
            "settings": {
                "knn": [list(s) for s in settings],
                "primary": list(primary),
                "vote": "sum of exp(cos/T) over the k nearest, per class",
                "normalise": "l2",
                "index": index_description(use_gpu_index()),
                "query_chunk": args.chunk_size,
                "resize": resize_for_crop(args.image_size),
                "train_split": "trainval",
                "test_split": "test",
                **common_settings(run, transform),
            },
        },
        dataset=dataset_record(args, train_ds, test_ds, run.options),
        metrics=outcomes[primary].metrics,
        checkpoint=run.ckpt.describe(),
        started_at=run.started_at,
        seed=args.seed,
        extra={"knn": table, "features": describe_splits([("trainval", train), ("test", test)])},
    )
    print(f"wrote {write_record(args.out, record)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("knn", help="weighted kNN probe on frozen features (DINO / InstDisc protocol)")
    add_common_arguments(p, batch_size=256)
    p.add_argument(
        "--knn",
        type=knn_setting,
        nargs="+",
        default=list(KNN_SETTINGS),
        metavar="K:T",
        help="(k, temperature) pairs; default 10:0.07 20:0.07 100:0.07 200:0.07 200:0.1",
    )
    p.add_argument(
        "--primary",
        type=knn_setting,
        default=PRIMARY_SETTING,
        metavar="K:T",
        help="setting reported as the record's metrics (default: {}:{})".format(*PRIMARY_SETTING),
    )
    p.add_argument("--chunk-size", type=positive_int, default=QUERY_CHUNK, help="queries per FAISS search")
    p.set_defaults(run=run_knn)

