"""The command line's parser pieces: help that shows every default, and numbers checked on entry.

Every ``prunekit`` parser and subparser is a :class:`CommandParser`, so each option's help ends
with ``(default: ...)`` written as one would type it, also for options added later without help
text. Counts (epochs, batch sizes, seeds, text counts) are checked by argparse itself: a negative
or zero value exits with status 2 and names the option before anything is loaded.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any


def _typed(value: Any) -> str:
    """A default as the user would type it: ``0.1,0.3`` for a tuple, ``64`` for an int."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _shows_default(action: argparse.Action) -> bool:
    """Options with a value to show: not positionals, not ``--help``, not None / False / ()."""
    default = action.default
    return (bool(action.option_strings) and default is not argparse.SUPPRESS and default is not None
            and default is not False and default != () and default != [])


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option with a default, unless its help already says it.

    >>> parser = CommandParser(prog="demo")
    >>> _ = parser.add_argument("--batch-size", type=count(1), default=64, help="examples per batch")
    >>> "examples per batch (default: 64)" in parser.format_help()
    True
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if not _shows_default(action) or "(default:" in help_text:
            return help_text
        shown = _typed(action.default).replace("%", "%%")  # help text is %-formatted by argparse
        return f"{help_text} (default: {shown})".strip()

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and _shows_default(action):  # argparse prints no help line at all otherwise
            action = copy.copy(action)
            action.help = self._get_help_string(action)
        return super()._format_action(action)


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help (and its subcommands' help) shows every default.

    >>> parser = CommandParser(prog="prunekit")
    >>> sub = parser.add_subparsers().add_parser("demo")
    >>> isinstance(sub, CommandParser) and sub.formatter_class is DefaultsHelpFormatter
    True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def count(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer >= `minimum` (epochs, batch sizes, sizes).

    >>> count(1)("64")
    64
    >>> count(0)("-2")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: expected an integer >= 0; got '-2'
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type`` for a number > 0 (learning rates).

    >>> positive_float("1e-3")
    0.001
    """
    return _finite_float(text, 0.0, inclusive=False, example="0.001")


def non_negative_float(text: str) -> float:
    """An argparse ``type`` for a number >= 0 (tolerances in points).

    >>> non_negative_float("0.5")
    0.5
    """
    return _finite_float(text, 0.0, inclusive=True, example="0.5")


def _finite_float(text: str, minimum: float, inclusive: bool, example: str) -> float:
    """`text` as a finite float above `minimum` (or equal to it, if `inclusive`)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    above = value >= minimum if inclusive else value > minimum
    if not above or value == float("inf"):
        bound = f"{'>=' if inclusive else '>'} {minimum:g}"
        raise argparse.ArgumentTypeError(f"expected a number {bound} such as {example}; got {text!r}")
    return value
