"""Per-unit keep decisions -> per-parameter keep-masks: the masked equivalent of removal.

Masks zero every slice of a removed unit (producer rows and biases, BatchNorm entries, RNN gate
rows, consumer input columns), so ``masking.apply_masks`` makes the model compute exactly what
``shrink`` would leave, while keeping the original shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from prunekit.errors import PrunekitError, unknown_name
from prunekit.graph.slices import member_masks
from prunekit.graph.types import UnitGroup
from prunekit.masking import named_effective_parameters


def validate_keep_units(groups: Iterable[UnitGroup], keep_units: Mapping[str, torch.Tensor]) -> None:
    """Raise PrunekitError unless `keep_units` maps known group names to usable bool masks.

    Each mask must be a bool tensor of length ``num_units`` that keeps at least one unit.

    >>> group = UnitGroup("fc1", "neuron", 2, (), torch.tensor([0, 1]))
    >>> validate_keep_units([group], {"fc1": torch.tensor([True, False])})
    >>> validate_keep_units([group], {"fc1": torch.tensor([False, False])})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: keep_units['fc1'] removes all 2 units of group 'fc1'; ...
    """
    by_name = {group.name: group for group in groups}
    if not isinstance(keep_units, Mapping):
        raise PrunekitError(
            "keep_units must be a dict {group name: bool tensor}, "
            f"got {type(keep_units).__name__}"
        )
    for name, keep in keep_units.items():
        if name not in by_name:
            raise unknown_name("unit group", str(name), by_name)
        expected = by_name[name].num_units
        is_tensor = isinstance(keep, torch.Tensor)
        if not is_tensor or keep.dtype != torch.bool or keep.shape != (expected,):
            got = f"{keep.dtype} tensor of shape {tuple(keep.shape)}" if is_tensor else repr(keep)
            raise PrunekitError(
                f"keep_units['{name}'] must be a bool tensor of shape ({expected},) with True for "
                f"units to keep; got {got}"
            )
        if not bool(keep.any()):
            raise PrunekitError(
                f"keep_units['{name}'] removes all {expected} units of group '{name}'; keep at "
                "least one unit (removing a whole layer is not supported)"
            )


def unit_masks_to_param_masks(
    model: nn.Module, groups: Iterable[UnitGroup], keep_units: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Keep-masks, keyed by parameter name, that zero every slice of every removed unit.

    Applied with ``masking.apply_masks`` they give the masked equivalent of ``shrink``. Only
    parameters that lose at least one entry get a mask; groups absent from `keep_units` keep all.

    >>> from prunekit.graph import find_unit_groups
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> groups = find_unit_groups(model, torch.ones(1, 4), "neuron")
    >>> masks = unit_masks_to_param_masks(model, groups, {"0": torch.tensor([True, False, True])})
    >>> sorted(masks), masks["2.weight"][0].tolist()
    (['0.bias', '0.weight', '2.weight'], [True, False, True])
    """
    groups = list(groups)
    validate_keep_units(groups, keep_units)
    shapes = {name: param.shape for name, param in named_effective_parameters(model)}
    masks: dict[str, torch.Tensor] = {}
    for group in groups:
        if group.name not in keep_units:
            continue
        for member in group.members:
            shape = shapes.get(member.param)
            size = len(member.unit_index)
            if shape is None or member.dim >= len(shape) or shape[member.dim] != size:
                found = "is missing" if shape is None else f"has shape {tuple(shape)}"
                raise PrunekitError(
                    f"group '{group.name}' does not match this model: parameter '{member.param}' "
                    f"{found} but the group expects size {size} along dim {member.dim}; call "
                    "find_unit_groups on this model"
                )
        keep = keep_units[group.name].cpu()
        for param, mask in member_masks(shapes, group.members, keep).items():
            masks[param] = masks[param] & mask if param in masks else mask
    return {param: mask for param, mask in masks.items() if not bool(mask.all())}
