"""``sslbench leaderboard``, ``sslbench suite`` and ``sslbench quickstart``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sslbench.commandline import add_out_argument, add_overrides_argument


def run_leaderboard(args: argparse.Namespace) -> int:
    from sslbench.tools.leaderboard import (
        build_leaderboard,
        parse_label_options,
        printable,
        to_markdown,
        write_leaderboard,
    )

    board = build_leaderboard(
        args.results,
        labels=parse_label_options(args.label),
        with_published=args.with_published,
        all_metrics=args.all_metrics,
        baselines=args.baseline,
    )
    for problem in board.skipped:
        print(
            f"sslbench leaderboard: skipped {printable(f'{problem.path}: {problem.message}')}",
            file=sys.stderr,
        )
    for warning in board.warnings:
        print(f"sslbench leaderboard: warning: {printable(warning)}", file=sys.stderr)
    print(to_markdown(board), end="")
    for path in write_leaderboard(board, args.out).values():
        print(f"wrote {path}")
    return 0


def run_suite_command(args: argparse.Namespace) -> int:
    from sslbench.tools.suite import SuiteStopped, load_suite, run_suite
    from sslbench.tools.suite_launch import EXIT_STOPPED

    suite = load_suite(args.suite, args.overrides)
    try:
        report = run_suite(
            suite,
            args.checkpoints,
            args.out,
            labels=args.labels,
            launcher=args.launcher,
            cluster=args.cluster,
        )
    except SuiteStopped as exc:
        print(f"sslbench suite: stopped: {exc}; run the same command again to continue", file=sys.stderr)
        return EXIT_STOPPED
    print(report.summary())
    for path in report.leaderboard.values():
        print(f"wrote {path}")
    return 0 if not report.failed else 1


def run_quickstart(args: argparse.Namespace) -> int:
    from sslbench.pretrain.train import PretrainingInterrupted
    from sslbench.runtime.signals import EXIT_INTERRUPTED
    from sslbench.tools.quickstart import quickstart

    try:
        outputs = quickstart(args.out, dataset=args.dataset, root=args.root, quick=args.quick)
    except PretrainingInterrupted as exc:
        print(
            f"sslbench quickstart: stopped by SIGTERM; saved {exc.checkpoint}; run the same command "
            "again to continue",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print("\nquickstart done:")
    for name, path in outputs.items():
        print(f"  {name:12s} {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "leaderboard",
        help="turn a folder of result.json records into Markdown, CSV and HTML tables",
        description="Read every result.json below RESULTS_DIR: one row per checkpoint (sha256), one column "
        "per dataset/protocol/metric, mean ± std over seeds. Records that disagree on protocol settings "
        "get separate columns; unreadable records are reported and skipped. A checkpoint read as zoo:NAME "
        "gets the row 'zoo:NAME (published)' beside its own: the numbers the zoo table cites for it.",
    )
    p.add_argument("results", type=Path, metavar="RESULTS_DIR", help="folder searched for result.json")
    add_out_argument(
        p, "leaderboard", "folder for leaderboard.md, .csv and .html", required=True, old=("-o", "--output")
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=NAME",
        help="name a checkpoint's row; KEY: a sha256 prefix (8+ hex digits) or the checkpoint's file name",
    )
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="KEY",
        help="mark a checkpoint's row as a baseline (e.g. a random init), never a column's best; KEY as "
        "for --label; also read from baselines.json files below RESULTS_DIR",
    )
    p.add_argument(
        "--with-published",
        action="store_true",
        help="add the published reference rows (FT paper, MoCo README; ResNet-50, IN-1k), marked as such. "
        "A run of a zoo:NAME checkpoint always gets the zoo table's published numbers for that checkpoint "
        "as the row 'zoo:NAME (published)' beside it, with or without this flag",
    )
    p.add_argument(
        "--all-metrics",
        action="store_true",
        help="every metric of the records (default: top-1, each dataset's headline metric, detection APs)",
    )
    p.set_defaults(run=run_leaderboard)

    p = subparsers.add_parser(
        "suite",
        help="run the evaluation tasks of a YAML file on checkpoints, then the leaderboard",
        description="Run every task of the suite (a shipped suite: paper, quick; or a YAML file) on every "
        "checkpoint, "
        "each as its sslbench subcommand, in OUT/<sha256[:12]>/<task>-<settings hash>/seed<N>. A task "
        "whose record already exists for that checkpoint and those settings is skipped; a failing task "
        "is recorded and the others go on. Ends with OUT/leaderboard.{md,csv,html}.",
    )
    p.add_argument("checkpoints", nargs="+", type=Path, metavar="CKPT", help="checkpoint files")
    p.add_argument("--suite", required=True, help="a YAML file or the name of a shipped suite (paper, quick)")
    add_out_argument(p, "suite", "results folder", default=Path("runs/suite"))
    p.add_argument("--labels", nargs="+", help="row names for the leaderboard, one per checkpoint")
    p.add_argument(
        "--launcher",
        choices=("local", "submitit"),
        default="local",
        help="local: one task after another in this process; submitit: one Slurm job per task",
    )
    p.add_argument(
        "--cluster",
        choices=("slurm", "local", "debug"),
        help="submitit only: its executor (default: Slurm where sbatch exists, else local processes)",
    )
    add_overrides_argument(
        p,
        "suite overrides, anywhere after the subcommand, e.g. data_root=/data",
        beside="checkpoints",
        lists=("labels",),
    )
    p.set_defaults(run=run_suite_command)

    p = subparsers.add_parser(
        "quickstart",
        help="pretrain MoCo v2 and MoCo v2 + FT on built-in data, evaluate them, write the leaderboard",
        description="On a fresh machine with no data: pretrain MoCo v2 and MoCo v2 + FT (tiny configs) on "
        "scikit-learn's digits, evaluate both and a random-init baseline with kNN and the L-BFGS linear "
        "probe at 32 px, and write the leaderboard and the score plot into --out.",
    )
    add_out_argument(p, "quickstart", "output folder", default=Path("runs/quickstart"))
    p.add_argument("--dataset", choices=("digits", "fashion-mnist"), default="digits", help="built-in data")
    p.add_argument("--root", type=Path, help="fashion-mnist: folder of the four IDX .gz files")
    p.add_argument(
        "--quick", action="store_true", help="a few iterations on a fraction of the data (a smoke test)"
    )
    p.set_defaults(run=run_quickstart)
