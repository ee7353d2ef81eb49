"""Magnitude criteria: how large a weight is."""

from __future__ import annotations

import torch

from prunekit.types import ParamStats


def magnitude(weight: torch.Tensor, stats: ParamStats | None, generator: torch.Generator) -> torch.Tensor:
    """Score each weight by its absolute value.

    >>> magnitude(torch.tensor([-3.0, 1.0]), None, torch.Generator())
    tensor([3., 1.])
    """
    return weight.detach().abs()


def normalized(weight: torch.Tensor, stats: ParamStats | None, generator: torch.Generator) -> torch.Tensor:
    """Score each weight by |w| / sum(|w|) over its tensor, comparable across layers.

    >>> normalized(torch.tensor([-3.0, 1.0]), None, torch.Generator())
    tensor([0.7500, 0.2500])
    """
    absolute = weight.detach().abs()
    total = absolute.sum()
    return absolute / total if total > 0 else absolute
