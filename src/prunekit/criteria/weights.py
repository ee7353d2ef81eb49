"""Criteria that read the weights alone: magnitudes, norms, distances, normalisation scales."""

from __future__ import annotations

import torch

from prunekit.errors import PrunekitError
from prunekit.types import Evidence, Slices


def scatter_to_units(values: torch.Tensor, unit_index: torch.Tensor, num_units: int) -> torch.Tensor:
    """Sum per-slice `values` into their units; slices with index -1 belong to no unit.

    >>> scatter_to_units(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 0, -1]), 2)
    tensor([3., 0.])
    """
    owned = unit_index >= 0
    totals = torch.zeros(num_units, dtype=torch.float64)
    return totals.index_add_(0, unit_index[owned], values[owned].double()).float()


def _weight(evidence: Evidence, method: str) -> torch.Tensor:
    if evidence.weight is None:
        raise PrunekitError(f"method '{method}' scores single weights; use it with granularity 'unstructured'")
    return evidence.weight.detach()


def magnitude(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """|w|: the smallest weights go first.

    >>> magnitude(Evidence((2,), weight=torch.tensor([-3.0, 1.0])), torch.Generator())
    tensor([3., 1.])
    """
    return _weight(evidence, "magnitude").abs()


def normalized(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """|w| / sum |w| over the tensor, so layers of different scale rank fairly in global scope.

    >>> normalized(Evidence((2,), weight=torch.tensor([-3.0, 1.0])), torch.Generator())
    tensor([0.7500, 0.2500])
    """
    absolute = _weight(evidence, "normalized").abs()
    total = absolute.sum()
    return absolute / total if total > 0 else absolute


def _norm(evidence: Evidence, slices: tuple[Slices, ...], power: int) -> torch.Tensor:
    totals = torch.zeros(evidence.num_units)
    for rows, unit_index in slices:
        totals += scatter_to_units(rows.abs().pow(power).sum(dim=1), unit_index, evidence.num_units)
    return totals if power == 1 else totals.sqrt()


def l1(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """Sum of |w| over the unit's incoming weights (its filter / row).

    >>> rows = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    >>> l1(Evidence((2,), incoming=((rows, torch.tensor([0, 1])),)), torch.Generator())
    tensor([3., 1.])
    """
    return _norm(evidence, evidence.incoming, 1)


def l2(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """Euclidean norm of the unit's incoming weights.

    >>> rows = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    >>> l2(Evidence((2,), incoming=((rows, torch.tensor([0, 1])),)), torch.Generator())
    tensor([5., 1.])
    """
    return _norm(evidence, evidence.incoming, 2)


def weight_norm(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """Euclidean norm of all the unit's connections, incoming and outgoing.

    >>> rows, cols = torch.tensor([[3.0, 0.0]]), torch.tensor([[4.0]])
    >>> weight_norm(Evidence((1,), incoming=((rows, torch.tensor([0])),),
    ...                      outgoing=((cols, torch.tensor([0])),)), torch.Generator())
    tensor([5.])
    """
    return _norm(evidence, evidence.incoming + evidence.outgoing, 2)


def fpgm(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """Distance of each unit's filter to the others (FPGM): units near the geometric median are
    the most replaceable and score lowest.

    >>> rows = torch.tensor([[0.0], [1.0], [10.0]])
    >>> fpgm(Evidence((3,), incoming=((rows, torch.tensor([0, 1, 2])),)), torch.Generator())
    tensor([11., 10., 19.])
    """
    totals = torch.zeros(evidence.num_units)
    for rows, unit_index in evidence.incoming:
        distances = torch.cdist(rows.double().unsqueeze(0), rows.double().unsqueeze(0)).squeeze(0)
        totals += scatter_to_units(distances.sum(dim=1), unit_index, evidence.num_units)
    return totals


def bn_scale(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """|gamma| of the normalisation layer that scales the unit (network slimming).

    >>> bn_scale(Evidence((2,), norm_scale=torch.tensor([0.1, 2.0])), torch.Generator())
    tensor([0.1000, 2.0000])
    """
    if evidence.norm_scale is None:
        raise PrunekitError(
            "method 'bn-scale' needs a BatchNorm after each pruned layer; this group has none. "
            "Use 'l1' or 'fpgm' for layers without normalisation"
        )
    return evidence.norm_scale.clone()


def gate(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """The unit's learned L0 gate (its mean before clipping: <= 0 means the gate is shut).

    >>> gate(Evidence((2,), gate=torch.tensor([-0.2, 0.7])), torch.Generator())
    tensor([-0.2000,  0.7000])
    """
    if evidence.gate is None:
        raise PrunekitError("method 'l0' scores learned L0 gates, and this group has none; build the Pruner with "
                            "regularizer=prunekit.regularizers.L0(...) and train before it prunes")
    return evidence.gate.clone()
