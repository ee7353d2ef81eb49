"""Turn scores into keep-masks: one selection for every granularity.

Scores come per group (a weight tensor, a layer's neurons, an attention module's heads, ...).
A ``SelectionRule`` says how many go: a `sparsity` ratio or an absolute `threshold`, counted per
group (``scope="layer"``) or over all groups (``"global"``), with a floor of `min_keep` units per
group, kept counts rounded to a multiple of `round_to`, and, in global scope, each group's scores
divided by the mean |score| of the group first when `normalize` is set.

Ratio selection removes exactly ``round(sparsity * n)`` entries (n per group in layer scope, over
all groups in global scope) whenever the floors allow it. The lowest scores go first; ties are
broken by position (the earlier entry stays), never by a threshold, so the achieved
sparsity never overshoots because many scores are equal (e.g. already-zero weights). Scores of
-inf (units already pruned) always go first. Adding a scope is one function in ``_SCOPES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from prunekit.errors import unknown_name

Masks = dict[str, torch.Tensor]
Scores = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class SelectionRule:
    """How many units go, and where they are counted (see the module docstring)."""

    sparsity: float | None = None
    threshold: float | None = None
    scope: str = "layer"
    min_keep: int = 0
    round_to: int | None = None
    normalize: bool = False


def _keep_count(num_units: int, num_removed: int, rule: SelectionRule) -> int:
    keep = max(num_units - num_removed, min(rule.min_keep, num_units))
    round_to = rule.round_to
    if round_to and round_to > 1 and num_units >= round_to:
        keep = max(round_to, min(num_units, round_to * round(keep / round_to)))
    return keep


def keep_highest(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask shaped like `scores` keeping the `keep` highest (ties: earlier entries stay).

    >>> keep_highest(torch.tensor([1.0, 3.0, 3.0]), 1).tolist()
    [False, True, False]
    """
    flat = scores.flatten().float()
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.argsort(flat, descending=True, stable=True)[:keep]] = True
    return mask.view(scores.shape)


def _layer_scope(scores: Scores, rule: SelectionRule) -> dict[str, int]:
    return {name: _keep_count(score.numel(), round(rule.sparsity * score.numel()), rule)
            for name, score in scores.items()}


def _normalised(score: torch.Tensor, normalize: bool) -> torch.Tensor:
    flat = score.flatten().float()
    if not normalize:
        return flat
    finite = flat[torch.isfinite(flat)]
    mean = finite.abs().mean() if finite.numel() else torch.tensor(0.0)
    return flat / mean if mean > 0 else flat


def _global_scope(scores: Scores, rule: SelectionRule) -> dict[str, int]:
    """Per group, how many units to keep when the lowest (normalised) scores over all groups go,
    never taking a group below its floor of `min_keep`."""
    flat = [_normalised(score, rule.normalize) for score in scores.values()]
    ranking = torch.cat(flat) if flat else torch.zeros(0)
    ends = torch.tensor([part.numel() for part in flat]).cumsum(0)
    for part, end in zip(flat, ends.tolist()):  # each group's best `min_keep` units are never candidates
        floor = min(rule.min_keep, part.numel())
        if floor:
            ranking[end - part.numel() + torch.argsort(part, descending=True, stable=True)[:floor]] = float("inf")
    budget = min(round(rule.sparsity * ranking.numel()), int((ranking != float("inf")).sum()))
    keep_order = torch.argsort(ranking, descending=True, stable=True)
    owners = torch.searchsorted(ends, keep_order[keep_order.numel() - budget:], right=True)
    removed = torch.bincount(owners, minlength=len(flat))
    return {name: _keep_count(score.numel(), int(removed[index]), rule)
            for index, (name, score) in enumerate(scores.items())}


_SCOPES: dict[str, Callable[[Scores, SelectionRule], dict[str, int]]] = {
    "layer": _layer_scope,
    "global": _global_scope,
}
SCOPES = tuple(_SCOPES)


def select(scores: Scores, rule: SelectionRule) -> Masks:
    """Keep-masks (True = keep), shaped like each group's scores, as `rule` says.

    >>> select({"w": torch.tensor([3.0, 1.0, 2.0, 4.0])}, SelectionRule(sparsity=0.5))["w"].tolist()
    [True, False, False, True]
    >>> select({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])},
    ...        SelectionRule(sparsity=0.5, scope="global", min_keep=1))["a"].tolist()
    [False, True]
    """
    if rule.threshold is not None:
        masks = {name: score >= rule.threshold for name, score in scores.items()}
        if rule.min_keep:
            masks = {name: mask | keep_highest(scores[name], min(rule.min_keep, mask.numel()))
                     for name, mask in masks.items()}
        return masks
    if rule.scope not in _SCOPES:
        raise unknown_name("scope", rule.scope, _SCOPES)
    keep_counts = _SCOPES[rule.scope](scores, rule)
    return {name: keep_highest(score, keep_counts[name]) for name, score in scores.items()}


def select_by_ratio(scores: Scores, sparsity: float, scope: str = "layer") -> Masks:
    """Keep-masks that remove the `sparsity` fraction of lowest-scored entries.

    >>> masks = select_by_ratio({"w": torch.tensor([3.0, 1.0, 2.0, 4.0])}, 0.5)
    >>> masks["w"].tolist()
    [True, False, False, True]
    """
    return select(scores, SelectionRule(sparsity=sparsity, scope=scope))


def select_by_threshold(scores: Scores, threshold: float) -> Masks:
    """Keep-masks that remove every entry whose score is below `threshold`.

    >>> select_by_threshold({"w": torch.tensor([0.1, 0.5, 0.05])}, 0.2)["w"].tolist()
    [False, True, False]
    """
    return select(scores, SelectionRule(threshold=threshold))


def select_units(scores: Scores, sparsity: float, scope: str = "layer", round_to: int | None = None) -> Masks:
    """Per-group unit keep-masks removing the `sparsity` fraction of lowest-scored units, as the
    structured granularities select: every group keeps at least one unit, and in global scope
    each group's scores are divided by the group's mean first.

    >>> select_units({"fc1": torch.tensor([0.1, 0.9, 0.5, 0.3])}, 0.5)["fc1"].tolist()
    [False, True, True, False]
    """
    return select(scores, SelectionRule(sparsity=sparsity, scope=scope, min_keep=1, round_to=round_to, normalize=True))
