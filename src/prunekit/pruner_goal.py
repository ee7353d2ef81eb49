"""How a ``Pruner`` works out its request: options from keywords, the goal once the schedule has
had its say (or an N:M pattern), the default scope, per-layer targets along the schedule, and
whether the regularizer suits the groups."""

from __future__ import annotations

import math

from torch import nn

from prunekit.criteria import CRITERIA
from prunekit.errors import PrunekitError
from prunekit.graph.types import UnitGroup
from prunekit.granularity import Granularity, get_granularity
from prunekit.request import PruneOptions, PruneRequest
from prunekit.schedules import OneShot, Schedule
from prunekit.select_rows import check_layouts, parse_pattern


def check_regularizer(model: nn.Module, request: PruneRequest, groups: list[UnitGroup],
                       granularity: Granularity, reads: str | None) -> None:
    """The regularizer suits the groups, and a criterion that reads learned gates has them."""
    regularizer = request.options.regularizer
    learns_gates = regularizer is not None and regularizer.learns_gates
    if reads == "gate" and not learns_gates:
        raise PrunekitError(f"method '{request.method}' prunes by learned L0 gates: pass "
                            "regularizer=prunekit.regularizers.L0(strength) so the Pruner adds them")
    if learns_gates and request.options.remove and granularity.removable:
        raise PrunekitError("with L0 gates leave remove=False: the gates become masks when the Pruner prunes, and "
                            "finalize() removes the units whose gates shut")
    if regularizer is not None:
        regularizer.check(model, groups, granularity.name)


def goal(schedule: Schedule, sparsity: float | None, threshold: float | None) -> tuple[float | None, float | None]:
    """The request's sparsity and threshold once the schedule has had its say (its own final
    target; a gradient threshold, which the schedule applies, stands in when no ratio is given)."""
    sparsity = schedule.final_sparsity(sparsity)
    theta = schedule.threshold_at(0)
    if theta is not None:
        if threshold is not None:
            raise PrunekitError(f"{type(schedule).__name__} sets the threshold ({theta}); do not pass "
                                "threshold= to the Pruner as well")
        if sparsity is None:
            threshold = theta
    return sparsity, threshold


def layer_targets(schedule: Schedule, step: int, groups: list[UnitGroup], request: PruneRequest,
                   target: float | None) -> tuple[float | None, dict[str, float] | None]:
    """With ``layer_sparsity``: each group's target at `step` and their unit-weighted mean (the
    overall target). Every group follows the schedule in proportion to its own final amount
    (groups it does not name: the request's `sparsity`), never past it; a one-shot schedule gives
    the amounts exactly. Without ``layer_sparsity``: ``(target, None)``."""
    layer_sparsity = request.options.layer_sparsity
    if layer_sparsity is None:
        return target, None
    default = request.sparsity if request.sparsity is not None else 0.0
    finals = {group.name: layer_sparsity.get(group.name, default) for group in groups}
    total = sum(group.num_units for group in groups)
    overall_final = sum(finals[group.name] * group.num_units for group in groups) / max(total, 1)
    # the schedule's progress towards its own final target (a Polynomial(final=...) or explicit
    # Iterative levels ignore the `final` they are given), as a share of the way
    reference = request.sparsity if request.sparsity else overall_final
    share = min(1.0, schedule.sparsity_at(step, reference) / reference) if reference > 0 else 0.0
    per_group = {name: final * share for name, final in finals.items()}
    return sum(per_group[group.name] * group.num_units for group in groups) / max(total, 1), per_group


def options_from(options: dict) -> PruneOptions:
    """``PruneOptions`` from keyword arguments, or the one passed as ``options=``."""
    given = options.get("options")
    if given is None:
        return PruneOptions.from_kwargs(options)
    if not isinstance(given, PruneOptions) or len(options) > 1:
        raise PrunekitError(
            "pass either options=PruneOptions(...) alone or the options as keywords (exclude=..., seed=...), "
            f"not {sorted(options)}"
        )
    return PruneOptions.from_kwargs({field: getattr(given, field) for field in given.__dataclass_fields__})


def default_scope(method: str, granularity: str, options: PruneOptions) -> str:
    """The scope when the caller names none: layer scope for per-layer targets, else the scope
    the method compares in when its granularity can (Wanda: each output row), else the
    granularity's own.

    >>> [default_scope(method, "unstructured", PruneOptions()) for method in ("wanda", "magnitude")]
    ['row', 'layer']
    """
    if options.layer_sparsity is not None:
        return "layer"
    unit_granularity = get_granularity(granularity)
    criterion = CRITERIA.get(method)
    if criterion is not None and criterion.scope is not None and criterion.works_with(unit_granularity.provides):
        return criterion.scope
    return unit_granularity.default_scope


def pattern_goal(schedule: Schedule, granularity: str, options: PruneOptions, sparsity: float | None,
                 threshold: float | None) -> float | None:
    """The sparsity an N:M `options.pattern` implies (1 - N/M), or `sparsity` without one. A
    pattern prunes single weights once, to exactly its pattern: a structured granularity, a
    threshold, per-layer targets, a schedule that prunes more than once, or a sparsity other than
    1 - N/M is an error.

    >>> pattern_goal(OneShot(), "unstructured", PruneOptions(pattern="2:4"), None, None)
    0.5
    """
    pattern = options.pattern
    if pattern is None:
        return sparsity
    n, m = parse_pattern(pattern)
    implied = 1.0 - n / m
    conflicts = [
        (granularity != "unstructured", f"granularity '{granularity}' prunes units, not single weights: leave "
                                        "granularity at 'unstructured'"),
        (threshold is not None, "a threshold would decide how many go as well: leave threshold unset"),
        (options.layer_sparsity is not None, "layer_sparsity would give layers other amounts: leave it unset"),
        (not isinstance(schedule, OneShot), f"{type(schedule).__name__} prunes in several steps: use the default "
                                            "OneShot schedule"),
        (sparsity is not None and not math.isclose(sparsity, implied, abs_tol=1e-9),
         f"sparsity={sparsity!r} contradicts the {implied:.0%} the pattern gives: leave sparsity unset"),
    ]
    for conflict, what in conflicts:
        if conflict:
            raise PrunekitError(f"pattern {pattern} keeps {n} of every {m} consecutive weights ({implied:.0%} "
                                f"sparsity); {what}")
    return implied


def check_groups(groups: list[UnitGroup], scope: str, pattern: str | None) -> None:
    """Row scope and an N:M `pattern` fit every group a Pruner found (``select_rows.check_layouts``)."""
    check_layouts({group.name: group.unit_shape for group in groups},
                  {group.name: group.layout for group in groups}, scope, pattern)
