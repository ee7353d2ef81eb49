"""One handler per layer type (see ``base.py``); ``handler_for`` picks a module's handler.

>>> from torch import nn
>>> type(handler_for(nn.Conv2d(1, 2, 3))).__name__, handler_for(nn.ReLU()) is None
('ConvHandler', True)
"""

from __future__ import annotations

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.layers.attention import MultiheadAttentionHandler
from prunekit.layers.base import LayerHandler
from prunekit.layers.conv import ConvHandler, ConvTransposeHandler
from prunekit.layers.conv1d import Conv1DHandler
from prunekit.layers.linear import LinearHandler
from prunekit.layers.norm import (
    BatchNormHandler,
    ChannelMixingNormHandler,
    FreeLayerHandler,
    GroupNormHandler,
    InstanceNormHandler,
    PReLUHandler,
)
from prunekit.layers.rnn import RnnHandler

#: Checked in order; the first handler that matches a module describes it.
HANDLERS: tuple[LayerHandler, ...] = (
    MultiheadAttentionHandler(),
    LinearHandler(),
    Conv1DHandler(),
    ConvHandler(),
    ConvTransposeHandler(),
    RnnHandler(),
    BatchNormHandler(),
    InstanceNormHandler(),
    ChannelMixingNormHandler(),
    GroupNormHandler(),
    PReLUHandler(),
    FreeLayerHandler(),
)


def handler_for(module: nn.Module) -> LayerHandler | None:
    """The handler that describes `module`, or None for layers prunekit knows nothing about."""
    for handler in HANDLERS:
        if handler.matches(module):
            return handler
    return None


def require_input_width(module: nn.Module, name: str) -> int:
    """How many input features `module` (called `name` in messages) reads per row; an error for
    layers whose inputs are not rows of features (calibration statistics such as ‖X_j‖ and
    XᵀX need them).

    >>> require_input_width(nn.Linear(3, 2), "fc")
    3
    """
    handler = handler_for(module)
    width = handler.input_width(module) if handler is not None else None
    if width is None:
        raise PrunekitError(
            f"'{name}' is a {type(module).__name__}, whose inputs prunekit cannot read as rows of input "
            "features (it can for Linear and Conv1D layers); leave it out with exclude=[...]")
    return width


def unit_granularity(module: nn.Module) -> str | None:
    """The structured granularity whose units are `module`'s outputs ("neuron", "channel",
    "lstm-unit"), or None.

    >>> unit_granularity(nn.Linear(2, 2)), unit_granularity(nn.BatchNorm1d(2))
    ('neuron', None)
    """
    handler = handler_for(module)
    return handler.unit_granularity if handler is not None else None


def prunable_weights(module: nn.Module) -> list[str]:
    """Names of `module`'s own weights that unstructured pruning may zero.

    >>> prunable_weights(nn.Linear(2, 2)), prunable_weights(nn.Embedding(4, 2))
    (['weight'], [])
    """
    handler = handler_for(module)
    return handler.prunable_weights(module) if handler is not None else []


__all__ = ["HANDLERS", "LayerHandler", "handler_for", "prunable_weights", "unit_granularity"]
