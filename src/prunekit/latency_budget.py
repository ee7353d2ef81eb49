"""Meet a latency budget by measurement: bisect a pruning knob until the pruned copy is fast enough.

MACs do not predict latency well (kernels prefer some channel counts, norms and activations are
memory-bound), so a budget such as "at most 0.4x the dense latency" is met by timing candidates:
:func:`meet_latency_budget` takes a callable that prunes a *copy* of the model at a scalar knob
(a sparsity, an allocation's epsilon, ...; larger = more pruned), times each candidate against
the dense model with paired alternating rounds (:func:`prunekit.metrics.paired_latency`) and
bisects the knob until the measured ratio is at most the budget. Any allocation can plug in: the
knob is whatever its callable understands. The dense model is only ever run, never changed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.metrics import paired_latency

#: ``timer(dense, pruned, inputs) -> (dense_ms, pruned_ms)``, measured in the same run.
Timer = Callable[[nn.Module, nn.Module, Any], "tuple[float, float]"]


@dataclass(frozen=True)
class LatencyMeasurement:
    """One timed candidate: the knob it was pruned at and both latencies of its paired run."""

    knob: float
    dense_ms: float
    pruned_ms: float

    @property
    def ratio(self) -> float:
        """Pruned / dense latency (0.4 = the pruned model takes 40% of the dense time)."""
        return self.pruned_ms / self.dense_ms

    def to_dict(self) -> dict[str, float]:
        """JSON-ready: knob, both latencies and their ratio.

        >>> LatencyMeasurement(0.5, 10.0, 4.0).to_dict()["ratio"]
        0.4
        """
        return {"knob": self.knob, "dense_ms": self.dense_ms, "pruned_ms": self.pruned_ms, "ratio": self.ratio}


@dataclass
class LatencyBudgetResult:
    """The smallest knob found that meets the budget, its pruned model and every measurement
    taken on the way (in the order they were taken)."""

    knob: float
    model: nn.Module
    ratio: float
    measurements: list[LatencyMeasurement]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the model left out).

        >>> LatencyBudgetResult(0.5, nn.Identity(), 0.4, [LatencyMeasurement(0.5, 10.0, 4.0)]).to_dict()["knob"]
        0.5
        """
        return {"knob": self.knob, "ratio": self.ratio,
                "measurements": [measurement.to_dict() for measurement in self.measurements]}


def pruned_copies(model: nn.Module, prune_in_place: Callable[[nn.Module, float], object]) -> Callable[[float], nn.Module]:
    """Turn ``prune_in_place(model_copy, knob)`` into the ``prune_copy(knob)`` that
    :func:`meet_latency_budget` takes: every call prunes a fresh deep copy of `model`.

    >>> from prunekit.pruner import prune
    >>> prune_copy = pruned_copies(nn.Linear(4, 4), lambda copy, knob: prune(copy, sparsity=knob))
    >>> float((prune_copy(0.5).weight == 0).float().mean())
    0.5
    """
    def prune_copy(knob: float) -> nn.Module:
        candidate = copy.deepcopy(model)
        prune_in_place(candidate, knob)
        return candidate

    return prune_copy


def _check_budget(ratio: float, low: float, high: float, tolerance: float, max_steps: int) -> None:
    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not (number(ratio) and ratio > 0):
        raise PrunekitError(f"ratio must be a number > 0 (pruned / dense latency, e.g. 0.4); got {ratio!r}")
    if not (number(low) and number(high) and low < high):
        raise PrunekitError(f"need low < high (the knob's least and most pruned values); got low={low!r}, "
                            f"high={high!r}")
    if not (number(tolerance) and tolerance > 0):
        raise PrunekitError(f"tolerance must be a number > 0 (how close the bisection gets); got {tolerance!r}")
    if not (isinstance(max_steps, int) and max_steps >= 0):
        raise PrunekitError(f"max_steps must be an int >= 0 (bisection steps after the first measurement); "
                            f"got {max_steps!r}")


def _unreachable(ratio: float, floor: LatencyMeasurement) -> PrunekitError:
    return PrunekitError(
        f"a latency budget of {ratio:.3g}x dense cannot be met: pruned as far as the knob goes "
        f"(knob {floor.knob:g}, every layer at its floor) the model measures {floor.ratio:.3g}x the dense "
        f"latency ({floor.pruned_ms:.3f} ms vs {floor.dense_ms:.3f} ms), the lowest ratio reachable this way. "
        f"Ask for a ratio >= {floor.ratio:.3g}, exclude fewer layers, or prune a coarser unit as well "
        "(e.g. whole layers); the model was not changed"
    )


def meet_latency_budget(
    model: nn.Module,
    prune_copy: Callable[[float], nn.Module],
    ratio: float,
    inputs: Any,
    *,
    low: float = 0.0,
    high: float = 0.95,
    tolerance: float = 0.01,
    max_steps: int = 8,
    timer: Timer | None = None,
) -> LatencyBudgetResult:
    """Bisect the knob of `prune_copy` until the pruned copy's latency is at most `ratio` x dense.

    ``prune_copy(knob)`` must return a new, pruned (physically shrunk, to gain time) copy of
    `model` and leave `model` as it is (:func:`pruned_copies` makes one from an in-place pruning
    function); larger knobs must prune more, and ``high`` is the most the caller allows (every
    layer at its floor). Each candidate is timed against `model` on `inputs` by `timer`
    (default :func:`prunekit.metrics.paired_latency`: alternating rounds, fastest round of each),
    so both latencies come from the same moment of the machine. `high` is measured first: when
    even it is slower than the budget, a ``PrunekitError`` names the lowest ratio reached. Then
    the knob is bisected between `low` (taken not to meet the budget) and the best knob meeting
    it, for at most `max_steps` steps or until the interval is narrower than `tolerance`.
    Returns the smallest knob measured to meet the budget, its model and all measurements.
    Latency is assumed to fall as the knob grows; where noise breaks that, the knob returned
    still measured within the budget.

    >>> import torch
    >>> from prunekit.pruner import prune
    >>> dense = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 4))
    >>> fake_timer = lambda dense, pruned, inputs: (1.0, pruned[0].out_features / 100)  # time ~ width
    >>> inputs = torch.ones(1, 100)
    >>> prune_copy = pruned_copies(dense, lambda copy, knob: prune(
    ...     copy, "l1", knob, granularity="neuron", example_inputs=inputs, remove=True))
    >>> result = meet_latency_budget(dense, prune_copy, 0.4, inputs, timer=fake_timer)
    >>> round(result.knob, 2), result.ratio, result.model[0].out_features, dense[0].out_features
    (0.6, 0.4, 40, 100)
    """
    _check_budget(ratio, low, high, tolerance, max_steps)
    timer = paired_latency if timer is None else timer
    measurements: list[LatencyMeasurement] = []

    def measure(knob: float) -> tuple[nn.Module, LatencyMeasurement]:
        candidate = prune_copy(knob)
        if candidate is model:
            raise PrunekitError("prune_copy returned the model itself; it must prune and return a copy "
                                "(wrap an in-place pruning function with prunekit.latency_budget.pruned_copies)")
        dense_ms, pruned_ms = timer(model, candidate, inputs)
        measurements.append(LatencyMeasurement(knob, dense_ms, pruned_ms))
        return candidate, measurements[-1]

    best_model, best = measure(high)
    if best.ratio > ratio:
        raise _unreachable(ratio, best)
    lower, upper = low, high
    for _ in range(max_steps):
        if upper - lower <= tolerance:
            break
        middle = (lower + upper) / 2
        candidate, measured = measure(middle)
        if measured.ratio <= ratio:
            upper, best_model, best = middle, candidate, measured
        else:
            lower = middle
    return LatencyBudgetResult(best.knob, best_model, best.ratio, measurements)


__all__ = ["LatencyBudgetResult", "LatencyMeasurement", "Timer", "meet_latency_budget", "pruned_copies"]
