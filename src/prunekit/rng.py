"""Seeded randomness that leaves the caller's global random number generators as they were."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def cuda_devices_of(model: nn.Module) -> list[int]:
    """Indices of the CUDA devices holding `model`'s parameters or buffers ([] on CPU).

    >>> cuda_devices_of(nn.Linear(2, 2))
    []
    """
    tensors = [*model.parameters(), *model.buffers()]
    return sorted({tensor.device.index for tensor in tensors if tensor.device.type == "cuda"})


@contextmanager
def seeded_rng(seed: int, cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Inside: torch's CPU RNG (and these CUDA devices' RNGs) seeded as ``torch.manual_seed(seed)`` would.

    On exit every one of those RNG states is restored, so the caller's random stream never moves.
    Only the generators forked here are seeded: ``torch.manual_seed`` would also reseed every other
    GPU, which nothing would then restore.

    >>> with seeded_rng(0):
    ...     inside = torch.rand(1)
    >>> torch.equal(inside, torch.rand(1, generator=torch.Generator().manual_seed(0)))
    True
    """
    with torch.random.fork_rng(devices=list(cuda_devices)):
        torch.random.default_generator.manual_seed(int(seed))
        for index in cuda_devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(seed))
        yield
