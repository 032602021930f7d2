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
from sslbench.evaluate import finetune_cli, knn_cli, linear_cli
from sslbench.pretrain import cli as pretrain_cli
from sslbench.runtime.signals import EXIT_INTERRUPTED, TrainingInterrupted
from sslbench.tools import cli as tools_cli
from sslbench.transfer import cli as transfer_cli

REGISTRARS = (
    checkpoints_cli.register,
    pretrain_cli.register,
    data_cli.register,
    knn_cli.register,
    linear_cli.register,
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


# Exit statuses (README: "Exit statuses"); EXIT_INTERRUPTED (143: stopped by SIGTERM after saving, run
# again to continue) comes from sslbench.runtime.signals.
EXIT_OK = 0
EXIT_TASKS_FAILED = 1  # sslbench suite: some tasks failed (each left a failed record)
EXIT_BAD_INPUT = 2  # a bad option, file, dataset, checkpoint, config or record (argparse's status too)
EXIT_IO_ERROR = 74  # the system refused a read or write: disk full, read-only folder, permissions (EX_IOERR)
EXIT_CTRL_C = 130  # KeyboardInterrupt


def error_message(exc: BaseException) -> str:
    """The message of ``exc``. An error raised in a DataLoader worker arrives re-raised with the
    worker's traceback in its message: only its last line, the original message, is kept."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name, sep, message = last.partition(": ")
        text = message if sep and name.replace(".", "").replace("_", "").isalnum() else last
    return text or type(exc).__name__


def _os_error_line(exc: OSError) -> str:
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    reason = exc.strerror or error_message(exc)
    return f"{where}: {reason}" if where else reason


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Expected failures print one line ``sslbench CMD: error: ...`` and return
    their documented status; any other exception is a bug and keeps its traceback."""
    args = parse_command_line(argv)
    try:
        return int(args.run(args) or EXIT_OK)
    except TrainingInterrupted as exc:  # saved; a requeued job continues with --resume
        print(f"sslbench {args.command}: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SslbenchError as exc:
        print(f"sslbench {args.command}: error: {error_message(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"sslbench {args.command}: error: {_os_error_line(exc)}", file=sys.stderr)
        return EXIT_IO_ERROR
    except KeyboardInterrupt:
        print(f"sslbench {args.command}: interrupted", file=sys.stderr)
        return EXIT_CTRL_C


if __name__ == "__main__":
    sys.exit(main())
