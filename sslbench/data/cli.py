"""``sslbench make-fixture``, and the dataset options every evaluation command shares."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sslbench.commandline import add_out_argument, deprecated
from sslbench.data.fixture_options import (
    DEFAULT_CLASSES,
    DEFAULT_PER_CLASS,
    DEFAULT_SIZE,
    FIXTURE_DATASETS,
    OLD_FIXTURE_NAMES,
)
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


def _fixture_kind(name: str) -> str:
    """A layout name as ``--dataset`` spells it; the old ``cub`` still works, with a deprecation line."""
    if name in OLD_FIXTURE_NAMES:
        deprecated("make-fixture", name, OLD_FIXTURE_NAMES[name])
        return OLD_FIXTURE_NAMES[name]
    return name


def run_make_fixture(args: argparse.Namespace) -> int:
    from sslbench.data.fixtures import WRITERS
    from sslbench.errors import ConfigError

    out = args.out
    if args.out_positional is not None:
        if out is not None:
            raise ConfigError(f"two output folders: {args.out_positional} and --out {out}; give only --out")
        deprecated("make-fixture", "the positional OUT", "--out OUT")
        out = args.out_positional
    if out is None:
        raise ConfigError("make-fixture needs --out DIR (the folder to write into)")
    fixture = WRITERS[args.kind](
        out, num_classes=args.classes, per_class=args.per_class, size=args.image_size, seed=args.seed
    )
    counts = ", ".join(f"{split} {len(entries)}" for split, entries in fixture.splits.items())
    print(f"wrote a {args.kind} fixture: {len(fixture.classes)} classes, {counts} images")
    print(f"use it with: --dataset {args.kind} --root {fixture.root}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "make-fixture",
        help="write a tiny dataset in a real on-disk layout (to check a set-up)",
        usage="sslbench make-fixture DATASET --out DIR [options]",
    )
    p.add_argument(
        "kind",
        type=_fixture_kind,
        choices=FIXTURE_DATASETS,
        metavar="DATASET",
        help=f"which layout to write, named as --dataset names it: {', '.join(FIXTURE_DATASETS)}",
    )
    p.add_argument("out_positional", nargs="?", type=Path, metavar="OUT", help=argparse.SUPPRESS)
    add_out_argument(p, "make-fixture", "folder to write into")
    p.add_argument("--classes", type=int, default=DEFAULT_CLASSES, help="number of classes")
    p.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS, help="images per class")
    p.add_argument("--image-size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn images")
    p.set_defaults(run=run_make_fixture)
