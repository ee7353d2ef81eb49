"""The one loop over data batches every statistics collector uses.

It leaves what it finds exactly as it was (``prunekit.state``): every module's own train/eval
flag (a BatchNorm the user put in eval mode stays in eval mode inside a model in train mode) and
the global random number generators (iterating a shuffling DataLoader draws from torch's RNG).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from prunekit.errors import PrunekitError
from prunekit.inputs import to_device
from prunekit.state import preserved_state
from prunekit.tokens import check_token_ids

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loss_or_default(loss_fn: LossFn | None) -> LossFn:
    """`loss_fn`, or cross-entropy (what data-driven criteria differentiate by default).

    >>> loss_or_default(None) is F.cross_entropy
    True
    """
    return F.cross_entropy if loss_fn is None else loss_fn


@contextmanager
def module_hooks(model: nn.Module, hooks: Mapping[str, Callable], pre: bool = False) -> Iterator[None]:
    """``hooks[name]`` registered on the submodule `name` of `model` while inside (a forward hook,
    or a forward pre-hook with `pre`); all removed on exit, also on error.

    >>> model, seen = nn.Sequential(nn.Linear(3, 2)), []
    >>> with module_hooks(model, {"0": lambda module, args, output: seen.append(output.shape)}):
    ...     _ = model(torch.ones(1, 3))
    >>> _ = model(torch.ones(1, 3))
    >>> seen
    [torch.Size([1, 2])]
    """
    handles = []
    try:
        for name, hook in hooks.items():
            module = model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def split_batch(batch: object) -> tuple[object, object]:
    """``(inputs, targets)`` of one batch: a pair as it is, or a dict of keyword inputs (a
    tokenizer's output) with no targets. Anything else is an error saying what a batch must be.

    >>> split_batch({"input_ids": torch.ones(1, 3, dtype=torch.long)})[1] is None
    True
    """
    if isinstance(batch, Mapping):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise PrunekitError(
        f"each batch of data must be an (inputs, targets) pair or a dict of keyword inputs for model(**batch) "
        f"(e.g. a tokenizer's output); got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def for_each_batch(
    model: nn.Module, data: Iterable, num_batches: int, step: Callable[[object, object], None]
) -> int:
    """Call ``step(inputs, targets)`` on up to `num_batches` batches of `data` with `model` in eval
    mode (so BatchNorm running statistics do not move), the batch moved to the model's device;
    return how many batches were seen.

    Every module's own mode and the global RNG state are restored afterwards, also on error. An
    empty `data` is an error, since every statistic would be a division by zero, and so is a
    batch with token ids the model has no embedding for (``prunekit.tokens.check_token_ids``:
    a tokenizer that does not match the model), refused before the model runs on it.

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2).eval())
    >>> modes = []
    >>> for_each_batch(model, [(torch.zeros(1, 2), None)] * 5, 3, lambda x, y: modes.append(model.training))
    3
    >>> modes, [m.training for m in model.modules()]
    ([False, False, False], [True, True, False])
    """
    batches = 0
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with preserved_state(model):
        model.eval()
        for batch in itertools.islice(data, num_batches):
            inputs, targets = split_batch(batch)
            check_token_ids(model, inputs, f"calibration batch {batches} (counting from 0)")
            step(to_device(inputs, device), to_device(targets, device))
            batches += 1
    if batches == 0:
        raise PrunekitError("data yielded no batches; pass a loader of (inputs, targets) batches")
    return batches
