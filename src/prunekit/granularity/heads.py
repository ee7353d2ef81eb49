"""Attention heads: one group per attention module (``prunekit.layers.attention`` layouts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from torch import nn

from prunekit.graph.heads import find_head_groups, shrink_heads
from prunekit.graph.record import ShrinkRecord
from prunekit.graph.types import UnitGroup
from prunekit.granularity.base import Granularity, Keep, refuse_if_empty
from prunekit.granularity.evidence import weight_evidence
from prunekit.types import Evidence, Signal


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
            group.name: weight_evidence(model, group, Signal(mean_abs=observed[group.name]) if observed else None)
            for group in groups
        }

    def remove(self, model: nn.Module, groups: Sequence[UnitGroup], keep: Keep, example_inputs: object,
               check: bool = True) -> ShrinkRecord:
        return shrink_heads(model, dict(keep), list(groups))
