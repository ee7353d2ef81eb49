"""Attention heads: one group per attention module, or per T5 stack (``prunekit.layers.attention``
layouts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
from torch import nn

from prunekit.graph.heads import find_head_groups, shrink_heads
from prunekit.graph.record import ShrinkRecord
from prunekit.graph.types import UnitGroup
from prunekit.granularity.base import Granularity, Keep, refuse_if_empty
from prunekit.layers.attention_layout import slice_role
from prunekit.masking import named_effective_parameters, split_name
from prunekit.types import Evidence, Signal


def _unit_slices(model: nn.Module, group: UnitGroup, weights: Mapping[str, torch.Tensor]):
    """``(role, slices (n, -1) on the CPU, unit_index)`` for each weight matrix of the group;
    role ``"in"`` = the unit's query/key/value outputs, ``"out"`` = its output-projection inputs,
    ``"table"`` = per-head position biases (whichever way the layer stores them)."""
    for member in group.members:
        weight = weights[member.param]
        if weight.dim() < 2:
            continue  # biases
        module_name, attribute = split_name(member.param)
        role = slice_role(model.get_submodule(module_name), attribute, member.dim)
        slices = weight.detach().movedim(member.dim, 0).reshape(weight.shape[member.dim], -1).cpu()
        yield role, slices, member.unit_index


def head_evidence(model: nn.Module, group: UnitGroup, signal: Signal | None = None) -> Evidence:
    """Incoming = each unit's query/key/value output slices, outgoing = its output-projection
    input slices (Conv1D layers store both transposed; position-bias tables are neither).

    >>> layer = nn.TransformerEncoderLayer(16, 4)
    >>> evidence = head_evidence(layer, find_head_groups(layer)[0])
    >>> [rows.shape for rows, _ in evidence.incoming], [cols.shape for cols, _ in evidence.outgoing]
    ([torch.Size([48, 16])], [torch.Size([16, 16])])
    """
    weights = dict(named_effective_parameters(model))
    incoming, outgoing = [], []
    for role, slices, unit_index in _unit_slices(model, group, weights):
        if role != "table":
            (incoming if role == "in" else outgoing).append((slices, unit_index))
    return Evidence((group.num_units,), incoming=tuple(incoming), outgoing=tuple(outgoing), signal=signal)


class HeadGranularity(Granularity):
    """Attention heads; evidence from data is each head's mean contribution to the output.

    >>> [g.name for g in HeadGranularity().find(nn.TransformerEncoderLayer(16, 4), None, ())]
    ['self_attn']
    """

    name = unit = "head"
    provides = frozenset({"incoming", "activation.mean_abs"})
    collectors = MappingProxyType({"activations": "head-outputs"})

    def find(self, model: nn.Module, example_inputs: object, exclude: Sequence) -> list[UnitGroup]:
        return refuse_if_empty(find_head_groups(model, exclude), "head", model)

    def probes(self, model: nn.Module, groups: Sequence[UnitGroup], kind: str) -> list:
        return list(groups)

    def evidence(self, model: nn.Module, groups: Sequence[UnitGroup], observed: Mapping) -> dict[str, Evidence]:
        return {
            group.name: head_evidence(model, group, Signal(mean_abs=observed[group.name]) if observed else None)
            for group in groups
        }

    def remove(self, model: nn.Module, groups: Sequence[UnitGroup], keep: Keep, example_inputs: object,
               check: bool = True) -> ShrinkRecord:
        return shrink_heads(model, dict(keep), list(groups))

    def unit_magnitude(self, model: nn.Module, groups: Sequence[UnitGroup]) -> dict[str, torch.Tensor]:
        """Per group, the summed |w| of each unit's query/key/value output slices."""
        weights = dict(named_effective_parameters(model))
        magnitudes = {}
        for group in groups:
            total = torch.zeros(group.num_units, dtype=torch.float64)
            for role, slices, unit_index in _unit_slices(model, group, weights):
                owned = unit_index >= 0
                if role == "in":
                    total.index_add_(0, unit_index[owned], slices.abs().sum(1).double()[owned])
            magnitudes[group.name] = total
        return magnitudes
