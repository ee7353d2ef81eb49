"""Value types of the graph package: a coupled group of structural units and its members."""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Unit granularities found by tracing the dependency graph (heads and layers are found by layout).
GRANULARITIES = ("neuron", "channel", "lstm-unit")


@dataclass(frozen=True, eq=False)
class Member:
    """The slices of one parameter that belong to a group's units.

    ``unit_index[i]`` is the unit that slice ``i`` of `param` along `dim` belongs to, or ``-1``
    when that slice is not part of the group (e.g. the columns a consumer reads from another
    branch of a concatenation). Removing unit ``u`` removes every slice whose entry is ``u``.
    """

    param: str
    dim: int
    unit_index: torch.Tensor

    def __repr__(self) -> str:
        owned = int((self.unit_index >= 0).sum())
        return f"Member({self.param!r}, dim={self.dim}, {owned}/{len(self.unit_index)} slices)"


@dataclass(frozen=True, eq=False)
class UnitGroup:
    """A set of structural units that can only be removed together.

    `name` is the dotted name of the group's root module (the first producer in module order).
    A group couples every producer whose outputs must keep the same width (for example all
    convolutions that write into one residual stream) with everything that reads those outputs.
    `root_unit_index` gives, for each output index of the root module as torch-pruning numbers
    them, the unit it belongs to; ``shrink`` uses it to drive the removal.

    Other granularities use the same type: an unstructured group is one weight tensor (its units
    are its entries, laid out in `shape`); a layer group is one stack of removable blocks (its
    units are the blocks named in `unit_names`). An unstructured group's `layout` is
    ``(output dim, input dim)`` of `shape` as its layer's handler gives them (None when it gives
    none): row scope compares weights within each output row, N:M patterns run along the input dim.
    """

    name: str
    granularity: str
    num_units: int
    members: tuple[Member, ...]
    root_unit_index: torch.Tensor
    shape: tuple[int, ...] = ()
    unit_names: tuple[str, ...] = ()
    layout: tuple[int, int] | None = None

    @property
    def unit_shape(self) -> tuple[int, ...]:
        """The shape scores and keep-masks of this group have: `shape`, else ``(num_units,)``."""
        return tuple(self.shape) or (self.num_units,)

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the parameters this group touches, in member order, without repeats."""
        return tuple(dict.fromkeys(member.param for member in self.members))

    def __repr__(self) -> str:
        return (
            f"UnitGroup({self.name!r}, {self.granularity}, {self.num_units} units, "
            f"{len(self.members)} members)"
        )
