"""Which parameter slices a coupled group touches, per layer type, and how they form units.

torch-pruning tells us, for each layer a group reaches, which output or input indices are
removed and which index of the root layer caused each one. The builders here turn that into
``SliceBatch``es: "slice `position` of `param` along `dim` goes with root index `root`".
``assemble_members`` then merges root indices that claim the same slice (a grouped convolution
reads input channel ``c`` of every group through one weight column, so those channels can only
go together) into units and writes one ``Member`` per (parameter, dim).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.graph.types import Member

Ints = Sequence[int]


class UnsupportedCoupling(Exception):
    """A group reaches a layer or pattern that cannot be shrunk consistently; skip the group."""


class ProtectedUnits(UnsupportedCoupling):
    """A group's units reach the model output or an excluded layer; skip it by design."""


@dataclass(frozen=True)
class SliceBatch:
    """Slices ``positions[i]`` of `param` along `dim` (of length `size`) go with ``roots[i]``.

    A `param` starting with ``"#"`` is a virtual key: it only forces root indices to merge.
    """

    param: str
    dim: int
    size: int
    positions: tuple[int, ...]
    roots: tuple[int, ...]


Batches = list[SliceBatch]


def _batch(param: str, dim: int, size: int, positions: Ints, roots: Ints) -> SliceBatch:
    return SliceBatch(param, dim, size, tuple(positions), tuple(roots))


def _prefix(name: str) -> str:
    return f"{name}." if name else ""


def _check_even_across_groups(name: str, idxs: Ints, per_group: int, groups: int, side: str):
    """Grouped convs stay valid only if every group loses the same local channels."""
    by_local: dict[int, set[int]] = {}
    for idx in idxs:
        by_local.setdefault(idx % per_group, set()).add(idx // per_group)
    if any(len(owners) != groups for owners in by_local.values()):
        raise UnsupportedCoupling(
            f"grouped convolution '{name}' (groups={groups}) would lose {side} channels unevenly "
            "across its groups"
        )


def _conv_slices(name: str, conv: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> Batches:
    if conv.transposed:
        raise UnsupportedCoupling(f"transposed convolution '{name}' is not supported yet")
    prefix, groups = _prefix(name), conv.groups
    has_bias = conv.bias is not None
    if groups == conv.out_channels and groups > 1:  # depthwise: torch-pruning couples in and out
        if conv.in_channels != conv.out_channels:
            raise UnsupportedCoupling(f"depthwise convolution '{name}' with a channel multiplier")
        batches = [_batch(prefix + "weight", 0, conv.out_channels, idxs, roots)]
        if has_bias:
            batches.append(_batch(prefix + "bias", 0, conv.out_channels, idxs, roots))
        return batches
    if is_out:
        batches = [_batch(prefix + "weight", 0, conv.out_channels, idxs, roots)]
        if has_bias:
            batches.append(_batch(prefix + "bias", 0, conv.out_channels, idxs, roots))
        if groups > 1:
            per_group = conv.out_channels // groups
            _check_even_across_groups(name, idxs, per_group, groups, "output")
            local = [idx % per_group for idx in idxs]
            batches.append(_batch(f"#groups:{name}", 0, per_group, local, roots))
        return batches
    per_group = conv.in_channels // groups
    if groups > 1:
        _check_even_across_groups(name, idxs, per_group, groups, "input")
    local = [idx % per_group for idx in idxs]
    return [_batch(prefix + "weight", 1, per_group, local, roots)]


def _linear_slices(name: str, linear: nn.Linear, is_out: bool, idxs: Ints, roots: Ints) -> Batches:
    prefix = _prefix(name)
    if not is_out:
        return [_batch(prefix + "weight", 1, linear.in_features, idxs, roots)]
    batches = [_batch(prefix + "weight", 0, linear.out_features, idxs, roots)]
    if linear.bias is not None:
        batches.append(_batch(prefix + "bias", 0, linear.out_features, idxs, roots))
    return batches


def _per_channel_slices(name: str, module: nn.Module, idxs: Ints, roots: Ints) -> Batches:
    """Norms and PReLU: one weight (and bias) entry per channel; in and out are the same."""
    prefix, batches = _prefix(name), []
    for param_name in ("weight", "bias"):
        param = getattr(module, param_name, None)  # getattr also sees masked (parametrized) ones
        if isinstance(param, torch.Tensor):
            batches.append(_batch(prefix + param_name, 0, param.shape[0], idxs, roots))
    return batches


#: Layers the graph package removes units from, besides RNNs (see ``lstm.py``).
PER_CHANNEL_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def layer_slices(name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> Batches:
    """Slice batches for one (layer, direction) that torch-pruning reached in a group."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return _conv_slices(name, module, is_out, idxs, roots)
    if isinstance(module, nn.Linear):
        return _linear_slices(name, module, is_out, idxs, roots)
    if isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats:
        raise UnsupportedCoupling(f"'{name}' tracks running statistics that cannot be sliced")
    if isinstance(module, PER_CHANNEL_TYPES):
        return _per_channel_slices(name, module, idxs, roots)
    if isinstance(module, nn.PReLU):
        return _per_channel_slices(name, module, idxs, roots) if module.num_parameters > 1 else []
    raise UnsupportedCoupling(
        f"{type(module).__name__} '{name}' shares these units and prunekit cannot remove them "
        "from it consistently yet"
    )


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, first: int, second: int) -> None:
        first, second = self.find(first), self.find(second)
        if first != second:
            self.parent[max(first, second)] = min(first, second)


def assemble_members(
    num_roots: int, batches: Sequence[SliceBatch]
) -> tuple[tuple[Member, ...], torch.Tensor]:
    """Merge root indices that share a slice into units; return members and each root's unit.

    >>> batches = [SliceBatch("conv.weight", 1, 2, (0, 1, 0, 1), (0, 1, 2, 3))]
    >>> members, root_units = assemble_members(4, batches)
    >>> root_units.tolist(), members[0].unit_index.tolist()
    ([0, 1, 0, 1], [0, 1])
    """
    union_find = _UnionFind(num_roots)
    claimed: dict[tuple[str, int], dict[int, int]] = {}
    sizes: dict[tuple[str, int], int] = {}
    for batch in batches:
        key = (batch.param, batch.dim)
        sizes[key] = batch.size
        owners = claimed.setdefault(key, {})
        for position, root in zip(batch.positions, batch.roots):
            if position in owners:
                union_find.union(owners[position], root)
            else:
                owners[position] = root
    labels: dict[int, int] = {}
    root_units = []
    for root in range(num_roots):
        root_units.append(labels.setdefault(union_find.find(root), len(labels)))
    members = []
    for (param, dim), owners in claimed.items():
        if param.startswith("#"):
            continue
        unit_index = torch.full((sizes[(param, dim)],), -1, dtype=torch.long)
        for position, root in owners.items():
            unit_index[position] = root_units[root]
        members.append(Member(param, dim, unit_index))
    return tuple(members), torch.tensor(root_units, dtype=torch.long)


def member_masks(
    param_shapes: dict[str, torch.Size], members: Sequence[Member], keep_unit: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Bool keep-masks for the parameters of `members` given one bool per unit (True = keep).

    Slices outside the group (``unit_index == -1``) are kept. Masks of repeated parameters AND.

    >>> member = Member("fc.weight", 1, torch.tensor([0, 1, -1]))
    >>> member_masks({"fc.weight": torch.Size([2, 3])}, [member], torch.tensor([True, False]))
    {'fc.weight': tensor([[ True, False,  True],
            [ True, False,  True]])}
    """
    masks: dict[str, torch.Tensor] = {}
    for member in members:
        shape = param_shapes[member.param]
        owned = member.unit_index >= 0
        slice_keep = torch.ones(len(member.unit_index), dtype=torch.bool)
        slice_keep[owned] = keep_unit[member.unit_index[owned]]
        view = [1] * len(shape)
        view[member.dim] = len(slice_keep)
        mask = slice_keep.view(view).expand(shape)
        masks[member.param] = masks[member.param] & mask if member.param in masks else mask.clone()
    return masks
