"""Coupled structural units and their physical removal (on torch-pruning's dependency graph).

    find_unit_groups -> score members -> keep_units -> unit_masks_to_param_masks (masked model)
                                                    -> shrink -> ShrinkRecord -> replay (rebuild)

Heads (heads.py: find_head_groups, shrink_heads) and whole blocks (layers.py:
find_layer_candidates, remove_layers) return the same ShrinkRecord, and ``replay`` rebuilds any mix.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
>>> x = torch.randn(3, 6)
>>> (group,) = find_unit_groups(model, x, "neuron")     # the output layer is never offered
>>> keep = {group.name: torch.arange(group.num_units) < 5}
>>> record = shrink(model, x, keep, [group])
>>> model[0].out_features, record.to_dict()["steps"][0]["removed"]
(5, [5, 6, 7])
"""

from prunekit.graph.masks import unit_masks_to_param_masks, validate_keep_units
from prunekit.graph.rebuild import replay
from prunekit.graph.record import ShrinkRecord
from prunekit.graph.shrink import shrink
from prunekit.graph.types import GRANULARITIES, Member, UnitGroup
from prunekit.graph.units import find_unit_groups

__all__ = [
    "GRANULARITIES",
    "Member",
    "ShrinkRecord",
    "UnitGroup",
    "find_unit_groups",
    "replay",
    "shrink",
    "unit_masks_to_param_masks",
    "validate_keep_units",
]
