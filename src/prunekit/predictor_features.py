"""Per-weight features for the learned mask predictor (``prunekit.predictor``).

Each prunable weight becomes one row of numbers that mean the same in every layer and every
model, so a predictor trained on one network can read another:

    feature            what it is
    log_w              log |w|                                  (floored at 1e-3 x the layer's mean)
    z_log_w            log |w| standardised within its layer (z-score over the layer's live weights)
    log_grad           log mean |dL/dw| over data batches
    z_log_grad         the same, standardised within the layer
    log_taylor         log |w| x mean |dL/dw|
    z_log_taylor       the same, standardised within the layer
    rank_w             percentile of |w| within the layer (0 smallest, 1 largest)
    z_log_out_unit     log mean |w| of the weight's output unit (its row / filter), z-scored over units
    z_log_in_unit      log mean |w| of its input unit (its column / input channel), z-scored over
                       units: a dead input pixel or neuron shows here
    layer_share        the layer's share of all targeted weights
    layer_depth        the layer's position among the targeted layers (0 first, 1 last)
    log_fan_in         log of the inputs each output sums (in_features, or in_channels x kernel)
    kernel_offset      Conv2d: distance of the weight from the kernel's centre (0 centre, 1 corner)
    is_conv            1 for a Conv2d weight, 0 for a Linear one

Weights already pruned (zero) are left out of the layer statistics. Only Linear and Conv2d
weights have features (``FEATURE_KINDS``); ``layer_kind`` names every other prunable layer so an
error can say which one is unsupported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.layers import handler_for
from prunekit.layers.conv import ConvHandler
from prunekit.layers.linear import LinearHandler
from prunekit.masking import split_name

FEATURE_NAMES: tuple[str, ...] = (
    "log_w", "z_log_w", "log_grad", "z_log_grad", "log_taylor", "z_log_taylor", "rank_w",
    "z_log_out_unit", "z_log_in_unit", "layer_share", "layer_depth", "log_fan_in", "kernel_offset", "is_conv",
)

#: the layer kinds features exist for
FEATURE_KINDS: tuple[str, ...] = ("linear", "conv2d")

#: log of zero is floored at this share of the layer's mean, so dead weights stay finite
_FLOOR_SHARE = 1e-3


@dataclass(frozen=True)
class LayerInput:
    """What the features of one weight tensor are made of: its name, kind (``layer_kind``), the
    weight as the forward pass sees it, and the mean |dL/dw| observed on data (same shape)."""

    name: str
    kind: str
    weight: torch.Tensor
    grad_abs: torch.Tensor


def layer_kind(model: nn.Module, param_name: str) -> str:
    """The kind of layer that owns `param_name`: ``"linear"``, ``"conv1d"``/``"conv2d"``/``"conv3d"``,
    or the module's class name for every other layer (``"LSTM"``, ``"MultiheadAttention"``, ...).

    >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2), nn.LSTM(2, 2))
    >>> [layer_kind(model, name) for name in ("0.weight", "2.weight", "3.weight_ih_l0")]
    ['conv2d', 'linear', 'LSTM']
    """
    module_name, param = split_name(param_name)
    module = model.get_submodule(module_name)
    handler = handler_for(module)
    if isinstance(handler, LinearHandler):
        return "linear"
    if isinstance(handler, ConvHandler) and param == "weight":
        return f"conv{module.weight.dim() - 2}d"
    return type(module).__name__


def _log(values: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    mean = float(values[alive].mean()) if alive.any() else 0.0
    floor = _FLOOR_SHARE * mean if mean > 0 else 1e-12
    return values.clamp_min(floor).log()


def _zscore(values: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    live = values[alive]
    if live.numel() == 0:
        return torch.zeros_like(values)
    spread = float(live.std(unbiased=False))
    return (values - live.mean()) / (spread if spread > 0 else 1.0)


def _rank(magnitude: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Percentile of each live entry among the live entries (0 smallest, 1 largest); dead: 0."""
    flat, live = magnitude.reshape(-1), alive.reshape(-1)
    ranks = torch.zeros_like(flat)
    positions = live.nonzero().squeeze(1)
    order = positions[flat[positions].argsort(stable=True)]
    ranks[order] = torch.arange(len(order), dtype=flat.dtype) / max(len(order) - 1, 1)
    return ranks.reshape(magnitude.shape)


def _unit_feature(magnitude: torch.Tensor, dim: int) -> torch.Tensor:
    """log mean |w| of each unit along `dim` (0: output units, 1: input units), z-scored over the
    units with any live weight, broadcast back to the weight's shape."""
    moved = magnitude.movedim(dim, 0)
    per_unit = moved.reshape(moved.shape[0], -1).mean(dim=1)
    alive = per_unit > 0
    feature = _zscore(_log(per_unit, alive), alive)
    shape = [1] * magnitude.dim()
    shape[dim] = -1
    return feature.reshape(shape).expand(magnitude.shape)


def _kernel_offset(shape: tuple[int, ...]) -> torch.Tensor:
    """Distance of each kernel position from the kernel's centre, 0 at the centre and 1 at a corner."""
    if len(shape) != 4:
        return torch.zeros(shape, dtype=torch.float64)
    axes = []
    for size in shape[2:]:
        centre = (size - 1) / 2
        axes.append((torch.arange(size, dtype=torch.float64) - centre) / (centre if centre > 0 else 1.0))
    rows, cols = torch.meshgrid(*axes, indexing="ij")
    return ((rows ** 2 + cols ** 2) / 2).sqrt().expand(shape)


def _one_layer(layer: LayerInput, share: float, depth: float) -> torch.Tensor:
    magnitude = layer.weight.detach().abs().double().cpu()
    grad = layer.grad_abs.detach().abs().double().cpu().reshape(magnitude.shape)
    alive = magnitude != 0
    if not alive.any():
        alive = torch.ones_like(alive)
    columns = []
    for values in (magnitude, grad, magnitude * grad):
        logged = _log(values, alive)
        columns += [logged, _zscore(logged, alive)]
    fan_in = math.prod(magnitude.shape[1:]) if magnitude.dim() > 1 else 1
    constant = torch.ones_like(magnitude)
    columns += [
        _rank(magnitude, alive), _unit_feature(magnitude, 0), _unit_feature(magnitude, 1),
        constant * share, constant * depth, constant * math.log(fan_in), _kernel_offset(tuple(magnitude.shape)),
        constant * float(layer.kind.startswith("conv")),
    ]
    return torch.stack([column.reshape(-1) for column in columns], dim=1).float()


def layer_features(layers: Sequence[LayerInput]) -> dict[str, torch.Tensor]:
    """``{name: (weights, len(FEATURE_NAMES)) float tensor}``, rows in the weight's flattened
    order. `layers` are the targeted layers in model order (their order gives ``layer_depth``).

    >>> weight = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    >>> features = layer_features([LayerInput("fc.weight", "linear", weight, torch.ones(2, 2))])
    >>> [round(rank, 3) for rank in features["fc.weight"][:, FEATURE_NAMES.index("rank_w")].tolist()]
    [0.333, 0.667, 0.0, 1.0]
    """
    total = sum(layer.weight.numel() for layer in layers)
    last = max(len(layers) - 1, 1)
    return {layer.name: _one_layer(layer, layer.weight.numel() / total, index / last)
            for index, layer in enumerate(layers)}


__all__ = ["FEATURE_KINDS", "FEATURE_NAMES", "LayerInput", "layer_features", "layer_kind"]
