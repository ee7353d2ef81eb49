"""Evidence for groups described by members (neurons, channels, LSTM units, heads): the weight
slices each unit owns, the normalisation scale after it, and where its activations are seen."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from prunekit.criteria.weights import scatter_to_units
from prunekit.graph.types import UnitGroup
from prunekit.layers import handler_for
from prunekit.masking import named_effective_parameters, split_name
from prunekit.stats import ActivationPoint
from prunekit.types import Evidence, Signal


def _slices(weight: torch.Tensor, dim: int) -> torch.Tensor:
    return weight.detach().movedim(dim, 0).reshape(weight.shape[dim], -1).cpu()  # evidence lives on the CPU


def weight_evidence(model: nn.Module, group: UnitGroup, signal: Signal | None = None) -> Evidence:
    """The group's incoming rows, outgoing columns and normalisation scales, per unit.

    >>> from prunekit.graph import find_unit_groups
    >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> (group,) = find_unit_groups(model, torch.ones(1, 2), "neuron")
    >>> evidence = weight_evidence(model, group)
    >>> [rows.shape for rows, _ in evidence.incoming], [cols.shape for cols, _ in evidence.outgoing]
    ([torch.Size([3, 2])], [torch.Size([3, 1])])
    """
    params = dict(named_effective_parameters(model))
    incoming, outgoing = [], []
    norm_scale = None
    for member in group.members:
        handler = handler_for(model.get_submodule(split_name(member.param)[0]))
        weight = params[member.param]
        if handler is not None and handler.scales_units:
            if member.param.endswith("weight"):
                scale = scatter_to_units(weight.detach().abs().cpu(), member.unit_index, group.num_units)
                norm_scale = scale if norm_scale is None else norm_scale + scale
        elif weight.dim() >= 2:
            target = incoming if member.dim == 0 else outgoing
            target.append((_slices(weight, member.dim), member.unit_index))
    return Evidence((group.num_units,), incoming=tuple(incoming), outgoing=tuple(outgoing),
                    norm_scale=norm_scale, signal=signal)


def activation_points(model: nn.Module, group: UnitGroup) -> list[tuple[ActivationPoint, torch.Tensor]]:
    """Where the group's unit activations are observed, with each output channel's unit.

    After a normalisation layer when the group has one (that is what the next layer sees),
    else at the producers' outputs: the root's outputs map to units through
    ``root_unit_index``, other producers' through their weight rows.
    """
    norms, producers = [], []
    for member in group.members:
        module_name = split_name(member.param)[0]
        module = model.get_submodule(module_name)
        handler = handler_for(module)
        dim = handler.activation_dim(module) if handler is not None else None
        if dim is None or member.dim != 0 or not split_name(member.param)[1].startswith("weight"):
            continue
        if handler.scales_units:
            norms.append((ActivationPoint(module_name, dim), member.unit_index))
        elif module_name == group.name:
            producers.append((ActivationPoint(module_name, dim), group.root_unit_index))
        elif handler.unit_granularity and len(member.unit_index) == handler.out_width(module):
            producers.append((ActivationPoint(module_name, dim), member.unit_index))
    chosen = norms or producers
    unique = {point.module_name: (point, index) for point, index in chosen}
    return list(unique.values())


def signals_from_channels(
    placements: Mapping[str, list[tuple[ActivationPoint, torch.Tensor]]],
    observed: Mapping[str, Mapping[str, torch.Tensor]], groups: list[UnitGroup],
) -> dict[str, Signal]:
    """Per group, the per-channel statistics at its activation points summed into its units."""
    signals = {}
    for group in groups:
        per_unit: dict[str, torch.Tensor] = {}
        for point, unit_index in placements[group.name]:
            for key, per_channel in observed[point.module_name].items():
                per_unit[key] = per_unit.get(key, 0) + scatter_to_units(per_channel.cpu(), unit_index, group.num_units)
        signals[group.name] = Signal(per_unit.get("mean_abs"), per_unit.get("zero_fraction"),
                                     per_unit.get("grad_abs"), per_unit.get("taylor"))
    return signals
