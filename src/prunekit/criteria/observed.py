"""Criteria that read what was observed on data: the units' signal, its gradient, removal loss.

A unit's signal is its own value (the weight for unstructured pruning, the activation of a
neuron / channel / hidden unit, the contribution of a head); see ``prunekit.types.Signal``.
"""

from __future__ import annotations

import torch

from prunekit.criteria.weights import scatter_to_units
from prunekit.errors import PrunekitError
from prunekit.types import Evidence, Signal


def _signal(evidence: Evidence, method: str, field_name: str) -> torch.Tensor:
    signal = evidence.signal or Signal()
    value = getattr(signal, field_name)
    if value is None:
        raise PrunekitError(
            f"method '{method}' scores by what it observes on data; pass data=<batches of "
            "(inputs, targets)> (and loss_fn= if the model is not a classifier)"
        )
    return value.clone()


def gradient(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """Mean |dL/dx| over data: units the loss is least sensitive to go first.

    >>> gradient(Evidence((2,), signal=Signal(grad_abs=torch.tensor([0.5, 2.0]))), torch.Generator())
    tensor([0.5000, 2.0000])
    """
    return _signal(evidence, "gradient", "grad_abs")


def taylor(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """Mean |x * dL/dx| (first-order Taylor estimate of the loss change when x is removed).

    >>> taylor(Evidence((2,), signal=Signal(taylor=torch.tensor([0.2, 0.7]))), torch.Generator())
    tensor([0.2000, 0.7000])
    """
    return _signal(evidence, "taylor", "taylor")


def activation_mean(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """Mean |activation| of the unit over data.

    >>> activation_mean(Evidence((2,), signal=Signal(mean_abs=torch.tensor([0.5, 0.1]))), torch.Generator())
    tensor([0.5000, 0.1000])
    """
    return _signal(evidence, "activation-mean", "mean_abs")


def apoz(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """1 - APoZ (average percentage of zeros after ReLU): mostly-silent units score lowest.

    >>> apoz(Evidence((2,), signal=Signal(zero_fraction=torch.tensor([0.9, 0.2]))), torch.Generator())
    tensor([0.1000, 0.8000])
    """
    return 1.0 - _signal(evidence, "apoz", "zero_fraction")


def removal_cost(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """Measured loss increase when the unit (a whole layer) alone is removed: cheapest go first.

    >>> removal_cost(Evidence((2,), removal_cost=torch.tensor([0.02, 1.5])), torch.Generator())
    tensor([0.0200, 1.5000])
    """
    if evidence.removal_cost is None:
        raise PrunekitError("method 'removal-cost' needs the measured cost of removing each layer; pass data=")
    return evidence.removal_cost.clone()


def wanda(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """|w| * ‖X_j‖₂ (Wanda, Sun et al. 2023): a weight matters as much as it is large times the
    norm over the calibration data of the input feature j it multiplies. For a unit (a neuron or
    head whose output a following layer reads; ``prunekit.reconstruct``), the structured form:
    ‖the unit's output‖₂ over the data × ‖the weights that read it‖₂ (`outgoing`).

    >>> evidence = Evidence((1, 2), weight=torch.tensor([[-2.0, 3.0]]),
    ...                     signal=Signal(input_norm=torch.tensor([[4.0, 1.0]])))
    >>> wanda(evidence, torch.Generator())
    tensor([[8., 3.]])
    >>> columns = (torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([0, 1]))
    >>> wanda(Evidence((2,), outgoing=(columns,), signal=Signal(input_norm=torch.tensor([1.0, 2.0]))),
    ...       torch.Generator())
    tensor([5., 2.])
    """
    norms = _signal(evidence, "wanda", "input_norm")
    if evidence.weight is not None:
        return evidence.weight.detach().abs() * norms
    if not evidence.outgoing:
        raise PrunekitError("method 'wanda' scores a unit by the weights that read it; this granularity shows none")
    totals = torch.zeros(evidence.num_units)
    for columns, unit_index in evidence.outgoing:
        totals += scatter_to_units(columns.detach().float().pow(2).sum(dim=1), unit_index, evidence.num_units)
    return norms.float() * totals.sqrt()
