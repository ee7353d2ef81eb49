"""Structured pruning: score whole units (neurons, channels, LSTM units, heads), pick, then remove.

groups (graph) -> evidence (weights / activations) -> unit scores (criteria) -> select_units
-> keep_units -> shrink (physical removal) or unit masks (the masked equivalent).
This module is the granularity layer: it is the one place that knows which member of a group is
a producer, a consumer or a normalisation layer; the criteria only see tensors.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.criteria.structured import ActivationStats, UnitCriterion, UnitEvidence, scatter_to_units
from prunekit.graph import ShrinkRecord, UnitGroup, find_unit_groups, shrink, unit_masks_to_param_masks
from prunekit.graph.head_stats import mean_head_norms, recording_head_norms
from prunekit.graph.heads import find_head_groups, shrink_heads
from prunekit.graph.trace import as_call
from prunekit.errors import PrunekitError
from prunekit.masking import apply_masks, get_masks, named_effective_parameters, split_name
from prunekit.select import select_units
from prunekit.stats import ActivationPoint, LossFn, collect_activation_stats, for_each_batch
from prunekit.types import PruneResult

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def _slices(weight: torch.Tensor, dim: int) -> torch.Tensor:
    return weight.detach().movedim(dim, 0).reshape(weight.shape[dim], -1)


def weight_evidence(model: nn.Module, group: UnitGroup) -> UnitEvidence:
    """The group's incoming rows, outgoing columns and normalisation scales, per unit."""
    params = dict(named_effective_parameters(model))
    incoming, outgoing = [], []
    norm_scale = None
    for member in group.members:
        module = model.get_submodule(split_name(member.param)[0])
        weight = params[member.param]
        if isinstance(module, _NORMS):
            if member.param.endswith("weight"):
                scale = scatter_to_units(weight.detach().abs(), member.unit_index, group.num_units)
                norm_scale = scale if norm_scale is None else norm_scale + scale
        elif weight.dim() >= 2:
            target = incoming if member.dim == 0 else outgoing
            target.append((_slices(weight, member.dim), member.unit_index))
    return UnitEvidence(group.num_units, tuple(incoming), tuple(outgoing), norm_scale)


def activation_points(model: nn.Module, group: UnitGroup) -> list[tuple[ActivationPoint, torch.Tensor]]:
    """Where the group's unit activations are observed, with each channel's unit index.

    After a normalisation layer when the group has one (that is what the next layer sees),
    else at the producers' outputs.
    """
    norms, producers = [], []
    for member in group.members:
        module_name = split_name(member.param)[0]
        module = model.get_submodule(module_name)
        if isinstance(module, _NORMS) and member.param.endswith("weight"):
            norms.append((ActivationPoint(module_name, 1), member.unit_index))
        elif isinstance(module, nn.RNNBase) and module_name == group.name and member.dim == 0:
            producers.append((ActivationPoint(module_name, -1), group.root_unit_index))
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and member.dim == 0 \
                and member.param.endswith("weight"):
            channel_dim = -1 if isinstance(module, nn.Linear) else 1
            producers.append((ActivationPoint(module_name, channel_dim), member.unit_index))
    chosen = norms or producers
    unique = {point.module_name: (point, index) for point, index in chosen}
    return list(unique.values())


@dataclass
class UnitPlan:
    """What a structured call decided: groups, their unit scores and the units to keep."""

    groups: list[UnitGroup]
    scores: dict[str, torch.Tensor]
    keep_units: dict[str, torch.Tensor]


def _head_evidence(model: nn.Module, groups: list[UnitGroup], data: Iterable, num_batches: int) -> dict[str, ActivationStats]:
    """Heads: the mean norm of each head's contribution to its attention output."""
    with recording_head_norms(model, groups) as totals, torch.no_grad():
        for_each_batch(model, data, num_batches, lambda inputs, _: as_call(inputs)(model))
    norms = mean_head_norms(totals, groups)
    return {name: ActivationStats(norm, torch.zeros_like(norm)) for name, norm in norms.items()}


def _activation_evidence(
    model: nn.Module, groups: list[UnitGroup], criterion: UnitCriterion, data: Iterable,
    loss_fn: LossFn | None, num_batches: int,
) -> dict[str, ActivationStats]:
    if groups and groups[0].granularity == "head":
        return _head_evidence(model, groups, data, num_batches)
    placements = {group.name: activation_points(model, group) for group in groups}
    points = {point.module_name: point for pairs in placements.values() for point, _ in pairs}
    observed = collect_activation_stats(model, data, list(points.values()), loss_fn, num_batches,
                                        gradients=criterion.needs == "gradients")
    evidence = {}
    for group in groups:
        per_unit: dict[str, torch.Tensor] = {}
        for point, unit_index in placements[group.name]:
            for key, per_channel in observed[point.module_name].items():
                per_unit[key] = per_unit.get(key, 0) + scatter_to_units(per_channel, unit_index, group.num_units)
        evidence[group.name] = ActivationStats(
            per_unit["mean_abs"], per_unit["zero_fraction"], per_unit.get("grad_abs"), per_unit.get("taylor")
        )
    return evidence


def plan_units(
    model: nn.Module,
    criterion: UnitCriterion,
    groups: list[UnitGroup],
    sparsity: float,
    scope: str = "layer",
    data: Iterable | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    round_to: int | None = None,
    num_batches: int = 8,
) -> UnitPlan:
    """Score every unit of every group with `criterion` and choose the units to keep."""
    activations = {}
    if criterion.needs is not None:
        activations = _activation_evidence(model, groups, criterion, data, loss_fn, num_batches)
    generator = torch.Generator().manual_seed(seed)
    scores = {}
    for group in groups:
        evidence = weight_evidence(model, group)
        if group.name in activations:
            evidence = UnitEvidence(evidence.num_units, evidence.incoming, evidence.outgoing,
                                    evidence.norm_scale, activations[group.name])
        scores[group.name] = criterion.score(evidence, generator).float()
    return UnitPlan(groups, scores, select_units(scores, sparsity, scope, round_to))


def apply_plan(model: nn.Module, plan: UnitPlan, example_inputs: object, remove: bool) -> ShrinkRecord | None:
    """Remove the planned units physically (returns the replayable record) or mask them."""
    heads = bool(plan.groups) and plan.groups[0].granularity == "head"
    if remove and heads:
        return shrink_heads(model, plan.keep_units, plan.groups)
    if remove:
        return shrink(model, example_inputs, plan.keep_units, plan.groups)
    apply_masks(model, unit_masks_to_param_masks(model, plan.groups, plan.keep_units))
    return None


def unit_groups(model: nn.Module, example_inputs: object, granularity: str, exclude: Iterable = ()) -> list[UnitGroup]:
    """The removable unit groups of `model` for a structured granularity (see prunekit.graph)."""
    if granularity == "head":
        return find_head_groups(model, exclude)
    return find_unit_groups(model, example_inputs, granularity, exclude)


def count_units(plan: UnitPlan) -> tuple[int, int]:
    """(units considered, units kept) over all groups of a plan."""
    total = sum(group.num_units for group in plan.groups)
    kept = sum(int(keep.sum()) for keep in plan.keep_units.values())
    return total, kept


def relative_unit_sparsity(plan: UnitPlan, model_weights: Mapping[str, torch.Tensor]) -> float:
    """Share of the groups' incoming weight magnitude that belongs to removed units."""
    pruned = total = 0.0
    for group in plan.groups:
        removed = ~plan.keep_units[group.name]
        for member in group.members:
            weight = model_weights[member.param]
            if member.dim != 0 or weight.dim() < 2:
                continue
            per_slice = _slices(weight, member.dim).abs().sum(1)
            owned = member.unit_index >= 0
            total += float(per_slice[owned].sum())
            pruned += float(per_slice[owned & removed[member.unit_index.clamp(min=0)]].sum())
    return pruned / total if total else 0.0


@dataclass(frozen=True)
class UnitRequest:
    """The options of one structured pruning call (validated by ``prunekit.prune``)."""

    granularity: str
    sparsity: float
    scope: str = "layer"
    exclude: tuple = ()
    seed: int = 0
    round_to: int | None = None
    remove: bool = True
    num_batches: int = 8


def prune_units(
    model: nn.Module,
    criterion: UnitCriterion,
    request: UnitRequest,
    data: Iterable | None,
    loss_fn: LossFn | None,
    example_inputs: object,
    start: float,
) -> PruneResult:
    """The structured branch of :func:`prunekit.prune` (see its docstring)."""
    if request.remove and get_masks(model):
        raise PrunekitError(
            "the model carries pruning masks; physical removal needs plain weights: call "
            "prunekit.bake(model) first, or pass remove=False to mask units instead"
        )
    groups = unit_groups(model, example_inputs, request.granularity, request.exclude)
    if not groups:
        raise PrunekitError(
            f"found no removable {request.granularity} units in {type(model).__name__} (the output "
            "layer and excluded layers are never removed); check the granularity for this model"
        )
    weights_before = {name: tensor.detach().clone() for name, tensor in named_effective_parameters(model)}
    params_before = sum(tensor.numel() for tensor in weights_before.values())
    plan = plan_units(model, criterion, groups, request.sparsity, request.scope, data, loss_fn,
                      request.seed, request.round_to, request.num_batches)
    record = apply_plan(model, plan, example_inputs, request.remove)
    total, kept = count_units(plan)
    return PruneResult(
        method=criterion.name, granularity=request.granularity, scope=request.scope,
        sparsity_target=request.sparsity, threshold=None, targets=[group.name for group in groups],
        params_targeted=total, nonzero_before=total, nonzero_after=kept,
        relative_sparsity=relative_unit_sparsity(plan, weights_before),
        seconds=time.perf_counter() - start,
        layer_sparsity={name: 1.0 - float(keep.float().mean()) for name, keep in plan.keep_units.items()},
        masks=get_masks(model), unit=request.granularity,
        params_before=params_before, params_after=sum(t.numel() for _, t in named_effective_parameters(model)),
        shrink_record=record,
    )
