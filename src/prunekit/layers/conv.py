"""Convolutions: output channels are the units of granularity ``"channel"``.

Grouped convolutions stay valid only when every group loses the same local channels; a
depthwise convolution couples its inputs to its outputs. Transposed convolutions are pruned
unstructured and their output channels are removed too (weights ``(in, out, *kernel)``),
except grouped ones.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.layers.base import (
    Ints,
    LayerHandler,
    MacRow,
    SliceBatch,
    UnsupportedCoupling,
    dead_rows,
    nnz,
    prefix,
    slice_batch,
)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _check_even_across_groups(name: str, idxs: Ints, per_group: int, groups: int, side: str) -> None:
    by_local: dict[int, set[int]] = {}
    for idx in idxs:
        by_local.setdefault(idx % per_group, set()).add(idx // per_group)
    if any(len(owners) != groups for owners in by_local.values()):
        raise UnsupportedCoupling(
            f"grouped convolution '{name}' (groups={groups}) would lose {side} channels unevenly "
            "across its groups"
        )


def _own_channels(name: str, conv: nn.Module, size: int, idxs: Ints, roots: Ints) -> list[SliceBatch]:
    batches = [slice_batch(prefix(name) + "weight", 0, size, idxs, roots)]
    if conv.bias is not None:
        batches.append(slice_batch(prefix(name) + "bias", 0, size, idxs, roots))
    return batches


class ConvHandler(LayerHandler):
    """``nn.Conv1d/2d/3d``.

    >>> ConvHandler().slices("c", nn.Conv2d(2, 4, 3, bias=False), True, [1], [0])[0].param
    'c.weight'
    """

    types = _CONVS
    unit_granularity = "channel"

    def prunable_weights(self, module: nn.Module) -> list[str]:
        return ["weight"]

    def out_width(self, module: nn.Module) -> int:
        return module.out_channels

    def slices(self, name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
        groups = module.groups
        if groups == module.out_channels and groups > 1:  # depthwise: torch-pruning couples in and out
            if module.in_channels != module.out_channels:
                raise UnsupportedCoupling(f"depthwise convolution '{name}' with a channel multiplier")
            return _own_channels(name, module, module.out_channels, idxs, roots)
        if is_out:
            batches = _own_channels(name, module, module.out_channels, idxs, roots)
            if groups > 1:
                per_group = module.out_channels // groups
                _check_even_across_groups(name, idxs, per_group, groups, "output")
                local = [idx % per_group for idx in idxs]
                batches.append(slice_batch(f"#groups:{name}", 0, per_group, local, roots))
            return batches
        per_group = module.in_channels // groups
        if groups > 1:
            _check_even_across_groups(name, idxs, per_group, groups, "input")
        local = [idx % per_group for idx in idxs]
        return [slice_batch(prefix(name) + "weight", 1, per_group, local, roots)]

    def activation_dim(self, module: nn.Module) -> int:
        return 1

    def weight_layout(self, module: nn.Module, param_name: str) -> tuple[int, int]:
        return (0, 1)  # weight (out, in / groups, *kernel): N:M runs along the input channels

    def macs(self, module: nn.Module, args: tuple, kwargs: dict, output) -> list[MacRow]:
        positions = output.numel() // module.out_channels  # batch x output spatial size
        weight = module.weight  # (out, in / groups, *kernel): padding zeros are counted as MACs
        return [("", positions * weight.numel(), positions * nnz(weight))]


class ConvTransposeHandler(LayerHandler):
    """``nn.ConvTranspose1d/2d/3d``: weights ``(in, out / groups, *kernel)``, outputs on dim 1."""

    types = _CONV_TRANSPOSE
    unit_granularity = "channel"

    def out_width(self, module: nn.Module) -> int:
        return module.out_channels

    def activation_dim(self, module: nn.Module) -> int:
        return 1

    def prunable_weights(self, module: nn.Module) -> list[str]:
        return ["weight"]

    def weight_layout(self, module: nn.Module, param_name: str) -> tuple[int, int]:
        return (1, 0)  # weight (in, out / groups, *kernel)

    def slices(self, name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
        if module.groups > 1:
            raise UnsupportedCoupling(f"grouped transposed convolution '{name}' is not supported yet")
        if not is_out:
            return [slice_batch(prefix(name) + "weight", 0, module.in_channels, idxs, roots)]
        batches = [slice_batch(prefix(name) + "weight", 1, module.out_channels, idxs, roots)]
        if module.bias is not None:
            batches.append(slice_batch(prefix(name) + "bias", 0, module.out_channels, idxs, roots))
        return batches

    def macs(self, module: nn.Module, args: tuple, kwargs: dict, output) -> list[MacRow]:
        positions = args[0].numel() // module.in_channels  # each input element meets its weights
        weight = module.weight
        return [("", positions * weight.numel(), positions * nnz(weight))]

    def structural_sparsity(self, module: nn.Module, weights: dict[str, torch.Tensor]) -> float:
        groups, rows = module.groups, []
        for weight in weights.values():
            per_output = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1).transpose(1, 2)
            rows.append(dead_rows(per_output.reshape(groups * per_output.shape[1], -1)))
        dead = torch.cat(rows)
        return float(dead.float().mean()) if dead.numel() else 0.0
