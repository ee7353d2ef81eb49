"""``nn.Linear``: outputs are neurons; rows are pruned with their bias, columns with the producer."""

from __future__ import annotations

from torch import nn

from prunekit.layers.base import Ints, LayerHandler, MacRow, SliceBatch, nnz, prefix, slice_batch


class LinearHandler(LayerHandler):
    """``nn.Linear`` (and subclasses such as MultiheadAttention's ``out_proj``).

    >>> handler = LinearHandler()
    >>> handler.prunable_weights(nn.Linear(3, 2)), handler.out_width(nn.Linear(3, 2))
    (['weight'], 2)
    >>> import torch
    >>> layer = nn.Linear(3, 2)
    >>> handler.weight_layout(layer, "weight"), handler.input_features(layer, (torch.ones(2, 5, 3),)).shape
    ((0, 1), torch.Size([10, 3]))
    """

    types = (nn.Linear,)
    unit_granularity = "neuron"

    def prunable_weights(self, module: nn.Module) -> list[str]:
        return ["weight"]

    def out_width(self, module: nn.Module) -> int:
        return module.out_features

    def slices(self, name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
        if not is_out:
            return [slice_batch(prefix(name) + "weight", 1, module.in_features, idxs, roots)]
        batches = [slice_batch(prefix(name) + "weight", 0, module.out_features, idxs, roots)]
        if module.bias is not None:
            batches.append(slice_batch(prefix(name) + "bias", 0, module.out_features, idxs, roots))
        return batches

    def activation_dim(self, module: nn.Module) -> int:
        return -1

    def weight_layout(self, module: nn.Module, param_name: str) -> tuple[int, int]:
        return (0, 1)  # weight (out, in)

    def input_width(self, module: nn.Module) -> int:
        return module.in_features

    def macs(self, module: nn.Module, args: tuple, kwargs: dict, output) -> list[MacRow]:
        rows = args[0].numel() // module.in_features  # every leading dim (batch, time, ...)
        weight = module.weight
        return [("", rows * weight.numel(), rows * nnz(weight))]
