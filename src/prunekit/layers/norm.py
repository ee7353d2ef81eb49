"""Normalisation and per-channel layers: no MACs; BatchNorm/InstanceNorm/PReLU lose channels
with the layer that feeds them; LayerNorm/GroupNorm mix channels, so groups through them are
not removed (yet), but their scales still count as evidence."""

from __future__ import annotations

import torch
from torch import nn

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
    """``nn.LayerNorm`` / ``nn.GroupNorm``: statistics over many channels, so their channels are
    not removed; their affine scale is still evidence for the units they normalise."""

    types = (nn.LayerNorm, nn.GroupNorm)
    scales_units = True
    free = True


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
