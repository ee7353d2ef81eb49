"""Registry of granularities: what one unit is (see ``base.py`` for the interface).

>>> get_granularity("channel").unit, get_granularity("unstructured").removable
('channel', False)
"""

from __future__ import annotations

from types import MappingProxyType

from prunekit.errors import unknown_name
from prunekit.granularity.base import Granularity, kept_from_masks
from prunekit.granularity.heads import HeadGranularity
from prunekit.granularity.layers import LayerGranularity
from prunekit.granularity.units import UnitGranularity
from prunekit.granularity.unstructured import UnstructuredGranularity

GRANULARITIES: MappingProxyType = MappingProxyType({granularity.name: granularity for granularity in (
    UnstructuredGranularity(),
    UnitGranularity("neuron", "neuron", frozenset({"activation.zero_fraction"})),
    UnitGranularity("channel", "channel", frozenset({"activation.zero_fraction", "norm_scale"})),
    UnitGranularity("lstm-unit", "lstm-unit"),
    HeadGranularity(),
    LayerGranularity(),
)})


def get_granularity(name: str) -> Granularity:
    """The granularity registered as `name` (an error naming the choices otherwise)."""
    if name not in GRANULARITIES:
        raise unknown_name("granularity", name, GRANULARITIES)
    return GRANULARITIES[name]


__all__ = ["GRANULARITIES", "Granularity", "get_granularity", "kept_from_masks"]
