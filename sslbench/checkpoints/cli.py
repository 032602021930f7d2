"""``sslbench inspect`` and ``sslbench convert``, and the checkpoint options every command shares."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from sslbench.checkpoints import zoo
from sslbench.checkpoints.formats import FORMATS
from sslbench.checkpoints.writers import WRITERS
from sslbench.commandline import add_out_argument
from sslbench.models.archs import ARCHS, check_arch
from sslbench.models.vit_archs import is_vit_arch, parse_vit_arch

if TYPE_CHECKING:
    from sslbench.checkpoints.canonical import CanonicalCheckpoint


def _arch(text: str) -> str:
    try:
        return parse_vit_arch(text).name if is_vit_arch(text) else check_arch(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_checkpoint_arguments(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """``CKPT --from --key --arch --trust-checkpoint``: how every command reads a checkpoint."""
    if positional:
        parser.add_argument(
            "checkpoint",
            type=Path,
            metavar="CKPT",
            help="checkpoint file, any supported format, or zoo:NAME (sslbench zoo list)",
        )
    parser.add_argument("--from", dest="source_format", choices=list(FORMATS), help="force the format")
    parser.add_argument(
        "--key", help="state dict entry to read, e.g. model_ema (PyContrast) or student (DINO)"
    )
    parser.add_argument(
        "--arch",
        type=_arch,
        metavar="ARCH",
        help=f"force the architecture (default: inferred): {', '.join(ARCHS)}, "
        "vit_<tiny|small|base|large|huge>_patch<P> or vit_d<width>_l<depth>_h<heads>_p<patch>",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow arbitrary pickled objects (can run code; only for files from a source you trust)",
    )


def checkpoint_from_args(args: argparse.Namespace, path: Path | None = None) -> CanonicalCheckpoint:
    """The checkpoint the options name; ``zoo:NAME`` is fetched (once) and read with its table's
    format, entry and architecture unless --from, --key or --arch say otherwise."""
    from sslbench.checkpoints.readers import read_checkpoint

    path = path or args.checkpoint
    fmt, key, arch = args.source_format, args.key, args.arch
    if not zoo.is_zoo_name(path):
        return read_checkpoint(path, fmt=fmt, key=key, arch=arch, trust=args.trust_checkpoint)
    path, entry = zoo.resolve(str(path))
    fmt, key, arch = fmt or entry.format, key or entry.key, arch or entry.arch
    ckpt = read_checkpoint(path, fmt=fmt, key=key, arch=arch, trust=args.trust_checkpoint)
    return dataclasses.replace(ckpt, zoo=entry.name)  # the record says which zoo entry it ran


def _summary(ckpt: CanonicalCheckpoint) -> dict[str, object]:
    return {
        "path": ckpt.source_path,
        "zoo": ckpt.zoo,
        "format": ckpt.source_format,
        "container": ckpt.container,
        "key": ckpt.key,
        "arch": ckpt.arch,
        "parameters": ckpt.num_parameters,
        "tensors": len(ckpt.state_dict),
        "sha256": ckpt.sha256,
        "dropped": ckpt.dropped,
        "other_entries": list(ckpt.other_entries),
        "filled": list(ckpt.filled),
    }


def run_inspect(args: argparse.Namespace) -> int:
    info = _summary(checkpoint_from_args(args))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{'path':12s} {info['path']}")
    if info["zoo"]:
        print(f"{'zoo':12s} zoo:{info['zoo']}")
    print(f"{'format':12s} {info['format']} (container {info['container']}, entry {info['key'] or '-'})")
    print(f"{'arch':12s} {info['arch']}")
    print(f"{'parameters':12s} {info['parameters']:,} in {info['tensors']} tensors")
    print(f"{'sha256':12s} {info['sha256']}")
    dropped = ", ".join(f"{g} ({n})" for g, n in info["dropped"].items()) or "nothing"
    print(f"{'dropped':12s} {dropped}")
    if info["other_entries"]:
        print(f"{'also held':12s} {', '.join(info['other_entries'])}")
    if info["filled"]:
        print(f"{'filled':12s} {len(info['filled'])} BN counters absent from the file, set to 0")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from sslbench.run_folder import refuse_existing_file

    if not args.overwrite:
        refuse_existing_file(args.out, "--out")
    ckpt = checkpoint_from_args(args)
    WRITERS[args.to](ckpt, args.out)
    print(f"wrote {args.out} ({args.to}, {ckpt.arch}, from {ckpt.source_format})")
    return 0


def run_zoo(args: argparse.Namespace) -> int:
    table = zoo.load_table()
    if args.json:
        rows = [
            {**vars(e), "published": list(e.published), "cached": str(zoo.cached_file(e))}
            if zoo.cached_file(e).is_file()
            else {**vars(e), "published": list(e.published), "cached": None}
            for e in table.values()
        ]
        print(json.dumps(rows, indent=2))
        return 0
    where, _ = zoo.table_path()
    print(f"{len(table)} checkpoints in {where}; cache {zoo.cache_root() / 'zoo'}")
    for e in table.values():
        cached = "cached" if zoo.cached_file(e).is_file() else "not downloaded"
        print(f"zoo:{e.name:18s} {e.arch:20s} {e.format:12s} {e.source} ({cached})")
        for n in e.published:
            number = f"{n['protocol']} {n['dataset']} {n['metric']} {n['value']}"
            print(f"{'':22s} published {number}  [{n['cite']}]")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="detect a checkpoint's format and describe its backbone")
    add_checkpoint_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run_inspect)

    p = subparsers.add_parser(
        "convert", help="convert a checkpoint to torchvision, timm, safetensors or detectron2"
    )
    add_checkpoint_arguments(p)
    p.add_argument("--to", required=True, choices=list(WRITERS), help="format to write")
    add_out_argument(p, "convert", "output file", required=True, old=("-o", "--output"))
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing output file (default: refuse)"
    )
    p.set_defaults(run=run_convert)

    p = subparsers.add_parser(
        "zoo", help="well-known public checkpoints, usable as zoo:NAME wherever a checkpoint is taken"
    )
    p.add_argument(
        "action", choices=("list",), help="list: the table, with published numbers and cache state"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run_zoo)
