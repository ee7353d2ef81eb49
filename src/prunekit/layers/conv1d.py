"""Hugging Face ``Conv1D`` (GPT-2, GPT, ...): a linear layer whose weight is stored transposed,
``(in_features, out_features)``. Outputs are neurons; an output unit is a *column* of the weight.

transformers is not imported here: a module is a Conv1D when its class (or, once masked, its
parent class) is named ``Conv1D`` and it
has ``nf``/``nx`` attributes matching its ``(nx, nf)`` weight. torch-pruning does not know the
layer, so ``Conv1DPruner`` is registered with it while tracing (``graph/trace.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch_pruning.pruner.function import BasePruningFunc

from prunekit.layers.base import Ints, LayerHandler, MacRow, SliceBatch, nnz, prefix, slice_batch


def is_conv1d(module: nn.Module) -> bool:
    """Whether `module` is a transformers-style ``Conv1D`` (weight ``(nx, nf)``).

    >>> is_conv1d(nn.Linear(2, 3))
    False
    """
    weight = getattr(module, "weight", None)
    named = any(cls.__name__ == "Conv1D" for cls in type(module).__mro__)  # masked: ParametrizedConv1D
    if not named or weight is None or weight.dim() != 2:
        return False
    return tuple(weight.shape) == (getattr(module, "nx", None), getattr(module, "nf", None))


class Conv1DHandler(LayerHandler):
    """transformers' ``Conv1D``: ``y = x @ weight + bias`` with ``weight`` of shape ``(in, out)``."""

    unit_granularity = "neuron"

    def matches(self, module: nn.Module) -> bool:
        return is_conv1d(module)

    def prunable_weights(self, module: nn.Module) -> list[str]:
        return ["weight"]

    def out_width(self, module: nn.Module) -> int:
        return module.nf

    def slices(self, name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
        if not is_out:
            return [slice_batch(prefix(name) + "weight", 0, module.nx, idxs, roots)]
        batches = [slice_batch(prefix(name) + "weight", 1, module.nf, idxs, roots)]
        if module.bias is not None:
            batches.append(slice_batch(prefix(name) + "bias", 0, module.nf, idxs, roots))
        return batches

    def activation_dim(self, module: nn.Module) -> int:
        return -1

    def weight_layout(self, module: nn.Module, param_name: str) -> tuple[int, int]:
        return (1, 0)  # weight (in, out): an output row of the layer is a weight column

    def input_width(self, module: nn.Module) -> int:
        return module.nx

    def macs(self, module: nn.Module, args: tuple, kwargs: dict, output) -> list[MacRow]:
        rows = args[0].numel() // module.nx
        return [("", rows * module.weight.numel(), rows * nnz(module.weight))]

    def structural_sparsity(self, module: nn.Module, weights: dict) -> float:
        # an output unit is a weight column: the base rule reads rows, so hand it the transpose
        return super().structural_sparsity(module, {key: weight.t() for key, weight in weights.items()})


class Conv1DPruner(BasePruningFunc):
    """torch-pruning pruner for ``Conv1D``: output units are weight columns, inputs weight rows."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        removed = set(idxs)
        keep = [index for index in range(layer.nf) if index not in removed]
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        if layer.bias is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        removed = set(idxs)
        keep = [index for index in range(layer.nx) if index not in removed]
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        layer.nx = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.nf

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.nx
