"""Gradient criteria: how sensitive the loss is to a weight (needs data)."""

from __future__ import annotations

import torch

from prunekit.types import ParamStats


def _grad_abs_mean(stats: ParamStats | None) -> torch.Tensor:
    if stats is None or stats.grad_abs_mean is None:
        raise ValueError("gradient criteria need gradient statistics; pass data to collect them")
    return stats.grad_abs_mean


def gradient(weight: torch.Tensor, stats: ParamStats | None, generator: torch.Generator) -> torch.Tensor:
    """Score each weight by the mean over batches of |dL/dw|.

    >>> gradient(torch.ones(2), ParamStats(grad_abs_mean=torch.tensor([0.5, 2.0])), torch.Generator())
    tensor([0.5000, 2.0000])
    """
    return _grad_abs_mean(stats).clone()


def taylor(weight: torch.Tensor, stats: ParamStats | None, generator: torch.Generator) -> torch.Tensor:
    """Score each weight by |w| times the mean over batches of |dL/dw| (= mean |w * dL/dw|).

    >>> taylor(torch.tensor([-2.0, 1.0]), ParamStats(grad_abs_mean=torch.tensor([0.5, 2.0])), torch.Generator())
    tensor([1., 2.])
    """
    return weight.detach().abs() * _grad_abs_mean(stats)
