"""Calling a model with what the user passed as example inputs (one place for every caller)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from prunekit.errors import PrunekitError

Run = Callable[[nn.Module], object]


def as_call(example_inputs: object) -> Run:
    """A function that calls a model with `example_inputs`: a tensor (or PackedSequence), a
    tuple/list of positional arguments, or a dict of keyword arguments (a tokenizer's
    BatchEncoding too).

    >>> as_call(torch.ones(1, 2))(nn.Linear(2, 1)).shape
    torch.Size([1, 1])
    """
    if isinstance(example_inputs, (torch.Tensor, PackedSequence)):  # PackedSequence is a tuple
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    else:
        raise PrunekitError(
            f"example_inputs must be a tensor, a tuple/list of positional arguments or a dict of "
            f"keyword arguments for model(...); got {type(example_inputs).__name__}"
        )
    return lambda model: model(*args, **kwargs)


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    """Run `model` on `example_inputs` (see :func:`as_call`).

    >>> call_model(nn.Identity(), (torch.ones(1),))
    tensor([1.])
    """
    return as_call(example_inputs)(model)


def _tensors(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def model_outputs(value: object) -> list[torch.Tensor]:
    """Every tensor in a (nested) model output, in order.

    >>> len(model_outputs((torch.ones(1), {"a": [torch.zeros(2)]})))
    2
    """
    return list(_tensors(value))


def batch_size(example_inputs: Any) -> int:
    """The batch size of `example_inputs`: the first dimension of its first tensor.

    >>> batch_size({"input_ids": torch.zeros(3, 7, dtype=torch.long)})
    3
    """
    if isinstance(example_inputs, PackedSequence):
        return int(example_inputs.batch_sizes[0])
    values = example_inputs.values() if isinstance(example_inputs, Mapping) else example_inputs
    values = [values] if isinstance(values, torch.Tensor) else list(values)
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.dim() == 0 or value.shape[0] == 0:
                break
            return int(value.shape[0])
    raise PrunekitError(
        "cannot tell the batch size of example_inputs: expected a tensor (or a tuple/list/dict "
        "whose first tensor is) with a non-empty first dimension, e.g. torch.randn(1, 3, 32, 32); "
        "or pass batch_size= explicitly"
    )


def to_device(value: object, device: torch.device) -> object:
    """`value` with every tensor inside (nested tuples, lists, dicts) moved to `device`.

    >>> to_device({"ids": torch.ones(1)}, torch.device("cpu"))["ids"].device.type
    'cpu'
    """
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (tuple, list)) and not isinstance(value, PackedSequence):
        return type(value)(to_device(item, device) for item in value)
    return value
