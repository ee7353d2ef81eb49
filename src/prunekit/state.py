"""What prunekit promises to leave as it found it: every module's train/eval flag and torch's
global random number generators. One place for both; every other module uses these."""

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


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every module's own training flag on exit, also on error (``model.train(flag)``
    would flatten a BatchNorm the user put in eval mode inside a model in train mode).

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2).eval())
    >>> with preserved_modes(model):
    ...     _ = model.train()
    >>> [m.training for m in model.modules()]
    [True, True, False]
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore torch's global RNG state on exit (CUDA generators too once CUDA is initialised).

    >>> state = torch.get_rng_state()
    >>> with preserved_rng():
    ...     _ = torch.rand(3)
    >>> torch.equal(state, torch.get_rng_state())
    True
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Both: every module's own mode and torch's global RNG state are restored on exit."""
    with preserved_rng(), preserved_modes(model):
        yield
