"""How a ``Pruner`` works out its request: options from keywords, the goal once the schedule has
had its say, per-layer targets along the schedule, and whether the regularizer suits the groups."""

from __future__ import annotations

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph.types import UnitGroup
from prunekit.granularity import Granularity
from prunekit.request import PruneOptions, PruneRequest
from prunekit.schedules import Schedule


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
