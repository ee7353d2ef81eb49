"""Hybrid pruning: remove whole units first (real speed), then zero weights in what remains."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.layers import unit_granularity
from prunekit.masking import named_effective_parameters
from prunekit.pruner import prune
from prunekit.request import PruneOptions, PruneRequest, validate_request
from prunekit.stats import LossFn
from prunekit.targets import ExcludeItem, resolve_targets
from prunekit.types import PruneResult


HYBRID_GRANULARITIES = ("neuron", "channel", "lstm-unit", "head")


def default_structured_granularity(model: nn.Module) -> str:
    """``"channel"`` for models with convolutions, else ``"neuron"``.

    >>> default_structured_granularity(nn.Sequential(nn.Linear(2, 2)))
    'neuron'
    """
    has_conv = any(unit_granularity(module) == "channel" for module in model.modules())
    return "channel" if has_conv else "neuron"


def _targeted_weights(model: nn.Module, exclude: Iterable[ExcludeItem]) -> tuple[int, int, float]:
    """(count, nonzero count, summed |w|) over the weights unstructured pruning targets."""
    effective = dict(named_effective_parameters(model))
    targets = resolve_targets(model, exclude)
    with torch.no_grad():
        return (sum(effective[name].numel() for name in targets),
                sum(int(torch.count_nonzero(effective[name])) for name in targets),
                sum(float(effective[name].abs().sum()) for name in targets))


def prune_hybrid(
    model: nn.Module,
    unit_method: str,
    unit_sparsity: float,
    weight_method: str,
    weight_sparsity: float,
    example_inputs: torch.Tensor,
    granularity: str | None = None,
    scope: str = "global",
    data: Iterable | None = None,
    loss_fn: LossFn | None = None,
    exclude: Iterable[ExcludeItem] = (),
    seed: int = 0,
) -> PruneResult:
    """Structured removal to `unit_sparsity`, then unstructured pruning of the remaining weights
    to `weight_sparsity`, each with its own criterion; one combined result.

    ``result.sparsity_achieved`` is the share of the dense model's targeted weights that are gone
    (removed with their unit, or zeroed); ``relative_sparsity`` the share of their magnitude. The
    combined result is the weight stage's, with the counts taken over the dense model.

    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> result = prune_hybrid(model, "l1", 0.5, "magnitude", 0.5, torch.ones(1, 8))
    >>> model[0].out_features, round(result.sparsity_achieved, 2)
    (8, 0.75)
    """
    if granularity is None:
        granularity = default_structured_granularity(model)
    if granularity not in HYBRID_GRANULARITIES:
        raise PrunekitError(
            f"hybrid pruning removes {', '.join(HYBRID_GRANULARITIES)} units first, not '{granularity}'"
        )
    exclude = tuple(exclude)
    options = PruneOptions(loss_fn=loss_fn, exclude=exclude, seed=seed)
    # both stages are checked before the first one touches the model
    validate_request(PruneRequest(unit_method, granularity, scope, unit_sparsity, None, options), data, example_inputs)
    validate_request(PruneRequest(weight_method, "unstructured", scope, weight_sparsity, None, options), data, None)
    targeted_dense, nonzero_dense, magnitude_dense = _targeted_weights(model, exclude)
    structured = prune(model, method=unit_method, sparsity=unit_sparsity, granularity=granularity, scope=scope,
                       data=data, loss_fn=loss_fn, example_inputs=example_inputs, exclude=exclude, seed=seed)
    weights = prune(model, method=weight_method, sparsity=weight_sparsity, scope=scope, data=data,
                    loss_fn=loss_fn, exclude=exclude, seed=seed)
    magnitude_left = _targeted_weights(model, exclude)[2]  # removed and zeroed weights both count as pruned
    return replace(
        weights, method=f"{unit_method}+{weight_method}", granularity="hybrid",
        units_targeted=targeted_dense, units_before=nonzero_dense,
        relative_sparsity=1.0 - magnitude_left / magnitude_dense if magnitude_dense else 0.0,
        seconds=structured.seconds + weights.seconds,
        layer_sparsity={**{f"{name} ({granularity})": value for name, value in structured.layer_sparsity.items()},
                        **weights.layer_sparsity},
        params_before=structured.params_before, params_after=structured.params_after,
        shrink_record=structured.shrink_record,
    )
