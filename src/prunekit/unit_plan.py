"""What-if pruning: score a model's units once, then prune copies by per-group unit counts.

Sensitivity analysis and budget allocation ask "what if this layer lost k units?" many times.
:func:`plan_units` runs the first half of the pipeline (groups, evidence, scores) once, on the
model in eval mode with its state preserved; :meth:`UnitPlan.pruned_copy` then masks (or
physically removes) the lowest-scored units of a *copy*, choosing them exactly as
``prunekit.prune(..., layer_sparsity=...)`` does with the same scores. The model itself is never
changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from prunekit.graph.types import UnitGroup
from prunekit.granularity import Granularity, get_granularity
from prunekit.masking import apply_masks, copy_model, refuse_foreign_masks
from prunekit.pipeline import Pass, choose_units, remove_units, score_units
from prunekit.request import PruneOptions, PruneRequest, validate_request
from prunekit.state import preserved_state


@dataclass(frozen=True)
class UnitPlan:
    """A model's prunable groups and every unit's score (higher = keep; already-pruned units -inf)."""

    step: Pass
    groups: tuple[UnitGroup, ...]
    scores: Mapping[str, torch.Tensor]
    kept: Mapping[str, torch.Tensor]

    @property
    def granularity(self) -> Granularity:
        """The granularity whose units the plan counts."""
        return self.step.granularity

    @property
    def num_units(self) -> int:
        """Units over all groups (the denominator of overall sparsity)."""
        return sum(group.num_units for group in self.groups)

    def floor(self, group: UnitGroup) -> int:
        """How many units `group` keeps at least (the granularity's `min_keep`)."""
        return min(self.granularity.min_keep, group.num_units)

    def removed_already(self) -> dict[str, int]:
        """Per group, the units masks had removed before planning."""
        return {group.name: group.num_units - int(self.kept[group.name].sum()) for group in self.groups}

    def keep(self, removed: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Unit keep-masks when each group loses its `removed[name]` lowest-scored units in all
        (groups not named lose none beyond what was removed already; floors hold)."""
        layer_sparsity = {group.name: removed.get(group.name, 0) / group.num_units for group in self.groups}
        return choose_units(self.step, self.groups, self.scores, self.kept, 0.0, layer_sparsity=layer_sparsity)

    def removed(self, keep: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Per group, how many units `keep` removes."""
        return {group.name: group.num_units - int(keep[group.name].sum()) for group in self.groups}

    def pruned_copy(self, model: nn.Module, removed: Mapping[str, int], physically: bool = False) -> nn.Module:
        """A copy of `model` (the one planned) with the units of :meth:`keep` masked, or removed
        physically when `physically` and the granularity removes units (the deployed model)."""
        keep = self.keep(removed)
        pruned = copy_model(model)
        granularity = self.granularity
        if physically and granularity.removable:
            remove_units(pruned, granularity, self.groups, keep, self.step.example_inputs)
        else:
            with preserved_state(pruned):
                apply_masks(pruned, granularity.to_masks(pruned, self.groups, keep))
        return pruned


def plan_units(model: nn.Module, method: str | None, granularity: str, data: Iterable | None,
               example_inputs: object, options: PruneOptions) -> UnitPlan:
    """Validate a pruning request and score `model`'s units once, leaving `model` as it was.

    >>> model = nn.Sequential(nn.Linear(3, 2))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[1.0, -4.0, 2.0], [3.0, 0.5, -6.0]]))
    >>> plan = plan_units(model, None, "unstructured", None, None, PruneOptions())
    >>> plan.pruned_copy(model, {"0.weight": 2})[0].weight.tolist()
    [[0.0, -4.0, 2.0], [3.0, 0.0, -6.0]]
    """
    if method is None:
        method = get_granularity(granularity).default_method
    request = PruneRequest(method, granularity, "layer", 0.0, None, replace(options, layer_sparsity=None))
    granularity_, criterion = validate_request(request, data, example_inputs)
    refuse_foreign_masks(model, None)
    step = Pass(request, granularity_, criterion, data, example_inputs)
    with preserved_state(model):
        model.eval()  # as the pipeline scores: BatchNorm statistics must not move
        groups = tuple(granularity_.find(model, example_inputs, options.exclude))
        kept = granularity_.kept(model, groups)
        scores = score_units(model, step, groups, kept)
    return UnitPlan(step, groups, scores, kept)
