"""The one interface every granularity implements (an extension point: one signature each).

A granularity decides what one *unit* is (a weight, a neuron, a channel, an LSTM hidden unit,
an attention head, a block) and knows, for a model:

* ``find``: the groups of units that can be pruned (``UnitGroup``s; scores, keep-masks and
  selection work per group);
* ``probes`` / ``evidence``: where statistics are collected for a criterion's needs, and how
  weights and statistics become one ``Evidence`` per group;
* ``kept`` / ``present``: which units are still there (from the masks / for counting);
* ``to_masks``: unit keep-masks -> parameter keep-masks (the masked equivalent of removal);
* ``remove``: physical removal, returning a replayable ``ShrinkRecord``;
* ``unit_magnitude``: each unit's weight magnitude (for relative sparsity).

Adding a granularity = one subclass + one line in ``granularity/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import torch
from torch import nn

from prunekit.criteria import Criterion, get_criterion
from prunekit.errors import PrunekitError
from prunekit.graph import unit_masks_to_param_masks
from prunekit.graph.record import ShrinkRecord
from prunekit.graph.types import UnitGroup
from prunekit.masking import get_masks, named_effective_parameters
from prunekit.types import Evidence

Keep = Mapping[str, torch.Tensor]


class Granularity:
    """Defaults describe a structured granularity whose groups list their members' slices."""

    #: registry name, e.g. "channel"
    name: str = ""
    #: what one unit is, for results: "weight", "neuron", ...
    unit: str = ""
    #: the evidence it can give criteria (see prunekit.criteria): decides which criteria work
    provides: frozenset[str] = frozenset()
    #: criterion need ("activations", "gradients", "removal-loss") -> stats collector kind
    collectors: Mapping[str, str] = MappingProxyType({})
    #: finding its units traces the model, so example inputs are required
    needs_example_inputs: bool = False
    #: selection: units each group keeps at least, and whether global scope divides each
    #: group's scores by its mean (units of differently scaled layers compete fairly)
    min_keep: int = 1
    normalize: bool = True
    #: the scope used when the caller names none
    default_scope: str = "layer"
    #: the criterion used when the caller names none
    default_method: str = "l1"
    supports_threshold: bool = False
    supports_round_to: bool = True
    #: units can be removed physically (else finalize bakes the masks)
    removable: bool = True

    def criterion(self, method: str) -> Criterion:
        """The criterion `method`, if it works with this granularity (else a clear error)."""
        return get_criterion(method, self.provides, f"{self.name} method")

    def find(self, model: nn.Module, example_inputs: object, exclude: Sequence) -> list[UnitGroup]:
        """The groups of units of `model` that may be pruned; an error when there are none."""
        raise NotImplementedError

    def probes(self, model: nn.Module, groups: Sequence[UnitGroup], kind: str) -> list:
        """Where the stats collector `kind` looks for these groups."""
        raise NotImplementedError

    def evidence(self, model: nn.Module, groups: Sequence[UnitGroup], observed: Mapping) -> dict[str, Evidence]:
        """One ``Evidence`` per group from the weights and what the collector `observed`."""
        raise NotImplementedError

    def kept(self, model: nn.Module, groups: Sequence[UnitGroup]) -> dict[str, torch.Tensor]:
        """Per group, True for each unit the masks have not removed yet."""
        return kept_from_masks(model, groups)

    def present(self, model: nn.Module, groups: Sequence[UnitGroup]) -> dict[str, torch.Tensor]:
        """Per group, True for each unit counted as still there (for results)."""
        return self.kept(model, groups)

    def to_masks(self, model: nn.Module, groups: Sequence[UnitGroup], keep: Keep) -> dict[str, torch.Tensor]:
        """Parameter keep-masks that make `model` compute what removing the units would."""
        return unit_masks_to_param_masks(model, groups, {name: keep[name] for name in keep})

    def remove(self, model: nn.Module, groups: Sequence[UnitGroup], keep: Keep, example_inputs: object,
               check: bool = True) -> ShrinkRecord:
        """Remove the units with ``keep == False`` physically; `model` must carry no masks."""
        raise NotImplementedError

    def unit_magnitude(self, model: nn.Module, groups: Sequence[UnitGroup]) -> dict[str, torch.Tensor]:
        """Per group, the summed |w| each unit owns (its incoming weights)."""
        weights = dict(named_effective_parameters(model))
        magnitudes = {}
        for group in groups:
            total = torch.zeros(group.num_units, dtype=torch.float64)
            for member in group.members:
                weight = weights.get(member.param)
                if member.dim != 0 or weight is None or weight.dim() < 2:
                    continue
                per_slice = weight.detach().reshape(weight.shape[0], -1).abs().sum(1).double().cpu()
                owned = member.unit_index >= 0
                total.index_add_(0, member.unit_index[owned], per_slice[owned])
            magnitudes[group.name] = total
        return magnitudes


def kept_from_masks(model: nn.Module, groups: Iterable[UnitGroup]) -> dict[str, torch.Tensor]:
    """Per group, False for the units whose every slice in every member is masked out (what
    ``to_masks`` does to a removed unit); units with no members are always kept.

    >>> from prunekit.graph import find_unit_groups
    >>> from prunekit.masking import apply_masks
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> groups = find_unit_groups(model, torch.ones(1, 4), "neuron")
    >>> _ = apply_masks(model, unit_masks_to_param_masks(model, groups, {"0": torch.tensor([True, False, True])}))
    >>> kept_from_masks(model, groups)["0"].tolist()
    [True, False, True]
    """
    masks = get_masks(model)
    kept = {}
    for group in groups:
        alive = torch.zeros(group.num_units, dtype=torch.long)  # slices with something unmasked
        covered = torch.zeros(group.num_units, dtype=torch.bool)
        for member in group.members:
            owned = member.unit_index >= 0
            units = member.unit_index[owned]
            covered[units] = True
            mask = masks.get(member.param)
            if mask is None:
                alive.index_add_(0, units, torch.ones_like(units))
                continue
            slice_alive = mask.movedim(member.dim, 0).reshape(mask.shape[member.dim], -1).any(dim=1).cpu()
            alive.index_add_(0, units, slice_alive[owned].long())
        kept[group.name] = (alive > 0) | ~covered
    return kept


def refuse_if_empty(groups: list[UnitGroup], what: str, model: nn.Module) -> list[UnitGroup]:
    """`groups`, or an error saying that the model has no removable units of `what`."""
    if not groups:
        raise PrunekitError(
            f"found no removable {what} units in {type(model).__name__} (the output layer and "
            "excluded layers are never removed); check the granularity for this model"
        )
    return groups
