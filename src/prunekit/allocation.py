"""How much each layer loses under one global budget (:class:`prunekit.budget.Budget`).

An allocation puts every unit removal ("layer g loses its k-th unit") in one order:

* ``uniform``: the same sparsity in every layer (layers take turns, staying within a unit);
* ``global``: one ranking of all units by score, as global scope;
* ``lamp``: one ranking by LAMP score (Lee et al. 2021, :func:`prunekit.select.lamp_scores`);
* ``sensitivity``: by predicted accuracy drop from a :class:`SensitivityResult`: each layer
  loses units while its predicted drop (its curve, interpolated linearly) stays <= a common
  epsilon, and epsilon rises one removal at a time; no layer goes past its curve's last point.

A sparsity budget takes the first ``round(value * units)`` removals (``uniform``: each layer's
``round(value * n)``, exactly as layer scope). A params / MACs budget is met by bisection on the
number of removals, measuring a pruned copy of the model each time (structured units removed
physically, unstructured zeros not counted: the deployed model), for the fewest removals that
meet it. A latency budget times pruned copies against the dense model with
:func:`prunekit.latency_budget.meet_latency_budget` (knob: the share of all possible removals).
Budgets are measured, never estimated from a proxy. The result is an
:class:`prunekit.budget.Allocation`, whose ``layer_sparsity`` goes to
``prunekit.prune(..., layer_sparsity=...)``; :func:`prune_to_budget` does both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from prunekit.budget import Allocation, Budget
from prunekit.errors import PrunekitError, unknown_name
from prunekit.granularity import get_granularity
from prunekit.latency_budget import meet_latency_budget
from prunekit.metrics import count_macs, count_params
from prunekit.pruner import Pruner
from prunekit.request import PruneOptions
from prunekit.select import SelectionRule, removal_order
from prunekit.sensitivity import LayerCurve, SensitivityResult
from prunekit.types import PruneResult
from prunekit.unit_plan import UnitPlan, plan_units

ALLOCATIONS = ("uniform", "global", "lamp", "sensitivity")


def _check_choice(allocation: str, sensitivity: SensitivityResult | None, granularity: str,
                  method: str | None) -> None:
    if allocation not in ALLOCATIONS:
        raise unknown_name("allocation", allocation, ALLOCATIONS)
    if allocation != "sensitivity":
        return
    method = method if method is not None else get_granularity(granularity).default_method
    if not isinstance(sensitivity, SensitivityResult):
        raise PrunekitError("allocation 'sensitivity' needs sensitivity=<a SensitivityResult from "
                            "prunekit.layer_sensitivity or prunekit.sensitivity.load_sensitivity>")
    if sensitivity.granularity != granularity or (method is not None and sensitivity.method != method):
        raise PrunekitError(f"the sensitivity curves were measured with granularity '{sensitivity.granularity}' "
                            f"and method '{sensitivity.method}', but this prunes with '{granularity}' and "
                            f"'{method}': measure the curves with the same granularity and method")


def _check_curves(plan: UnitPlan, sensitivity: SensitivityResult) -> None:
    for group in plan.groups:
        curve = sensitivity.layers.get(group.name)
        if curve is None or curve.num_units != group.num_units:
            found = "no curve" if curve is None else f"a curve over {curve.num_units} units"
            raise PrunekitError(f"the sensitivity result has {found} for '{group.name}' ({group.num_units} units "
                                "here): measure the curves on this model, with the same exclude list")


def _epsilons(curve: LayerCurve, sparsity: torch.Tensor, dense: float) -> torch.Tensor:
    """The drop a layer risks by reaching each `sparsity`: the worst predicted on the way there."""
    drop = torch.from_numpy(curve.drop_at(sparsity.numpy(), dense)).double().reshape(-1)
    return torch.cummax(drop, 0).values if drop.numel() else drop


def _turns(plan: UnitPlan, sensitivity: SensitivityResult | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Removal order of ``uniform`` (by the sparsity each removal reaches, rounded as layer scope
    rounds) or ``sensitivity`` (by epsilon, then as uniform); units removed already come first.
    Returns the owners and, for sensitivity, each removal's epsilon."""
    owners, primary, secondary = [], [], []
    already = plan.removed_already()
    for index, group in enumerate(plan.groups):
        units, before = group.num_units, already[group.name]
        counts = torch.arange(1, max(units - plan.floor(group), before) + 1, dtype=torch.float64)
        if sensitivity is not None:  # no further than the curve was measured
            curve = sensitivity.layers[group.name]
            counts = counts[(counts <= before) | (counts / units <= max(curve.sparsity) + 1e-9)]
        reached = (counts - 0.5) / units
        key = reached.clone() if sensitivity is None else _epsilons(curve, counts / units, sensitivity.dense_metric)
        key[:before] = -math.inf
        owners.append(torch.full((counts.numel(),), index, dtype=torch.long))
        primary.append(key)
        secondary.append(reached)
    owner, first, second = torch.cat(owners), torch.cat(primary), torch.cat(secondary)
    by_second = torch.sort(second, stable=True).indices  # ties of the first key: by the second, then position
    order = by_second[torch.sort(first[by_second], stable=True).indices]
    return owner[order], first[order] if sensitivity is not None else None


def removal_sequence(plan: UnitPlan, allocation: str,
                     sensitivity: SensitivityResult | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The index (in ``plan.groups``) of the group losing each next unit as `allocation` orders
    removals (and, for ``sensitivity``, each removal's epsilon): the first K remove K units.

    >>> from prunekit.unit_plan import plan_units
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> plan = plan_units(model, None, "unstructured", None, None, PruneOptions())
    >>> removal_sequence(plan, "uniform")[0].tolist()
    [0, 1, 0, 0, 1, 0]
    """
    if allocation in ("global", "lamp"):
        granularity = plan.granularity
        rule = SelectionRule(scope=allocation, min_keep=granularity.min_keep, normalize=granularity.normalize)
        return removal_order({group.name: plan.scores[group.name] for group in plan.groups}, rule), None
    if allocation == "sensitivity":
        _check_curves(plan, sensitivity)
        return _turns(plan, sensitivity)
    return _turns(plan, None)


def _counts(plan: UnitPlan, order: torch.Tensor, taken: int) -> dict[str, int]:
    removed = torch.bincount(order[:taken], minlength=len(plan.groups))
    return {group.name: int(removed[index]) for index, group in enumerate(plan.groups)}


def _deployed_size(plan: UnitPlan, model: nn.Module, kind: str) -> Callable[[dict[str, int]], int]:
    """Params or MACs (per example) of the deployed model after `counts` removals per group."""
    def size(counts: dict[str, int]) -> int:
        pruned = plan.pruned_copy(model, counts, physically=True)
        total, nonzero = count_params(pruned) if kind == "params" else count_macs(pruned, plan.step.example_inputs)
        return total if plan.granularity.removable else nonzero
    return size


def _unreachable(budget: Budget, allocation: str, plan: UnitPlan, possible: int, dense: int, smallest: int) -> str:
    unit = plan.granularity.unit
    floor = (f"; every layer keeps at least {plan.granularity.min_keep} {unit}"
             if plan.granularity.min_keep else "")
    ask = (f"{budget.kind}={math.ceil(10_000 * smallest / dense) / 10_000:g}" if budget.value < 1
           else f"{budget.kind}={smallest}")
    return (f"budget {budget} cannot be met: it allows at most {budget.limit(dense):,.0f} {budget.kind}, but "
            f"removing all that the '{allocation}' allocation may remove ({possible:,} of {plan.num_units:,} "
            f"{unit}s{floor}) still leaves {smallest:,} of the dense {dense:,} ({smallest / dense:.2%}); ask for "
            f"{ask} or more, or prune more kinds of layers")


def _fewest_removals(size: Callable[[int], int], possible: int, limit: float) -> int | None:
    """The fewest removals whose size is <= `limit` (None if even all `possible` are not enough);
    size falls as removals grow, so bisection finds the first one that fits."""
    if size(possible) > limit:
        return None
    low, high = -1, possible  # size(high) fits; everything up to `low` is known not to
    while high - low > 1:
        middle = (low + high) // 2
        if size(middle) <= limit:
            high = middle
        else:
            low = middle
    return high


def _latency_taken(budget: Budget, plan: UnitPlan, model: nn.Module, order: torch.Tensor) -> tuple[int, float, float]:
    """How many removals meet a latency budget, timed by ``meet_latency_budget`` (knob: the share
    of all possible removals), with the dense and pruned milliseconds of that candidate."""
    if not plan.granularity.removable:
        raise PrunekitError(f"a latency budget needs units removed physically; '{plan.granularity.name}' zeros "
                            "leave a dense model as slow as before: use a structured granularity (e.g. channel)")
    possible = order.numel()

    def prune_copy(knob: float) -> nn.Module:
        return plan.pruned_copy(model, _counts(plan, order, round(knob * possible)), physically=True)

    found = meet_latency_budget(model, prune_copy, budget.value, plan.step.example_inputs, low=0.0, high=1.0,
                                tolerance=1.0 / max(possible, 1))
    chosen = next(measured for measured in found.measurements if measured.knob == found.knob)
    return round(found.knob * possible), chosen.dense_ms, chosen.pruned_ms


def _taken(budget: Budget, allocation: str, plan: UnitPlan, model: nn.Module,
           order: torch.Tensor) -> tuple[int, float | None, float | None]:
    """How many removals meet `budget`, with the budgeted quantity of the dense and pruned model
    (params, MACs or milliseconds; None for sparsity)."""
    possible = order.numel()
    if budget.kind == "latency":
        return _latency_taken(budget, plan, model, order)
    if budget.kind == "sparsity":
        wanted = round(budget.value * plan.num_units)
        if allocation == "sensitivity" and wanted > possible:
            raise PrunekitError(f"budget {budget} cannot be met: the sensitivity curves allow removing "
                                f"{possible:,} of {plan.num_units:,} {plan.granularity.unit}s "
                                f"(sparsity {possible / plan.num_units:.4f}); measure the curves at higher "
                                "sparsities or ask for less")
        return min(wanted, possible), None, None
    measure = _deployed_size(plan, model, budget.kind)
    sizes: dict[int, int] = {}

    def size(taken: int) -> int:
        if taken not in sizes:
            sizes[taken] = measure(_counts(plan, order, taken))
        return sizes[taken]

    dense = count_params(model)[0] if budget.kind == "params" else count_macs(model, plan.step.example_inputs)[0]
    taken = _fewest_removals(size, possible, budget.limit(dense))
    if taken is None:
        raise PrunekitError(_unreachable(budget, allocation, plan, possible, dense, size(possible)))
    return taken, dense, size(taken)


def as_budget(budget: Budget | str) -> Budget:
    """`budget` as a :class:`Budget` (a string is parsed: ``"macs=0.25"``).

    >>> as_budget("params=0.1")
    Budget(kind='params', value=0.1)
    """
    budget = Budget.parse(budget) if isinstance(budget, str) else budget
    if not isinstance(budget, Budget):
        raise PrunekitError(f"budget must be a Budget or a string such as 'macs=0.25', got {budget!r}")
    return budget


def _check_budget(budget: Budget | str, example_inputs: object) -> Budget:
    budget = as_budget(budget)
    if budget.kind == "macs" and example_inputs is None:
        raise PrunekitError("a 'macs' budget counts MACs with a forward pass: pass example_inputs=<a small batch>")
    if budget.kind == "latency" and example_inputs is None:
        raise PrunekitError("a 'latency' budget times forward passes: pass example_inputs=<a batch of the size "
                            "you will run>")
    return budget


def allocate(model: nn.Module, budget: Budget | str, allocation: str = "uniform", *, method: str | None = None,
             granularity: str = "unstructured", data: Iterable | None = None, example_inputs: object = None,
             sensitivity: SensitivityResult | None = None, **options) -> Allocation:
    """Per-layer amounts of `granularity` units that meet `budget` under `allocation` (see the
    module docstring); `model` is left as it was. `method`, `data`, `example_inputs` and the
    keyword `options` (``exclude``, ``seed``, ``loss_fn``, ``num_batches``) mean what they mean
    for ``prunekit.prune``; ``allocation="sensitivity"`` needs `sensitivity`.

    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> allocation = allocate(model, "params=0.5", "lamp")
    >>> allocation.achieved <= 0.5 * allocation.dense, sorted(allocation.layer_sparsity)
    (True, ['0.weight', '2.weight'])
    """
    budget = _check_budget(budget, example_inputs)
    if "layer_sparsity" in options:
        raise PrunekitError("allocate chooses each layer's sparsity itself; do not pass layer_sparsity=")
    _check_choice(allocation, sensitivity, granularity, method)
    plan = plan_units(model, method, granularity, data, example_inputs, PruneOptions.from_kwargs(options))
    order, epsilons = removal_sequence(plan, allocation, sensitivity)
    taken, dense, achieved = _taken(budget, allocation, plan, model, order)
    if allocation == "uniform" and budget.kind == "sparsity":  # exactly layer scope's rounding
        wanted = {group.name: round(budget.value * group.num_units) for group in plan.groups}
    else:
        wanted = _counts(plan, order, taken)
    removed = plan.removed(plan.keep(wanted))  # what pruning will really remove (floors, masks)
    epsilon = float(epsilons[taken - 1]) if epsilons is not None and taken else None
    return Allocation(allocation, budget, plan.granularity.name, plan.step.request.method,
                      {group.name: removed[group.name] / group.num_units for group in plan.groups},
                      sum(removed.values()), plan.num_units, dense, achieved,
                      max(epsilon, 0.0) if epsilon is not None else None)


def prune_to_budget(model: nn.Module, budget: Budget | str, allocation: str = "uniform", *,
                    method: str | None = None, granularity: str = "unstructured", data: Iterable | None = None,
                    example_inputs: object = None, sensitivity: SensitivityResult | None = None,
                    **options) -> tuple[PruneResult, Allocation]:
    """Prune `model` in place so that it meets `budget`: :func:`allocate`, then
    ``prunekit.prune(..., layer_sparsity=allocation.layer_sparsity)``. Everything is validated
    and allocated before the model changes. ``remove`` defaults to True, as for ``prune``.

    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> result, allocation = prune_to_budget(model, "sparsity=0.5", "global")
    >>> result.sparsity_achieved, allocation.sparsity
    (0.5, 0.5)
    """
    options = {"remove": True, **options}
    allocated = allocate(model, budget, allocation, method=method, granularity=granularity, data=data,
                         example_inputs=example_inputs, sensitivity=sensitivity, **options)
    pruner = Pruner(model, allocated.method, None, granularity=granularity, data=data, example_inputs=example_inputs,
                    layer_sparsity=allocated.layer_sparsity, **options)
    result = pruner.step()
    pruner.release()
    return result, allocated


__all__ = ["ALLOCATIONS", "allocate", "as_budget", "prune_to_budget", "removal_sequence"]
