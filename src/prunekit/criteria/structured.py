"""Unit criteria: pure functions from a unit's evidence (weights, observed activations) to scores.

A unit is whatever a granularity removes together (a neuron, a filter, an LSTM hidden unit, a head).
The granularity code gathers the evidence; criteria never look at layer types. Higher = keep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunekit.errors import PrunekitError, unknown_name

#: (slices, unit_index): row i of `slices` is one slice of a weight; unit_index[i] its unit or -1.
Slices = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ActivationStats:
    """Per-unit statistics of the activations a unit produces, averaged over data."""

    mean_abs: torch.Tensor
    zero_fraction: torch.Tensor
    grad_abs: torch.Tensor | None = None
    taylor: torch.Tensor | None = None


@dataclass(frozen=True)
class UnitEvidence:
    """Everything a unit criterion may use for one group of `num_units` units."""

    num_units: int
    incoming: tuple[Slices, ...] = ()
    outgoing: tuple[Slices, ...] = ()
    norm_scale: torch.Tensor | None = None
    activations: ActivationStats | None = None
    removal_cost: torch.Tensor | None = None


UnitScoreFn = Callable[[UnitEvidence, torch.Generator], torch.Tensor]


def scatter_to_units(values: torch.Tensor, unit_index: torch.Tensor, num_units: int) -> torch.Tensor:
    """Sum per-slice `values` into their units; slices with index -1 belong to no unit.

    >>> scatter_to_units(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 0, -1]), 2)
    tensor([3., 0.])
    """
    owned = unit_index >= 0
    totals = torch.zeros(num_units, dtype=torch.float64)
    return totals.index_add_(0, unit_index[owned], values[owned].double()).float()


def _norm(evidence: UnitEvidence, slices: tuple[Slices, ...], power: int) -> torch.Tensor:
    totals = torch.zeros(evidence.num_units)
    for rows, unit_index in slices:
        totals += scatter_to_units(rows.abs().pow(power).sum(dim=1), unit_index, evidence.num_units)
    return totals if power == 1 else totals.sqrt()


def l1(evidence: UnitEvidence, generator: torch.Generator) -> torch.Tensor:
    """Sum of |w| over the unit's incoming weights (its filter / row).

    >>> rows = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    >>> l1(UnitEvidence(2, incoming=((rows, torch.tensor([0, 1])),)), torch.Generator())
    tensor([3., 1.])
    """
    return _norm(evidence, evidence.incoming, 1)


def l2(evidence: UnitEvidence, generator: torch.Generator) -> torch.Tensor:
    """Euclidean norm of the unit's incoming weights.

    >>> rows = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    >>> l2(UnitEvidence(2, incoming=((rows, torch.tensor([0, 1])),)), torch.Generator())
    tensor([5., 1.])
    """
    return _norm(evidence, evidence.incoming, 2)


def weight_norm(evidence: UnitEvidence, generator: torch.Generator) -> torch.Tensor:
    """Euclidean norm of all the unit's connections, incoming and outgoing.

    >>> rows, cols = torch.tensor([[3.0, 0.0]]), torch.tensor([[4.0]])
    >>> weight_norm(UnitEvidence(1, incoming=((rows, torch.tensor([0])),),
    ...                          outgoing=((cols, torch.tensor([0])),)), torch.Generator())
    tensor([5.])
    """
    return _norm(evidence, evidence.incoming + evidence.outgoing, 2)


def fpgm(evidence: UnitEvidence, generator: torch.Generator) -> torch.Tensor:
    """Distance of each unit's filter to the others (FPGM): units near the geometric median are
    the most replaceable and score lowest.

    >>> rows = torch.tensor([[0.0], [1.0], [10.0]])
    >>> fpgm(UnitEvidence(3, incoming=((rows, torch.tensor([0, 1, 2])),)), torch.Generator())
    tensor([11., 10., 19.])
    """
    totals = torch.zeros(evidence.num_units)
    for rows, unit_index in evidence.incoming:
        distances = torch.cdist(rows.double().unsqueeze(0), rows.double().unsqueeze(0)).squeeze(0)
        totals += scatter_to_units(distances.sum(dim=1), unit_index, evidence.num_units)
    return totals


def bn_scale(evidence: UnitEvidence, generator: torch.Generator) -> torch.Tensor:
    """|gamma| of the normalisation layer that scales the unit (network slimming).

    >>> bn_scale(UnitEvidence(2, norm_scale=torch.tensor([0.1, 2.0])), torch.Generator())
    tensor([0.1000, 2.0000])
    """
    if evidence.norm_scale is None:
        raise PrunekitError(
            "method 'bn-scale' needs a BatchNorm after each pruned layer; this group has none. "
            "Use 'l1' or 'fpgm' for layers without normalisation"
        )
    return evidence.norm_scale.clone()


def _activations(evidence: UnitEvidence, method: str) -> ActivationStats:
    if evidence.activations is None:
        raise PrunekitError(f"method '{method}' needs activation statistics; pass data=")
    return evidence.activations


def activation_mean(evidence: UnitEvidence, generator: torch.Generator) -> torch.Tensor:
    """Mean |activation| of the unit over data.

    >>> stats = ActivationStats(mean_abs=torch.tensor([0.5, 0.1]), zero_fraction=torch.zeros(2))
    >>> activation_mean(UnitEvidence(2, activations=stats), torch.Generator())
    tensor([0.5000, 0.1000])
    """
    return _activations(evidence, "activation-mean").mean_abs.clone()


def apoz(evidence: UnitEvidence, generator: torch.Generator) -> torch.Tensor:
    """1 - APoZ (average percentage of zeros after ReLU): mostly-silent units score lowest.

    >>> stats = ActivationStats(mean_abs=torch.zeros(2), zero_fraction=torch.tensor([0.9, 0.2]))
    >>> apoz(UnitEvidence(2, activations=stats), torch.Generator())
    tensor([0.1000, 0.8000])
    """
    return 1.0 - _activations(evidence, "apoz").zero_fraction


def _gradient_stat(evidence: UnitEvidence, method: str, field_name: str) -> torch.Tensor:
    value = getattr(_activations(evidence, method), field_name)
    if value is None:
        raise PrunekitError(f"method '{method}' needs activation gradients; pass data= (and loss_fn= if not classification)")
    return value.clone()


def activation_gradient(evidence: UnitEvidence, generator: torch.Generator) -> torch.Tensor:
    """Mean |dL/da| over data: how strongly the loss reacts to the unit's activation.

    >>> stats = ActivationStats(torch.zeros(2), torch.zeros(2), grad_abs=torch.tensor([3.0, 1.0]))
    >>> activation_gradient(UnitEvidence(2, activations=stats), torch.Generator())
    tensor([3., 1.])
    """
    return _gradient_stat(evidence, "activation-gradient", "grad_abs")


def taylor(evidence: UnitEvidence, generator: torch.Generator) -> torch.Tensor:
    """Mean |a * dL/da| (first-order Taylor estimate of the loss change when the unit is removed).

    >>> stats = ActivationStats(torch.zeros(2), torch.zeros(2), taylor=torch.tensor([0.2, 0.7]))
    >>> taylor(UnitEvidence(2, activations=stats), torch.Generator())
    tensor([0.2000, 0.7000])
    """
    return _gradient_stat(evidence, "taylor", "taylor")


def removal_cost(evidence: UnitEvidence, generator: torch.Generator) -> torch.Tensor:
    """Measured loss increase when the unit (a whole layer) alone is removed: cheapest go first.

    >>> removal_cost(UnitEvidence(2, removal_cost=torch.tensor([0.02, 1.5])), torch.Generator())
    tensor([0.0200, 1.5000])
    """
    if evidence.removal_cost is None:
        raise PrunekitError("method 'removal-cost' needs the measured cost of removing each layer; pass data=")
    return evidence.removal_cost.clone()


def random(evidence: UnitEvidence, generator: torch.Generator) -> torch.Tensor:
    """Uniform random scores: the baseline.

    >>> random(UnitEvidence(3), torch.Generator().manual_seed(0)).shape
    torch.Size([3])
    """
    return torch.rand(evidence.num_units, generator=generator)


@dataclass(frozen=True)
class UnitCriterion:
    """A named unit criterion; ``needs`` is None, "activations" or "gradients"."""

    name: str
    score: UnitScoreFn
    description: str
    granularities: tuple[str, ...]
    needs: str | None = None


_ALL = ("neuron", "channel", "lstm-unit", "head")
#: How a criterion's ``needs`` is met: "activations" / "gradients" of units, or "removal-loss":
#: the validation loss with each layer removed in turn.
UNIT_CRITERIA: dict[str, UnitCriterion] = {
    criterion.name: criterion
    for criterion in [
        UnitCriterion("l1", l1, "L1 norm of the unit's incoming weights (filter / row)", _ALL),
        UnitCriterion("l2", l2, "L2 norm of the unit's incoming weights", _ALL),
        UnitCriterion("weight-norm", weight_norm, "L2 norm of all the unit's incoming and outgoing connections", _ALL),
        UnitCriterion("fpgm", fpgm, "distance to the other filters (geometric median: most replaceable first)",
                      ("channel", "neuron")),
        UnitCriterion("bn-scale", bn_scale, "|gamma| of the following BatchNorm (network slimming)", ("channel",)),
        UnitCriterion("activation-mean", activation_mean, "mean |activation| over data (heads: mean L2 norm "
                      "of the head's contribution to the attention output)", _ALL, needs="activations"),
        UnitCriterion("apoz", apoz, "average percentage of zeros after ReLU (most silent first)",
                      ("neuron", "channel"), needs="activations"),
        UnitCriterion("activation-gradient", activation_gradient, "mean |dL/da| over data",
                      ("neuron", "channel", "lstm-unit"), needs="gradients"),
        UnitCriterion("taylor", taylor, "mean |a * dL/da| (first-order Taylor)",
                      ("neuron", "channel", "lstm-unit"), needs="gradients"),
        UnitCriterion("removal-cost", removal_cost, "loss increase on data when the layer alone is removed",
                      ("layer",), needs="removal-loss"),
        UnitCriterion("random", random, "uniform random scores: the baseline to beat", (*_ALL, "layer")),
    ]
}


def get_unit_criterion(name: str, granularity: str) -> UnitCriterion:
    """Look up a unit criterion that supports `granularity`.

    >>> get_unit_criterion("l1", "channel").needs is None
    True
    """
    usable = {key: c for key, c in UNIT_CRITERIA.items() if granularity in c.granularities}
    if name not in usable:
        raise unknown_name(f"{granularity} method", name, usable)
    return usable[name]
