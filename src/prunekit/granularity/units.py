"""Neurons, channels and LSTM hidden units: coupled groups found on the dependency graph."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from torch import nn

from prunekit.graph import find_unit_groups, shrink
from prunekit.graph.record import ShrinkRecord
from prunekit.graph.types import UnitGroup
from prunekit.granularity.base import Granularity, Keep
from prunekit.granularity.evidence import activation_points, signals_from_channels, weight_evidence
from prunekit.types import Evidence

_SIGNALS = frozenset({"activation.mean_abs", "activation.grad_abs", "signal.taylor", "gate"})


class UnitGranularity(Granularity):
    """Output units of one kind of layer (see ``prunekit.layers``: a handler's
    ``unit_granularity``), removed together with everything coupled to them.

    >>> import torch
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> [group.name for group in UnitGranularity("neuron", "neuron").find(model, torch.ones(1, 4), ())]
    ['0']
    """

    collectors = MappingProxyType({"activations": "activations", "gradients": "activation-gradients"})
    needs_example_inputs = True

    def __init__(self, name: str, unit: str, provides: frozenset[str] = frozenset()) -> None:
        self.name, self.unit = name, unit
        self.provides = frozenset({"incoming"}) | _SIGNALS | provides

    def find(self, model: nn.Module, example_inputs: object, exclude: Sequence) -> list[UnitGroup]:
        return find_unit_groups(model, example_inputs, self.name, exclude, refuse_empty=True)

    def probes(self, model: nn.Module, groups: Sequence[UnitGroup], kind: str) -> list:
        points = {point.module_name: point for group in groups for point, _ in activation_points(model, group)}
        return list(points.values())

    def evidence(self, model: nn.Module, groups: Sequence[UnitGroup], observed: Mapping) -> dict[str, Evidence]:
        signals = {}
        if observed:
            placements = {group.name: activation_points(model, group) for group in groups}
            signals = signals_from_channels(placements, observed, list(groups))
        return {group.name: weight_evidence(model, group, signals.get(group.name)) for group in groups}

    def remove(self, model: nn.Module, groups: Sequence[UnitGroup], keep: Keep, example_inputs: object,
               check: bool = True) -> ShrinkRecord:
        return shrink(model, example_inputs, dict(keep), list(groups), check=check)
