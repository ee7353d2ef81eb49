"""Registry of pruning criteria: pure functions from tensors (and observed stats) to scores.

A higher score means "more important, keep". Adding a criterion is one function plus one
``register`` line; criteria never look at layer types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunekit.errors import unknown_name
from prunekit.types import ParamStats

WeightScoreFn = Callable[[torch.Tensor, ParamStats | None, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """A named scoring rule. ``needs`` names the data it requires (``None``, ``"gradients"``)."""

    name: str
    score: WeightScoreFn
    description: str
    needs: str | None = None


def _build_registry() -> dict[str, Criterion]:
    from prunekit.criteria import gradient, magnitude, random_scores

    criteria = [
        Criterion("magnitude", magnitude.magnitude, "|w|: smallest absolute weights go first"),
        Criterion(
            "normalized",
            magnitude.normalized,
            "|w| / sum|w| within the layer, so layers of different scale rank fairly in global scope",
        ),
        Criterion(
            "gradient",
            gradient.gradient,
            "|dL/dw| averaged over data batches: weights the loss is least sensitive to go first",
            needs="gradients",
        ),
        Criterion(
            "taylor",
            gradient.taylor,
            "|w * dL/dw| (first-order Taylor estimate of the loss change when w is removed)",
            needs="gradients",
        ),
        Criterion("random", random_scores.random, "uniform random scores: the baseline to beat"),
    ]
    return {criterion.name: criterion for criterion in criteria}


WEIGHT_CRITERIA: dict[str, Criterion] = _build_registry()


def get_weight_criterion(name: str) -> Criterion:
    """Look up an unstructured (per-weight) criterion by name.

    >>> get_weight_criterion("magnitude").needs is None
    True
    """
    try:
        return WEIGHT_CRITERIA[name]
    except KeyError:
        raise unknown_name("unstructured method", name, WEIGHT_CRITERIA) from None
