"""The ``sslbench`` command: one subcommand per job.

Each subpackage registers its own subcommands from a light module (no torch, torchvision, FAISS,
scikit-learn, pandas or matplotlib at import: ``tests/test_cli_conventions.py`` checks it); heavy
imports happen inside the handlers, so ``sslbench --help`` is fast and optional dependencies
(detectron2) are needed only by their command. The shared conventions (``--out``, trailing
``KEY=VALUE`` overrides, defaults in help, exact option names) live in ``sslbench.commandline``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sslbench import __version__
from sslbench.checkpoints import cli as checkpoints_cli
from sslbench.commandline import CommandParser, HelpFormatter, configure, take_overrides
from sslbench.data import cli as data_cli
from sslbench.errors import SslbenchError
from sslbench.evaluate import cli as evaluate_cli
from sslbench.evaluate import finetune_cli
from sslbench.pretrain import cli as pretrain_cli
from sslbench.runtime.signals import EXIT_INTERRUPTED, TrainingInterrupted
from sslbench.tools import cli as tools_cli
from sslbench.transfer import cli as transfer_cli

REGISTRARS = (
    checkpoints_cli.register,
    pretrain_cli.register,
    data_cli.register,
    evaluate_cli.register,
    finetune_cli.register,
    transfer_cli.register,
    tools_cli.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="sslbench",
        description="Evaluate self-supervised ResNet and ViT checkpoints the way papers do.",
        allow_abbrev=False,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sslbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(subparsers)
    for subparser in subparsers.choices.values():
        configure(subparser)
    return parser


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def parse_command_line(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command; ``KEY=VALUE`` overrides are collected wherever they were written."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    return take_overrides(_subcommand(parser, args.command), args, extras)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line(argv)
    try:
        return int(args.run(args) or 0)
    except TrainingInterrupted as exc:  # saved; a requeued job continues with --resume
        print(f"sslbench {args.command}: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SslbenchError as exc:
        print(f"sslbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sslbench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
