"""Depth pruning: remove whole residual blocks / transformer layers (``granularity="layer"``).

candidates (graph.layers) -> evidence (removal cost on data) -> scores (criteria) -> select
-> remove_layers (physical) or layer_masks (the masked equivalent).
The unit is one block; `sparsity` is the fraction of the removable blocks taken out. Only blocks
whose removal keeps every shape are candidates (identity-shortcut residual blocks, transformer
encoder layers), so a ResNet's downsampling blocks and a plain MLP's layers are never offered.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from prunekit.criteria.structured import UnitCriterion, UnitEvidence
from prunekit.errors import PrunekitError
from prunekit.graph.layers import check_layer_removal, find_layer_candidates, layer_masks, remove_layers, score_layers
from prunekit.graph.record import ShrinkRecord
from prunekit.masking import apply_masks, get_masks, named_effective_parameters
from prunekit.stats import LossFn, for_each_batch
from prunekit.structured import UnitRequest
from prunekit.targets import excluded_module_names
from prunekit.types import PruneResult

GRANULARITY = "layer"


def layer_candidates(model: nn.Module, example_inputs: object, exclude: Iterable = ()) -> list[str]:
    """Removable blocks of `model` (module order), minus the excluded ones.

    >>> from prunekit.zoo import build_model
    >>> layer_candidates(build_model("resnet20", (1, 8, 8), 10), torch.zeros(1, 1, 8, 8), ["layer1"])
    ['layer2.1', 'layer2.2', 'layer3.1', 'layer3.2']
    """
    excluded = excluded_module_names(model, exclude)
    candidates = find_layer_candidates(model, example_inputs)
    if not candidates:
        raise PrunekitError(
            f"granularity 'layer' needs removable blocks; {type(model).__name__} has none "
            "(prunekit removes identity-shortcut residual blocks, nn.TransformerEncoderLayer and "
            "Hugging Face encoder layers). Choose 'neuron' or 'channel' for this model"
        )
    return [name for name in candidates if name not in excluded]


def mean_loss(model: nn.Module, batches: list, loss_fn: LossFn | None = None) -> float:
    """Mean of `loss_fn` (default cross-entropy) over ``(inputs, targets)`` batches, in eval mode.

    >>> model = nn.Linear(2, 2)
    >>> _ = nn.init.zeros_(model.bias)  # zero logits on zero inputs: loss ln 2
    >>> round(mean_loss(model, [(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))]), 4)
    0.6931
    """
    loss_fn = loss_fn or F.cross_entropy
    losses: list[float] = []
    with torch.no_grad():
        for_each_batch(model, batches, len(batches),
                       lambda inputs, targets: losses.append(float(loss_fn(model(inputs), targets))))
    return sum(losses) / len(losses)


def removal_costs(
    model: nn.Module, candidates: list[str], data: Iterable, loss_fn: LossFn | None = None, num_batches: int = 8
) -> torch.Tensor:
    """Per candidate, the loss increase on up to `num_batches` batches of `data` when it alone is removed."""
    batches = list(itertools.islice(iter(data), num_batches))  # the same batches for every candidate
    costs = score_layers(model, candidates, lambda net: -mean_loss(net, batches, loss_fn))
    return torch.tensor([costs[name] for name in candidates])


def choose_layers(model: nn.Module, candidates: list[str], scores: torch.Tensor, sparsity: float) -> list[str]:
    """The ``round(sparsity * len(candidates))`` lowest-scored blocks that may go together.

    Blocks are taken cheapest first; one that would empty a transformer stack, or remove the last
    candidate, is passed over for the next cheapest.
    """
    budget = min(round(sparsity * len(candidates)), len(candidates) - 1)
    chosen: list[str] = []
    for position in torch.argsort(scores, stable=True).tolist():
        if len(chosen) == budget:
            break
        trial = chosen + [candidates[position]]
        try:
            check_layer_removal(model, trial)
        except PrunekitError:
            continue
        chosen = trial
    return [name for name in candidates if name in chosen]


def _magnitude(block: nn.Module) -> float:
    return sum(float(tensor.detach().abs().sum()) for _, tensor in named_effective_parameters(block))


def prune_layers(
    model: nn.Module,
    criterion: UnitCriterion,
    request: UnitRequest,
    data: Iterable | None,
    loss_fn: LossFn | None,
    example_inputs: object,
    start: float,
) -> PruneResult:
    """The ``granularity="layer"`` branch of :func:`prunekit.prune` (see its docstring); the
    request's `scope` and `round_to` do not apply (the budget is over all candidate blocks)."""
    if request.remove and get_masks(model):
        raise PrunekitError(
            "the model carries pruning masks; removing layers needs plain weights: call "
            "prunekit.bake(model) first, or pass remove=False to mask layers instead"
        )
    candidates = layer_candidates(model, example_inputs, request.exclude)
    if len(candidates) < 2:
        raise PrunekitError(
            f"{type(model).__name__} has {len(candidates)} removable block(s) left after exclusions; "
            "layer pruning always keeps one, so there is nothing to remove"
        )
    evidence = UnitEvidence(len(candidates))
    if criterion.needs is not None:
        evidence = UnitEvidence(len(candidates), removal_cost=removal_costs(
            model, candidates, data, loss_fn, request.num_batches))
    scores = criterion.score(evidence, torch.Generator().manual_seed(request.seed)).float()
    chosen = choose_layers(model, candidates, scores, request.sparsity)
    magnitude = {name: _magnitude(model.get_submodule(name)) for name in candidates}
    params_before = sum(tensor.numel() for _, tensor in named_effective_parameters(model))
    record = None
    if chosen and request.remove:
        record = remove_layers(model, chosen)
    elif chosen:
        apply_masks(model, layer_masks(model, chosen))
    return PruneResult(
        method=criterion.name, granularity=GRANULARITY, scope="global",
        sparsity_target=request.sparsity, threshold=None, targets=candidates,
        params_targeted=len(candidates), nonzero_before=len(candidates), nonzero_after=len(candidates) - len(chosen),
        relative_sparsity=sum(magnitude[name] for name in chosen) / max(sum(magnitude.values()), 1e-30),
        seconds=time.perf_counter() - start,
        layer_sparsity={name: float(name in chosen) for name in candidates},
        masks=get_masks(model), unit=GRANULARITY, params_before=params_before,
        params_after=sum(tensor.numel() for _, tensor in named_effective_parameters(model)),
        shrink_record=record if record is not None else (ShrinkRecord() if request.remove else None),
    )
