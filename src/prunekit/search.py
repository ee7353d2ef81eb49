"""The seed's loop "prune, evaluate, fine-tune, repeat until performance is unacceptable":
``search_sparsity`` keeps raising the sparsity while the validation accuracy stays within a
tolerance of the dense model, and hands back the model at the last sparsity that did.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.pruner import Pruner
from prunekit.types import PruneResult


@dataclass
class SparsitySearch:
    """What the search found: the highest sparsity within the tolerance and the model at it
    (masks attached; structured units masked, ``prunekit.finalize`` removes them), every level
    tried (``{"sparsity", "accuracy", "drop_pt", "accepted"}``) and the dense accuracy."""

    sparsity: float
    model: nn.Module
    accuracy: float
    accuracy_dense: float
    history: list[dict] = field(default_factory=list)
    result: PruneResult | None = None  # the accepted level's pruning


def sparsity_levels(start: float, rate: float, max_sparsity: float) -> list[float]:
    """`start`, then each level removing `rate` of what the previous one kept, up to `max_sparsity`.

    >>> [round(level, 3) for level in sparsity_levels(0.5, 0.5, 0.9)]
    [0.5, 0.75, 0.875, 0.9]
    """
    levels, level = [], start
    while level < max_sparsity - 1e-9:
        levels.append(level)
        level = 1.0 - (1.0 - level) * (1.0 - rate)
    return [*levels, max_sparsity]


def _check(tolerance: float, start: float, rate: float, max_sparsity: float) -> None:
    if not (isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and tolerance >= 0):
        raise PrunekitError(f"tolerance is the accuracy drop allowed, in points (0.5 = half a point): a number >= 0; "
                            f"got {tolerance!r}")
    for name, value in (("start", start), ("max_sparsity", max_sparsity)):
        if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
            raise PrunekitError(f"{name} must be a sparsity in (0, 1); got {value!r}")
    if not (isinstance(rate, (int, float)) and 0.0 < rate < 1.0):
        raise PrunekitError(f"rate is the share of the remaining weights each level removes: in (0, 1); got {rate!r}")
    if max_sparsity < start:
        raise PrunekitError(f"max_sparsity ({max_sparsity}) is below start ({start})")


def search_sparsity(model: nn.Module, evaluate: Callable[[nn.Module], float], *, method: str | None = None,
                    granularity: str = "unstructured", scope: str | None = None, tolerance: float = 0.5,
                    fine_tune: Callable[[nn.Module, Pruner], None] | None = None, start: float = 0.5,
                    rate: float = 0.3, max_sparsity: float = 0.995, data: Iterable | None = None,
                    example_inputs: object = None, **options) -> SparsitySearch:
    """Prune a copy of `model` level by level (``sparsity_levels(start, rate, max_sparsity)``),
    calling ``fine_tune(copy, pruner)`` after each pruning and ``evaluate(copy)`` (validation
    accuracy, a fraction) after that; stop at the first level whose drop from the dense
    accuracy exceeds `tolerance` points. The user's `model` is not touched. `method`,
    `granularity`, `scope`, `data`, `example_inputs` and `options` go to each level's
    :class:`~prunekit.Pruner`.

    >>> import torch
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> found = search_sparsity(model, lambda m: 1.0, tolerance=0.5, start=0.5, rate=0.5, max_sparsity=0.9)
    >>> found.sparsity, [round(level["sparsity"], 3) for level in found.history]
    (0.9, [0.5, 0.75, 0.875, 0.9])
    """
    _check(tolerance, start, rate, max_sparsity)
    dense = float(evaluate(model))
    candidate = copy.deepcopy(model)
    history: list[dict] = []
    best: tuple[float, nn.Module, float, PruneResult] | None = None
    for level in sparsity_levels(start, rate, max_sparsity):
        pruner = Pruner(candidate, method, level, granularity=granularity, scope=scope, data=data,
                        example_inputs=example_inputs, **options)
        result = pruner.step()
        if fine_tune is not None:
            fine_tune(candidate, pruner)
        pruner.release()
        accuracy = float(evaluate(candidate))
        drop = 100.0 * (dense - accuracy)
        accepted = drop <= tolerance + 1e-9  # 2.0 points from fractions may come out as 2.0000000000000018
        history.append({"sparsity": level, "accuracy": accuracy, "drop_pt": drop, "accepted": accepted})
        if not accepted:
            break
        best = (level, copy.deepcopy(candidate), accuracy, result)
    if best is None:
        first = history[0]
        raise PrunekitError(
            f"no sparsity stays within {tolerance} points of the dense accuracy ({100 * dense:.2f}%): the first "
            f"level, {first['sparsity']:.1%}, already drops {first['drop_pt']:.2f} points; allow a larger "
            "tolerance, start lower (start=...), or fine-tune longer after each level"
        )
    return SparsitySearch(best[0], best[1], best[2], dense, history, best[3])
