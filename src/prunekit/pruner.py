"""The one-call API: ``prune(model, method=..., sparsity=...)`` and its composable steps.

Pipeline: (stats) -> scores -> select -> masks -> apply. Everything the caller passed is
validated before the model is touched, so a failed call leaves the model exactly as it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from prunekit.criteria import Criterion, get_weight_criterion
from prunekit.criteria.structured import UnitCriterion, get_unit_criterion
from prunekit.errors import PrunekitError, unknown_name
from prunekit.masking import apply_masks, get_masks, named_effective_parameters, original_parameter
from prunekit.select import SCOPES, select_by_ratio, select_by_threshold
from prunekit.stats import LossFn, collect_gradient_stats
from prunekit.targets import ExcludeItem, resolve_targets
from prunekit.types import ParamStats, PruneResult

STRUCTURED = ("neuron", "channel", "lstm-unit", "head", "layer")
#: Granularities that trace the model (torch-pruning's dependency graph) and so need example_inputs.
TRACED = ("neuron", "channel", "lstm-unit")
GRANULARITIES = ("unstructured", *STRUCTURED)


def compute_scores(
    model: nn.Module,
    criterion: Criterion,
    targets: Iterable[str],
    stats: Mapping[str, ParamStats] | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Score every target weight; entries already masked out score -inf so they stay pruned.

    >>> model = nn.Linear(3, 1)
    >>> scores = compute_scores(model, get_weight_criterion("magnitude"), ["weight"])
    >>> bool((scores["weight"] == model.weight.abs()).all())
    True
    """
    generator = torch.Generator().manual_seed(seed)
    effective = dict(named_effective_parameters(model))
    existing = get_masks(model)
    scores = {}
    for name in targets:
        score = criterion.score(effective[name], (stats or {}).get(name), generator).float()
        if name in existing:
            score = score.masked_fill(~existing[name].to(score.device), -math.inf)
        scores[name] = score
    return scores


def validate_request(
    model: nn.Module,
    method: str,
    granularity: str,
    sparsity: float | None,
    scope: str,
    threshold: float | None,
    data: object,
    example_inputs: object = None,
    round_to: int | None = None,
) -> Criterion | UnitCriterion:
    """Check the options of a :func:`prune` call without touching `model`; returns the criterion.

    >>> validate_request(nn.Linear(2, 2), "magnitude", "unstructured", 0.5, "layer", None, None).name
    'magnitude'
    """
    if granularity not in GRANULARITIES:
        raise unknown_name("granularity", granularity, GRANULARITIES)
    if granularity == "unstructured":
        criterion = get_weight_criterion(method)
    else:
        criterion = get_unit_criterion(method, granularity)
        if threshold is not None:
            raise PrunekitError(
                f"granularity '{granularity}' selects units by ratio only; pass sparsity= "
                "(the fraction of units to remove) instead of threshold="
            )
        if granularity == "layer" and round_to is not None:
            raise PrunekitError("round_to rounds unit counts inside a layer; it does not apply to granularity 'layer'")
        if example_inputs is None and granularity in TRACED:
            raise PrunekitError(
                f"granularity '{granularity}' traces the model to find coupled layers; pass "
                "example_inputs=<a small batch of real inputs>"
            )
    if (sparsity is None) == (threshold is None):
        raise PrunekitError(
            "give exactly one of sparsity= (fraction of weights to remove) or threshold= "
            f"(remove scores below it); got sparsity={sparsity!r}, threshold={threshold!r}"
        )
    if sparsity is not None and not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise PrunekitError(f"sparsity must be a number in [0, 1), got {sparsity!r}; 0.9 removes 90%")
    if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise PrunekitError(f"threshold must be a finite number, got {threshold!r}")
    if scope not in SCOPES:
        raise unknown_name("scope", scope, SCOPES)
    if criterion.needs is not None and data is None:
        raise PrunekitError(
            f"method '{method}' needs data (it scores by {criterion.needs}): pass "
            "data=<iterable of (inputs, targets) batches>, e.g. a DataLoader over training data"
        )
    return criterion


def _check_finite(model: nn.Module, targets: Iterable[str]) -> None:
    for name in targets:
        values = original_parameter(model, name)
        if not torch.isfinite(values).all():
            raise PrunekitError(
                f"parameter '{name}' contains NaN or Inf values; fix or retrain the model before "
                "pruning (scores of non-finite weights are meaningless)"
            )


def prune(
    model: nn.Module,
    method: str = "magnitude",
    sparsity: float | None = None,
    granularity: str = "unstructured",
    scope: str = "layer",
    threshold: float | None = None,
    data: Iterable | None = None,
    loss_fn: LossFn | None = None,
    example_inputs: torch.Tensor | None = None,
    exclude: Iterable[ExcludeItem] = (),
    seed: int = 0,
    num_batches: int = 8,
    round_to: int | None = None,
    remove: bool = True,
) -> PruneResult:
    """Prune `model` in place and report what changed.

    Unstructured: masks are attached through parametrizations and stay through fine-tuning; call
    :func:`prunekit.bake` for a plain model. A second call prunes further (sparsity is the total).

    Structured (``granularity="neuron" | "channel" | "lstm-unit" | "head" | "layer"``):
    `sparsity` is the fraction of units removed (neurons, channels, LSTM hidden units, attention
    heads, or whole blocks); with ``remove=True`` (default) they are removed physically, so the
    model really gets smaller and faster (``result.shrink_record`` replays the removal on a fresh
    model, see :func:`prunekit.graph.replay`); with ``remove=False`` they are masked to zero
    instead. neuron/channel/lstm-unit trace the model and need `example_inputs`; ``"layer"``
    removes the identity-shortcut residual blocks / transformer layers whose removal costs least
    (``method="removal-cost"`` measures that on `data`) and always keeps one.

    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> result = prune(model, method="magnitude", sparsity=0.5, scope="global")
    >>> round(result.sparsity_achieved, 2)
    0.5
    """
    start = time.perf_counter()
    criterion = validate_request(model, method, granularity, sparsity, scope, threshold, data, example_inputs,
                                 round_to)
    if granularity != "unstructured":
        from prunekit.depth import prune_layers
        from prunekit.structured import UnitRequest, prune_units

        request = UnitRequest(granularity, float(sparsity), scope, tuple(exclude), seed, round_to, remove, num_batches)
        prune_structure = prune_layers if granularity == "layer" else prune_units
        return prune_structure(model, criterion, request, data, loss_fn, example_inputs, start)
    targets = resolve_targets(model, exclude)
    _check_finite(model, targets)
    stats = None
    if criterion.needs == "gradients":
        stats = collect_gradient_stats(model, data, targets, loss_fn, num_batches)
    nonzero_before = _count_nonzero(model, targets)
    scores = compute_scores(model, criterion, targets, stats, seed)
    if sparsity is not None:
        masks = select_by_ratio(scores, float(sparsity), scope)
    else:
        masks = select_by_threshold(scores, float(threshold))
    apply_masks(model, masks)
    return _result(model, method, granularity, scope, sparsity, threshold, targets, nonzero_before, start)


def _count_nonzero(model: nn.Module, targets: Iterable[str]) -> int:
    effective = dict(named_effective_parameters(model))
    return sum(int(torch.count_nonzero(effective[name])) for name in targets)


def _result(
    model: nn.Module,
    method: str,
    granularity: str,
    scope: str,
    sparsity: float | None,
    threshold: float | None,
    targets: list[str],
    nonzero_before: int,
    start: float,
) -> PruneResult:
    masks = get_masks(model)
    effective = dict(named_effective_parameters(model))
    pruned_magnitude = total_magnitude = 0.0
    layer_sparsity = {}
    for name in targets:
        original = original_parameter(model, name).detach().abs()
        total_magnitude += float(original.sum())
        if name in masks:
            pruned_magnitude += float(original[~masks[name]].sum())
        layer_sparsity[name] = 1.0 - int(torch.count_nonzero(effective[name])) / effective[name].numel()
    return PruneResult(
        method=method,
        granularity=granularity,
        scope=scope,
        sparsity_target=sparsity,
        threshold=threshold,
        targets=list(targets),
        params_targeted=sum(effective[name].numel() for name in targets),
        nonzero_before=nonzero_before,
        nonzero_after=_count_nonzero(model, targets),
        relative_sparsity=pruned_magnitude / total_magnitude if total_magnitude else 0.0,
        seconds=time.perf_counter() - start,
        layer_sparsity=layer_sparsity,
        masks={name: masks[name] for name in targets if name in masks},
    )
