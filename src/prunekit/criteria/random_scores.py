"""Random scores: the baseline every comparison must include."""

from __future__ import annotations

import torch

from prunekit.types import ParamStats


def random(weight: torch.Tensor, stats: ParamStats | None, generator: torch.Generator) -> torch.Tensor:
    """Score each weight uniformly at random (reproducible through `generator`).

    >>> random(torch.zeros(3), None, torch.Generator().manual_seed(0)).shape
    torch.Size([3])
    """
    return torch.rand(weight.shape, generator=generator)
