"""Dense-versus-pruned latency that says when the machine was too busy to trust it.

:func:`prunekit.metrics.paired_latency` times the two models in alternating rounds and keeps the
fastest round of each. On a busy machine that can print a speedup of 7.00x that reads 2.44x on a
rerun, with nothing to tell the two apart. :func:`paired_timing` times the same rounds, but also
looks at each round's own ratio (dense ms / pruned ms, both timed within moments of each other):
once at least `rounds` rounds are done it stops when the ratios of the last `rounds` rounds agree
within `tolerance` (relative spread ``(max - min) / median``), and otherwise times more rounds, up
to `max_rounds`. If they still disagree the result is marked ``noisy``. The 1-minute load average
at the start is kept beside it, so a reader can see why.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.metrics import measure_latency

#: the default largest relative spread of the last rounds' ratios that still counts as stable
DEFAULT_TOLERANCE = 0.10

#: ``measure(model, inputs, repeats) -> ms`` for one round of one model
Measure = Callable[[nn.Module, Any, int], float]


@dataclass(frozen=True)
class PairedTiming:
    """The result of :func:`paired_timing`.

    `dense_ms` / `pruned_ms` are each model's fastest round (other load only ever adds time);
    `ratios` the dense / pruned ratio of every round, in order; `spread` the relative spread of
    the ratios of the last rounds it judged; `noisy` whether that spread stayed above the
    tolerance; `load_avg` the 1-minute load average when timing started (None where the system
    does not report one).
    """

    dense_ms: float
    pruned_ms: float
    ratios: tuple[float, ...]
    spread: float
    noisy: bool
    load_avg: float | None

    @property
    def speedup(self) -> float:
        """Dense / pruned latency of the fastest rounds."""
        return self.dense_ms / self.pruned_ms

    def fields(self, suffix: str = "") -> dict[str, Any]:
        """The run-dict entries of the harnesses: ``latency{suffix}_ms``, ``latency_dense{suffix}_ms``,
        ``latency{suffix}_spread``, ``latency{suffix}_noisy``, ``latency{suffix}_rounds`` and
        ``load_avg_1m``.

        >>> timing = PairedTiming(2.0, 1.0, (2.0, 2.1), 0.05, False, 0.5)
        >>> timing.fields("_b1")["latency_b1_ms"], timing.fields()["latency_noisy"]
        (1.0, False)
        """
        return {f"latency{suffix}_ms": self.pruned_ms, f"latency_dense{suffix}_ms": self.dense_ms,
                f"latency{suffix}_spread": self.spread, f"latency{suffix}_noisy": self.noisy,
                f"latency{suffix}_rounds": len(self.ratios), "load_avg_1m": self.load_avg}


def ratio_spread(ratios: tuple[float, ...] | list[float]) -> float:
    """Relative spread ``(max - min) / median`` of per-round ratios (0.0 for a single round).

    >>> round(ratio_spread([2.0, 2.2, 1.8]), 3)
    0.2
    """
    return (max(ratios) - min(ratios)) / statistics.median(ratios)


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), or None where the system has none.

    >>> value = load_average()
    >>> value is None or value >= 0
    True
    """
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no getloadavg
        return None


def _median_ms(model: nn.Module, inputs: Any, repeats: int) -> float:
    return measure_latency(model, inputs, warmup=3, repeats=repeats)


def _check(rounds: int, repeats: int, max_rounds: int, tolerance: float) -> None:
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (rounds, repeats, max_rounds)):
        raise PrunekitError(f"rounds, repeats and max_rounds must be ints; got {rounds!r}, {repeats!r}, {max_rounds!r}")
    if rounds < 1 or repeats < 1 or max_rounds < rounds:
        raise PrunekitError(f"need rounds >= 1, repeats >= 1 and max_rounds >= rounds; got rounds={rounds}, "
                            f"repeats={repeats}, max_rounds={max_rounds}")
    if not tolerance >= 0:
        raise PrunekitError(f"tolerance must be a relative spread >= 0 such as 0.1; got {tolerance!r}")


def paired_timing(dense: nn.Module, pruned: nn.Module, inputs: Any, rounds: int = 5, repeats: int = 15, *,
                  max_rounds: int | None = None, tolerance: float = DEFAULT_TOLERANCE,
                  measure: Measure | None = None) -> PairedTiming:
    """Time `dense` and `pruned` alternately until their per-round ratio is stable, or mark it noisy.

    Each round times `repeats` forward passes of `dense`, then of `pruned` (the median of each,
    after 3 warm-up passes; `measure(model, inputs, repeats)` replaces that). After `rounds`
    rounds, and after each further one, the ratios of the last `rounds` rounds are compared: when
    their relative spread is at most `tolerance` timing stops; after `max_rounds` (default
    ``3 * rounds``) it stops anyway and the result is ``noisy``.

    >>> from torch import nn
    >>> import torch
    >>> timing = paired_timing(nn.Linear(4, 4), nn.Linear(4, 2), torch.ones(8, 4), 1, 3)
    >>> timing.dense_ms > 0 and timing.pruned_ms > 0, len(timing.ratios), timing.noisy
    (True, 1, False)
    """
    max_rounds = 3 * rounds if max_rounds is None else max_rounds
    _check(rounds, repeats, max_rounds, tolerance)
    measure = _median_ms if measure is None else measure
    load = load_average()
    dense_times: list[float] = []
    pruned_times: list[float] = []
    ratios: list[float] = []
    while True:
        dense_times.append(measure(dense, inputs, repeats))
        pruned_times.append(measure(pruned, inputs, repeats))
        ratios.append(dense_times[-1] / pruned_times[-1])
        if len(ratios) < rounds:
            continue
        spread = ratio_spread(ratios[-rounds:])
        if spread <= tolerance or len(ratios) >= max_rounds:
            break
    return PairedTiming(min(dense_times), min(pruned_times), tuple(ratios), spread, spread > tolerance, load)
