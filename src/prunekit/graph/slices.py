"""Which parameter slices a coupled group touches, and how they form units.

torch-pruning tells us, for each layer a group reaches, which output or input indices are
removed and which index of the root layer caused each one. Each layer's handler
(``prunekit.layers``) turns that into ``SliceBatch``es: "slice `position` of `param` along `dim`
goes with root index `root`".
``assemble_members`` then merges root indices that claim the same slice (a grouped convolution
reads input channel ``c`` of every group through one weight column, so those channels can only
go together) into units and writes one ``Member`` per (parameter, dim).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunekit.graph.types import Member
from prunekit.layers import handler_for
from prunekit.layers.base import Ints, ProtectedUnits, SliceBatch, UnsupportedCoupling

__all__ = ["ProtectedUnits", "SliceBatch", "UnsupportedCoupling", "assemble_members", "layer_slices", "member_masks"]


def layer_slices(name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
    """Slice batches for one (layer, direction) that torch-pruning reached in a group; the
    layer's handler (``prunekit.layers``) knows its slices."""
    handler = handler_for(module)
    if handler is None:
        raise UnsupportedCoupling(
            f"{type(module).__name__} '{name}' shares these units and prunekit cannot remove them "
            "from it consistently yet"
        )
    batches = handler.slices(name, module, is_out, idxs, roots)
    for batch in batches:
        if batch.positions and not 0 <= min(batch.positions) <= max(batch.positions) < batch.size:
            raise UnsupportedCoupling(
                f"the dependency graph maps these units to indices beyond the {batch.size} slices of "
                f"'{batch.param}' (a split or reshape it does not follow)"
            )
    return batches


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
