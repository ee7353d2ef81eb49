"""The one loop over data batches every statistics collector uses, and the state it protects.

prunekit leaves what it finds exactly as it was: every module's own train/eval flag (a
BatchNorm the user put in eval mode stays in eval mode inside a model in train mode) and the
global random number generators (iterating a shuffling DataLoader draws from torch's global RNG).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from prunekit.errors import PrunekitError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore every module's own training flag and torch's global RNG state on exit (also on
    error); CUDA generators too once CUDA is initialised.

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2).eval())
    >>> state = torch.get_rng_state()
    >>> with preserved_state(model):
    ...     _ = model.eval(), torch.rand(3)
    >>> [m.training for m in model.modules()], torch.equal(state, torch.get_rng_state())
    ([True, True, False], True)
    """
    modes = [(module, module.training) for module in model.modules()]
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training


def for_each_batch(
    model: nn.Module, data: Iterable, num_batches: int, step: Callable[[object, object], None]
) -> int:
    """Call ``step(inputs, targets)`` on up to `num_batches` batches of `data` with `model` in eval
    mode (so BatchNorm running statistics do not move); return how many batches were seen.

    Every module's own mode and the global RNG state are restored afterwards, also on error. An
    empty `data` is an error, since every statistic would be a division by zero.

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2).eval())
    >>> modes = []
    >>> for_each_batch(model, [(torch.zeros(1, 2), None)] * 5, 3, lambda x, y: modes.append(model.training))
    3
    >>> modes, [m.training for m in model.modules()]
    ([False, False, False], [True, True, False])
    """
    batches = 0
    with preserved_state(model):
        model.eval()
        for inputs, targets in itertools.islice(data, num_batches):
            step(inputs, targets)
            batches += 1
    if batches == 0:
        raise PrunekitError("data yielded no batches; pass a loader of (inputs, targets) batches")
    return batches
