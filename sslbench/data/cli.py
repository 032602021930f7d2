"""``sslbench make-fixture``, and the dataset options every evaluation command shares."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sslbench.data.registry import DATASETS


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dataset --root --class-list``: which dataset an evaluation command reads, and from where."""
    parser.add_argument("--dataset", required=True, choices=list(DATASETS), help="dataset name")
    parser.add_argument("--root", type=Path, help="dataset root, as downloaded (see README: Datasets)")
    parser.add_argument(
        "--class-list",
        type=Path,
        help="imagefolder only: file with one class folder per line, restricting and ordering the "
        "classes (ImageNet-100)",
    )


def dataset_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword options for ``build_dataset`` (``None`` values are ignored there)."""
    return {"class_list": str(args.class_list) if args.class_list is not None else None}


def run_make_fixture(args: argparse.Namespace) -> int:
    from sslbench.data.fixtures import DATASET_OF_WRITER, WRITERS
    from sslbench.run_folder import refuse_non_empty

    if not args.overwrite:
        refuse_non_empty(args.out, f"a {args.kind} fixture")
    fixture = WRITERS[args.kind](
        args.out, num_classes=args.classes, per_class=args.per_class, size=args.image_size, seed=args.seed
    )
    counts = ", ".join(f"{split} {len(entries)}" for split, entries in fixture.splits.items())
    print(f"wrote a {args.kind} fixture: {len(fixture.classes)} classes, {counts} images")
    print(f"use it with: --dataset {DATASET_OF_WRITER[args.kind]} --root {fixture.root}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from sslbench.data.fixtures import DEFAULT_CLASSES, DEFAULT_PER_CLASS, DEFAULT_SIZE, WRITERS
    from sslbench.options import image_size, positive_int

    p = subparsers.add_parser(
        "make-fixture", help="write a tiny dataset in a real on-disk layout (to check a set-up)"
    )
    p.add_argument("kind", choices=list(WRITERS), help="which layout to write")
    p.add_argument("out", type=Path, help="folder to write into")
    p.add_argument("--classes", type=positive_int, default=DEFAULT_CLASSES, help="number of classes")
    p.add_argument("--per-class", type=positive_int, default=DEFAULT_PER_CLASS, help="images per class")
    p.add_argument("--image-size", type=image_size, default=DEFAULT_SIZE, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not empty, replacing files of the same name (default: refuse)",
    )
    p.set_defaults(run=run_make_fixture)
