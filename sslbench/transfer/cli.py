"""``sslbench detect``: Detectron2 VOC / COCO transfer from any checkpoint, one record per seed."""

from __future__ import annotations

import argparse
from pathlib import Path

from sslbench.checkpoints.cli import add_checkpoint_arguments, checkpoint_from_args
from sslbench.transfer.availability import require_detectron2
from sslbench.transfer.tasks import TASKS

# Options may follow CKPT (inside the KEY VALUE remainder), so their defaults are applied after parsing.
_DEFAULTS = {"num_gpus": 1, "num_machines": 1, "machine_rank": 0, "dist_url": "auto", "seeds": 1}


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task", choices=list(TASKS), help="required: voc (24k), coco-1x (90k) or coco-2x (180k)"
    )
    parser.add_argument(
        "--out", type=Path, help="required: run folder, backbone.pkl and seed<N>/ with result.json"
    )
    defaulted = {
        "--num-gpus": (int, "processes per machine, one per GPU"),
        "--num-machines": (int, "machines in the job"),
        "--machine-rank": (int, "this machine's rank, 0 .. num-machines-1"),
        "--dist-url": (str, "rendezvous, tcp://HOST:PORT; 'auto' picks a local port on one machine"),
        "--seeds": (int, "train and evaluate with seeds 0 .. N-1"),
    }
    for option, (kind, text) in defaulted.items():
        default = _DEFAULTS[option.removeprefix("--").replace("-", "_")]
        parser.add_argument(option, type=kind, help=f"{text} (default: {default})")
    parser.add_argument(
        "--scale-batch",
        type=int,
        metavar="B",
        help="total batch B instead of 16, with lr x B/16 and the schedule x 16/B (linear scaling rule)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue each unfinished seed from its last checkpoint"
    )


def _parse_trailing(args: argparse.Namespace) -> argparse.Namespace:
    """Options written after CKPT end up in the KEY VALUE remainder: parse them out of it."""
    parser = argparse.ArgumentParser(prog="sslbench detect", add_help=False, allow_abbrev=False)
    add_checkpoint_arguments(parser, positional=False)
    _add_options(parser)
    parser.add_argument("opts", nargs="*")
    trailing = parser.parse_intermixed_args(args.opts)
    values = {**vars(trailing), **_DEFAULTS}
    for namespace in (args, trailing):  # before CKPT, then after it: the later one wins, as in argparse
        values.update({k: v for k, v in vars(namespace).items() if v is not None and v is not False})
    values["opts"] = trailing.opts
    return argparse.Namespace(**values)


def run_detect(args: argparse.Namespace) -> int:
    from sslbench.errors import ConfigError
    from sslbench.models.vit_archs import is_vit_arch

    args = _parse_trailing(args)
    ckpt = checkpoint_from_args(args)  # first: a ViT is refused whether or not detectron2 is there
    if is_vit_arch(ckpt.arch):
        raise ConfigError(
            f"{ckpt.source_path} is a ViT ({ckpt.arch}): "
            "detection transfer for ViTs (ViTDet) is not supported"
        )
    require_detectron2()
    from sslbench.transfer.train import run_detection

    if args.task is None or args.out is None:
        raise ConfigError("sslbench detect needs --task (voc, coco-1x, coco-2x) and --out DIR")
    if args.seeds < 1:
        raise ConfigError(f"--seeds is a number of runs (seeds 0 .. N-1), at least 1; got {args.seeds}")
    records = run_detection(
        ckpt,
        args.task,
        args.out,
        seeds=range(args.seeds),
        num_gpus=args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        total_batch=args.scale_batch,
        resume=args.resume,
        overrides=args.opts,
    )
    for path in records:
        print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "detect",
        help="Detectron2 detection transfer (MoCo's R50-C4 recipe) on VOC or COCO",
        description="Convert CKPT, train and evaluate Faster/Mask R-CNN R50-C4 with Detectron2 (MoCo's "
        "recipe) once per seed, and write OUT/seed<N>/result.json. Datasets are read from "
        "$DETECTRON2_DATASETS (default ./datasets). Trailing KEY VALUE pairs override the Detectron2 "
        "config, e.g. SOLVER.CHECKPOINT_PERIOD 2000 (Detectron2's own convention, kept for its keys).",
        usage=f"sslbench detect CKPT --task {{{','.join(TASKS)}}} --out OUT [options] [KEY VALUE ...]",
    )
    add_checkpoint_arguments(p)
    _add_options(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="Detectron2 config overrides")
    p.set_defaults(run=run_detect)
