"""One pruning pass, the same for every granularity:

    stats -> evidence -> scores -> select -> masks -> (remove)

and the one place a ``PruneResult`` is built. The granularity says what the units are and how
they map to parameters; the criterion scores them; ``select`` picks what goes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from prunekit import stats
from prunekit.criteria import Criterion
from prunekit.distributed import check_masks_agree
from prunekit.gates import gate_scores
from prunekit.graph.record import ShrinkRecord
from prunekit.graph.types import UnitGroup
from prunekit.granularity import Granularity
from prunekit.layers.hf_mlp import sync_ffn_config
from prunekit.mask_carry import remove_carrying_masks
from prunekit.masking import apply_masks, get_masks, named_effective_parameters
from prunekit.metrics import count_params
from prunekit.request import PruneRequest, require_example_inputs
from prunekit.select import SelectionRule, keep_highest, select
from prunekit.state import preserved_state
from prunekit.types import PruneResult


@dataclass(frozen=True)
class Pass:
    """One pruning pass: the request, its granularity and criterion, and where evidence comes from."""

    request: PruneRequest
    granularity: Granularity
    criterion: Criterion
    data: Iterable | None = None
    example_inputs: object = None
    observed: Mapping | None = None  # evidence gathered elsewhere (a training loop), used instead of `data`


@dataclass
class _Before:
    present: dict[str, torch.Tensor]
    magnitude: dict[str, torch.Tensor]
    params: int | None
    started: float


def score_units(model: nn.Module, step: Pass, groups: Sequence[UnitGroup],
                kept: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every unit's score (higher = keep); units the masks already removed (not `kept`) score -inf."""
    granularity, criterion, options = step.granularity, step.criterion, step.request.options
    observed = {}
    if step.observed is not None:
        observed = step.observed
    elif criterion.needs is not None:
        kind = granularity.collectors[criterion.needs]
        probes = granularity.probes(model, groups, kind)
        source = step.example_inputs if kind in stats.INPUT_ONLY else step.data
        observed = stats.collect(kind, model, probes, source, options.loss_fn, options.num_batches)
    evidence = granularity.evidence(model, groups, observed)
    if criterion.reads == "gate":
        gates = gate_scores(model, groups)
        evidence = {name: replace(item, gate=gates[name]) for name, item in evidence.items()}
    if criterion.reads == "predicted":  # a trained MaskPredictor reads the weights and gradients just gathered
        predicted = options.predictor.predict_evidence(model, evidence)
        evidence = {name: replace(item, predicted=predicted[name]) for name, item in evidence.items()}
    generator = torch.Generator().manual_seed(options.seed)
    scores = {}
    for group in groups:
        score = criterion.score(evidence[group.name], generator).float().cpu().reshape(group.unit_shape)
        scores[group.name] = score.masked_fill(~kept[group.name].reshape(group.unit_shape), -math.inf)
    return scores


def choose_units(step: Pass, groups: Sequence[UnitGroup], scores: Mapping[str, torch.Tensor],
                 kept: Mapping[str, torch.Tensor], sparsity: float | None,
                 threshold: float | None = None,
                 layer_sparsity: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks per group for the target `sparsity` (or the request's threshold). With both a
    `threshold` and a `sparsity`, units scoring below the threshold go, but no more than
    `sparsity` of them (the lowest scores first): the sparsity is a cap. `layer_sparsity` gives
    the groups it names their own targets (layer scope)."""
    request, granularity = step.request, step.granularity
    threshold = threshold if threshold is not None else request.threshold
    rule = SelectionRule(
        sparsity=sparsity, threshold=threshold if sparsity is None else None, scope=request.scope,
        min_keep=granularity.min_keep, round_to=request.options.round_to,
        normalize=granularity.normalize and not step.criterion.comparable,
        layer_sparsity=layer_sparsity, pattern=request.options.pattern,
        layouts={group.name: group.layout for group in groups},
    )
    keep = select(scores, rule)
    if threshold is not None and sparsity is not None:
        below = select(scores, replace(rule, sparsity=None, threshold=threshold))
        keep = {name: keep[name] | below[name] for name in keep}  # the cap keeps what the ratio keeps
    chosen = {group.name: keep[group.name] & kept[group.name].reshape(group.unit_shape) for group in groups}
    return with_floor(granularity, groups, chosen, scores)


def with_floor(granularity: Granularity, groups: Sequence[UnitGroup], keep: Mapping[str, torch.Tensor],
               scores: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """`keep`, with every group keeping at least the granularity's `min_keep` units: masks may have
    taken every unit already, and a layer may not lose all of them. The best-scored units (the
    first ones without `scores`) make up the floor; they stay masked."""
    floored = dict(keep)
    for group in groups:
        floor = min(granularity.min_keep, group.num_units)
        if int(keep[group.name].sum()) < floor:
            ranking = scores[group.name] if scores is not None else torch.zeros(group.unit_shape)
            floored[group.name] = keep[group.name] | keep_highest(ranking, floor)
    return floored


def prune_pass(model: nn.Module, step: Pass, groups: Sequence[UnitGroup], sparsity: float | None,
               owner: str | None, threshold: float | None = None, *,
               layer_sparsity: Mapping[str, float] | None = None) -> PruneResult:
    """Prune `model` in place to `sparsity` (None: the request's threshold) over `groups`; a
    `threshold` as well removes units scoring below it, `sparsity` then being the cap. With
    `layer_sparsity` each group named there goes to its own target (`sparsity` is then the
    overall target, for the result).

    Everything is computed and validated before the model changes: masks are built (or the
    removal rehearsed) first. With ``request.options.remove`` the units go physically (masks
    already on the model are carried along), else they are masked; masks belong to `owner`.
    """
    granularity = step.granularity
    remove = step.request.options.remove and granularity.removable
    with preserved_state(model):
        model.eval()  # statistics, tracing and shape checks must not move BatchNorm statistics
        before = measure_before(model, granularity, groups)
        kept = granularity.kept(model, groups)
        scores = score_units(model, step, groups, kept)
        keep = choose_units(step, groups, scores, kept, sparsity, threshold, layer_sparsity)
        check_masks_agree(keep, f"{granularity.unit} keep-masks")  # torch.distributed: every rank chose the same
        masks = None if remove else granularity.to_masks(model, groups, keep)
    record = None
    if masks is None:
        record = remove_units(model, granularity, groups, keep, step.example_inputs, owner)
    else:
        with preserved_state(model):
            apply_masks(model, masks, owner)
    with preserved_state(model):
        model.eval()  # counted as deployed: learned gates (prunekit.gates) deterministic, not sampled
        present = keep if record is not None else granularity.present(model, groups)
        return build_result(model, step.request, granularity, groups, before, present, record, sparsity)


def attach_full_masks(model: nn.Module, groups: Sequence[UnitGroup], owner: str | None) -> None:
    """Attach an all-True keep-mask (owned by `owner`) to every parameter of `groups` that has
    none yet, so later passes only change mask values in place. DistributedDataParallel hooks
    each parameter's gradient accumulator when it is built, and attaching a parametrization
    afterwards gives the parameter a new one (DDP would wait for gradients that never come):
    under DDP the masks must be there before the wrapper is built.

    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> from prunekit.granularity import get_granularity
    >>> attach_full_masks(model, get_granularity("unstructured").find(model, None, ()), None)
    >>> {name: bool(mask.all()) for name, mask in get_masks(model).items()}
    {'0.weight': True}
    """
    masked = set(get_masks(model))
    shapes = {name: tensor.shape for name, tensor in named_effective_parameters(model)}
    names = [name for group in groups for name in (group.params or (group.name,))]
    full = {name: torch.ones(shapes[name], dtype=torch.bool) for name in names if name in shapes and name not in masked}
    apply_masks(model, full, owner)


def remove_units(model: nn.Module, granularity: Granularity, groups: Sequence[UnitGroup],
                 keep: Mapping[str, torch.Tensor], example_inputs: object, owner: str | None = None) -> ShrinkRecord:
    """Remove the units with ``keep == False`` physically, carrying the masks on the model along
    (masks of a live Pruner other than `owner` are refused). A Hugging Face model's config gets
    the new FFN width when every block has the same one (``prunekit.layers.hf_mlp``)."""
    require_example_inputs(granularity, example_inputs, f"removing {granularity.unit} units")
    with preserved_state(model):  # removal traces the model: no mode or RNG change may leak
        record = remove_carrying_masks(
            model, lambda target, check: granularity.remove(target, groups, keep, example_inputs, check), owner)
    sync_ffn_config(model)  # a Hugging Face config that counts the FFN width follows it (save_pretrained)
    return record


def measure_before(model: nn.Module, granularity: Granularity, groups: Sequence[UnitGroup]) -> _Before:
    """What ``build_result`` compares with: the units present and their magnitudes before a
    pass, the parameter count (removable granularities) and the start time."""
    return _Before(granularity.present(model, groups), granularity.unit_magnitude(model, groups),
                   count_params(model)[0] if granularity.removable else None, time.perf_counter())


def build_result(model: nn.Module, request: PruneRequest, granularity: Granularity, groups: Sequence[UnitGroup],
                 before: _Before, present: Mapping[str, torch.Tensor], record: ShrinkRecord | None,
                 sparsity: float | None) -> PruneResult:
    """The ``PruneResult`` of one pass (the only place one is made; ``prunekit.one_shot`` uses it too)."""
    total_magnitude = sum(float(before.magnitude[g.name].sum()) for g in groups)
    gone_magnitude = sum(float(before.magnitude[g.name][~present[g.name].reshape(before.magnitude[g.name].shape).cpu()].sum())
                         for g in groups)
    layer_sparsity = {}
    for group in groups:
        alive = present[group.name].reshape(-1).cpu()
        if group.unit_names:
            layer_sparsity.update({name: float(not kept) for name, kept in zip(group.unit_names, alive.tolist())})
        else:
            layer_sparsity[group.name] = 1.0 - int(alive.sum()) / max(group.num_units, 1)
    return PruneResult(
        method=request.method, granularity=granularity.name, scope=request.scope, sparsity_target=sparsity,
        threshold=request.threshold if sparsity is None else None,
        targets=[name for group in groups for name in (group.unit_names or (group.name,))], unit=granularity.unit,
        units_targeted=sum(group.num_units for group in groups),
        units_before=sum(int(before.present[g.name].sum()) for g in groups),
        units_after=sum(int(present[g.name].sum()) for g in groups),
        relative_sparsity=gone_magnitude / total_magnitude if total_magnitude else 0.0,
        seconds=time.perf_counter() - before.started, layer_sparsity=layer_sparsity, masks=get_masks(model),
        params_before=before.params, params_after=count_params(model)[0] if before.params is not None else None,
        shrink_record=record, pattern=request.options.pattern,
    )
