"""Exceptions raised for bad input. Every message says what was wrong and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrunekitError(ValueError):
    """Base class for errors caused by the caller's input; the model is left unchanged."""


class UnknownNameError(PrunekitError, KeyError):
    """A method, model, dataset or layer name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Build an error for an unknown `name`, suggesting the closest registered choice.

    >>> str(unknown_name("method", "magnitud", ["magnitude", "random"]))
    "unknown method 'magnitud'; did you mean 'magnitude'? Choose one of: magnitude, random"
    """
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ";"
    return UnknownNameError(f"unknown {kind} '{name}'{hint} Choose one of: {', '.join(choices)}")
