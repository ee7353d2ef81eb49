"""Random scores: the baseline every comparison must include."""

from __future__ import annotations

import torch

from prunekit.types import Evidence


def random(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """Uniform random scores, reproducible through `generator`, for any granularity.

    >>> random(Evidence((3,)), torch.Generator().manual_seed(0)).shape
    torch.Size([3])
    """
    return torch.rand(evidence.shape, generator=generator)
