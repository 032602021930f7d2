"""The conventions every ``sslbench`` subcommand shares, in one place.

- Outputs: ``--out`` (a run folder, or the file a command writes). Older spellings (``-o``,
  ``--output``) still work for a release and print one deprecation line.
- Overrides: trailing ``KEY=VALUE`` tokens (a config key, dotted for nested keys), anywhere after the
  subcommand, before or after its options and positionals. ``sslbench detect`` also takes Detectron2's
  own ``KEY VALUE`` pairs for Detectron2 config keys.
- Help shows every default; option names must be written in full (no prefix matching).

Nothing here imports torch or the other heavy dependencies: ``sslbench --help`` builds every parser.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

# KEY=VALUE: a config key (letters, digits, '_', '-', dotted), then '='. A path with a '/' before its
# first '=' is not an override; a checkpoint named like one is passed as ./NAME.
_OVERRIDE = re.compile(r"[A-Za-z_][\w\-]*(\.[\w\-]+)*=")


def is_override(token: str) -> bool:
    """Whether a command-line token is a ``KEY=VALUE`` override."""
    return _OVERRIDE.match(token) is not None


def deprecated(command: str, old: str, new: str) -> None:
    """The one line an old spelling prints (to stderr, so that stdout stays parseable)."""
    print(f"sslbench {command}: {old} is deprecated; use {new}", file=sys.stderr)


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (exit 2), naming the option and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help where it has a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = (
            default is not None
            and default is not False
            and default is not argparse.SUPPRESS
            and default != []
            and "default" not in text
            and (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
            and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        )
        if shown:
            value = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            text = f"{text} (default: {value})".strip()
        return text


def configure(parser: argparse.ArgumentParser) -> None:
    """Exact option names and visible defaults for a parser (every subcommand's goes through here)."""
    parser.allow_abbrev = False
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        has_default = action.default is not None and action.default is not False
        if action.help is None and action.option_strings and has_default:
            action.help = "(default: %(default)s)"  # argparse prints no line for a help-less option


class _OutAction(argparse.Action):
    """``--out``; the deprecated spellings store the same value and say so once."""

    def __init__(self, *args: Any, command: str, **kwargs: Any) -> None:
        self.command = command
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if option_string is not None and option_string != "--out":
            deprecated(self.command, option_string, "--out")
        setattr(namespace, self.dest, values)


def add_out_argument(
    parser: argparse.ArgumentParser,
    command: str,
    help: str,
    *,
    required: bool = False,
    default: Any = None,
    old: Sequence[str] = (),
) -> None:
    """``--out PATH`` (``old``: deprecated spellings of the same option, e.g. ``-o``, ``--output``)."""
    from pathlib import Path

    text = help + (f" ({'/'.join(old)}: deprecated spellings)" if old else "")
    parser.add_argument(
        "--out",
        *old,
        dest="out",
        type=Path,
        required=required,
        default=default,
        metavar="OUT",
        help=text,
        action=_OutAction,
        command=command,
    )


_ACCEPTS = "_overrides_beside"  # set on commands that take overrides: the positional they sit beside
_SWALLOWED_BY = "_overrides_swallowed_by"  # options of several values that may swallow an override


def add_overrides_argument(
    parser: argparse.ArgumentParser, help: str, beside: str | None = None, lists: Sequence[str] = ()
) -> None:
    """Trailing ``KEY=VALUE`` overrides, written anywhere; ``beside``: the command's positional;
    ``lists``: options taking several names (``--labels A B``) whose values are never overrides."""
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=help)
    parser.set_defaults(**{_ACCEPTS: beside or "", _SWALLOWED_BY: tuple(lists)})


def take_overrides(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]
) -> argparse.Namespace:
    """Sort what ``parse_known_args`` left over or put in the positional into overrides and positionals.

    argparse fills positionals greedily, so ``CKPT key=v --out X`` reads ``key=v`` as a second
    checkpoint and ``CKPT --out X key=v`` leaves ``key=v`` over: every ``KEY=VALUE`` token goes to
    ``args.overrides``, every other plain token to the positional; an unknown option is an error.
    """
    accepts = hasattr(args, _ACCEPTS)
    unknown = [token for token in extras if token.startswith("-") or not accepts]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not accepts:
        return args
    positional = getattr(args, _ACCEPTS) or None
    swallowed = []
    for dest in getattr(args, _SWALLOWED_BY):
        values = getattr(args, dest)
        if values:
            swallowed += [v for v in values if is_override(v)]
            setattr(args, dest, [v for v in values if not is_override(v)] or None)
    delattr(args, _ACCEPTS)
    delattr(args, _SWALLOWED_BY)
    current = getattr(args, positional) if positional else None
    single = positional is not None and not isinstance(current, list)
    given = [] if current is None else current if isinstance(current, list) else [current]
    tokens = [*given, *args.overrides, *swallowed, *extras]
    overrides = [str(t) for t in tokens if is_override(str(t))]
    rest = [t for t in tokens if not is_override(str(t))]
    if positional is None:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(map(str, rest))}")
    else:
        name = _metavar(parser, positional)
        if not rest:
            parser.error(f"the following arguments are required: {name}")
        if single and len(rest) > 1:
            parser.error(f"one {name} expected, got {' '.join(map(str, rest))}")
        kind = _positional_type(parser, positional)
        values = [t if not isinstance(t, str) else kind(t) for t in rest]
        setattr(args, positional, values[0] if single else values)
    args.overrides = overrides
    return args


def _positional_action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(a for a in parser._actions if a.dest == dest and not a.option_strings)


def _metavar(parser: argparse.ArgumentParser, dest: str) -> str:
    return str(_positional_action(parser, dest).metavar or dest)


def _positional_type(parser: argparse.ArgumentParser, dest: str) -> Any:
    kind = _positional_action(parser, dest).type
    return kind if callable(kind) else str
