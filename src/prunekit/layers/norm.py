"""Normalisation and per-channel layers: no MACs; BatchNorm/InstanceNorm/PReLU lose channels
with the layer that feeds them; GroupNorm loses whole groups (its statistics are per group, so
removing a whole group leaves the others exactly as they were, and a zeroed group normalises to
zero); LayerNorm mixes all its channels into one mean and variance, so removing some changes the
rest and units through it are not removed, but its scale still counts as evidence."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc

from prunekit.layers.base import Ints, LayerHandler, SliceBatch, UnsupportedCoupling, prefix, slice_batch


def _per_channel(name: str, module: nn.Module, idxs: Ints, roots: Ints) -> list[SliceBatch]:
    """One weight (and bias) entry per channel; inputs and outputs are the same channels."""
    batches = []
    for param_name in ("weight", "bias"):
        param = getattr(module, param_name, None)  # getattr also sees masked (parametrized) ones
        if isinstance(param, torch.Tensor):
            batches.append(slice_batch(prefix(name) + param_name, 0, param.shape[0], idxs, roots))
    return batches


class BatchNormHandler(LayerHandler):
    """``nn.BatchNorm1d/2d/3d`` and ``SyncBatchNorm``.

    >>> [b.param for b in BatchNormHandler().slices("bn", nn.BatchNorm2d(4), True, [1], [0])]
    ['bn.weight', 'bn.bias']
    """

    types = (nn.modules.batchnorm._BatchNorm,)
    scales_units = True
    free = True

    def activation_dim(self, module: nn.Module) -> int:
        return 1

    def slices(self, name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
        if not module.affine and module.track_running_stats:
            # a masked channel would still come out as -mean / std: masking would not equal removal
            raise UnsupportedCoupling(f"BatchNorm '{name}' has no affine scale to zero its channels")
        return _per_channel(name, module, idxs, roots)


class InstanceNormHandler(LayerHandler):
    """``nn.InstanceNorm1d/2d/3d``: sliceable unless it tracks running statistics."""

    types = (nn.modules.instancenorm._InstanceNorm,)
    free = True

    def slices(self, name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
        if module.track_running_stats:
            raise UnsupportedCoupling(f"'{name}' tracks running statistics that cannot be sliced")
        return _per_channel(name, module, idxs, roots)


class ChannelMixingNormHandler(LayerHandler):
    """``nn.LayerNorm``: statistics over all its channels, so its channels are not removed; its
    affine scale is still evidence for the units it normalises."""

    types = (nn.LayerNorm,)
    scales_units = True
    free = True

    def slices(self, name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
        raise UnsupportedCoupling(
            f"LayerNorm '{name}' normalises these units together: removing some would change the "
            "mean and variance the others see, so removal cannot equal masking"
        )


class GroupNormHandler(LayerHandler):
    """``nn.GroupNorm``: a unit is a whole group of channels (``GroupNormPruner`` removes it and
    lowers ``num_groups``).

    >>> [b.param for b in GroupNormHandler().slices("gn", nn.GroupNorm(2, 4), True, [0], [0])]
    ['gn.weight', 'gn.bias', '#groupnorm:gn']
    """

    types = (nn.GroupNorm,)
    scales_units = True
    free = True

    def activation_dim(self, module: nn.Module) -> int:
        return 1

    def slices(self, name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
        per_group = module.num_channels // module.num_groups
        group_of = [idx // per_group for idx in idxs]  # every channel of a group is one unit
        return [*_per_channel(name, module, idxs, roots),
                slice_batch(f"#groupnorm:{name}", 0, module.num_groups, group_of, roots)]  # fmt: skip


class GroupNormPruner(BasePruningFunc):
    """torch-pruning pruner for ``nn.GroupNorm`` that removes whole groups: torch-pruning's own
    keeps ``num_groups``, which regroups the remaining channels."""

    def prune_out_channels(self, layer: nn.GroupNorm, idxs: Sequence[int]) -> nn.GroupNorm:
        per_group = layer.num_channels // layer.num_groups
        removed = set(idxs)
        if len(removed) % per_group or any(idx // per_group * per_group + k not in removed
                                           for idx in removed for k in range(per_group)):  # fmt: skip
            raise UnsupportedCoupling(f"GroupNorm would lose part of a group ({sorted(removed)})")
        keep = [index for index in range(layer.num_channels) if index not in removed]
        if layer.affine:
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.num_channels, layer.num_groups = len(keep), len(keep) // per_group
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.GroupNorm) -> int:
        return layer.num_channels

    def get_in_channels(self, layer: nn.GroupNorm) -> int:
        return layer.num_channels


class FreeLayerHandler(LayerHandler):
    """Layers with parameters that cost no MACs and are never pruned (RMSNorm, embeddings)."""

    types = tuple(t for t in (getattr(nn, "RMSNorm", None), nn.Embedding, nn.EmbeddingBag) if t is not None)
    free = True


class PReLUHandler(LayerHandler):
    """``nn.PReLU``: one slope per channel (or one shared slope)."""

    types = (nn.PReLU,)
    free = True

    def slices(self, name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
        return _per_channel(name, module, idxs, roots) if module.num_parameters > 1 else []
