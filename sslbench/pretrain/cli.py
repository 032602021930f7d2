"""``sslbench pretrain`` (MoCo v1/v2 with Feature Transformation) and ``sslbench plot-scores``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sslbench.commandline import add_out_argument, add_overrides_argument, deprecated
from sslbench.runtime.arguments import add_runtime_arguments


def run_pretrain(args: argparse.Namespace) -> int:
    import sys

    from sslbench.pretrain.alarm import EXIT_COLLAPSED, PretrainingCollapsed
    from sslbench.pretrain.config import load_pretrain_config
    from sslbench.pretrain.train import run_pretraining

    overrides = list(args.overrides)
    if any(o.startswith("out=") for o in overrides):
        deprecated("pretrain", "the override out=DIR", "--out DIR")
    if args.out is not None:
        overrides.append(f"out={args.out}")
    cfg = load_pretrain_config(args.config, overrides)
    # a stop signal: saved, and sslbench.cli.main exits 143 (runtime.signals)
    try:
        checkpoint = run_pretraining(
            cfg,
            resume=args.resume,
            allow_config_change=args.allow_config_change,
            tensorboard=args.tensorboard,
        )
    except PretrainingCollapsed as exc:  # stop_on_collapse=true: saved, exit 3
        print(f"sslbench pretrain: {exc}", file=sys.stderr)
        return EXIT_COLLAPSED
    print(f"wrote {checkpoint}")
    return 0


def run_plot_scores(args: argparse.Namespace) -> int:
    from sslbench.errors import SslbenchError
    from sslbench.tools.plots import plot_scores

    try:
        output = plot_scores(args.runs, args.out or args.runs[0] / "scores.png", args.labels)
    except ValueError as exc:
        raise SslbenchError(str(exc)) from None
    print(f"wrote {output}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain MoCo v1/v2, optionally with Feature Transformation (torchrun for several GPUs)",
        description="Pretrain MoCo v1/v2 (+FT). Shipped configs: mocov1, mocov2, mocov1_ft, mocov2_ft "
        "(ImageNet), mocov2_tiny, mocov2_ft_tiny (CPU, built-in digits). Exit status: 0 done, 2 bad "
        "input, 3 stopped by the collapse alarm (stop_on_collapse=true), 143 stopped by SIGTERM/SIGUSR1 "
        "(both saved a checkpoint; --resume continues).",
    )
    p.add_argument("--config", required=True, help="a YAML file or the name of a shipped config")
    add_out_argument(
        p, "pretrain", "run folder: checkpoint_last.pth, scores.csv, config.yaml (default: the config's out)"
    )
    add_overrides_argument(p, "config overrides, e.g. data.root=DIR epochs=N ft.dim_mask=both")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last.pth")
    add_runtime_arguments(p)
    p.set_defaults(run=run_pretrain)

    p = subparsers.add_parser(
        "plot-scores", help="plot the positive/negative score statistics of pretraining runs"
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders (holding scores.csv)")
    add_out_argument(
        p, "plot-scores", "PNG file to write (default: FIRST_RUN_DIR/scores.png)", old=("-o", "--output")
    )
    p.add_argument("--labels", nargs="+", help="legend names, one per run (default: folder names)")
    p.set_defaults(run=run_plot_scores)
