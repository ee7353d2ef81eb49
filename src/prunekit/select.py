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

Scope ``"row"`` compares weights within each output row of a weight, and ``pattern="N:M"``
keeps the N best of every M consecutive weights along the inputs (``prunekit.select_rows``);
both read each group's ``(output dim, input dim)`` from `layouts`.

``layer_sparsity`` gives layer scope a target per group (groups it does not name use
`sparsity`, or lose nothing when that is None); the per-layer budgets of ``prunekit.allocation``
arrive this way. Scope ``"lamp"`` ranks globally by LAMP scores (:func:`lamp_scores`, Lee et
al. 2021), which makes each group's scores comparable without a hand-set normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from prunekit.errors import PrunekitError, unknown_name
from prunekit.select_rows import Layouts, keep_within_rows

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
    layer_sparsity: Mapping[str, float] | None = None
    pattern: str | None = None
    layouts: Layouts | None = None


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
    targets = rule.layer_sparsity or {}
    default = rule.sparsity if rule.sparsity is not None else 0.0
    return {name: _keep_count(score.numel(), round(targets.get(name, default) * score.numel()), rule)
            for name, score in scores.items()}


def _normalised(score: torch.Tensor, normalize: bool) -> torch.Tensor:
    flat = score.flatten()
    flat = flat if flat.dtype == torch.float64 else flat.float()  # LAMP scores need float64's range
    if not normalize:
        return flat
    finite = flat[torch.isfinite(flat)]
    mean = finite.abs().mean() if finite.numel() else torch.tensor(0.0)
    return flat / mean if mean > 0 else flat


def lamp_scores(score: torch.Tensor) -> torch.Tensor:
    """LAMP score of every entry of one group (float64, shaped like `score`): its squared score
    divided by the sum of the squared scores of the group's entries scoring at least as high
    (ties count each other). The group's best entry scores 1, and the order inside the group is
    kept; negative scores count as 0 and -inf (already pruned) stays -inf.

    >>> [round(value, 4) for value in lamp_scores(torch.tensor([1.0, 3.0, 2.0])).tolist()]  # 1/14, 9/9, 4/13
    [0.0714, 1.0, 0.3077]
    """
    flat = score.flatten().double()
    finite = torch.isfinite(flat)
    squared = flat[finite].clamp(min=0) ** 2
    ascending = torch.sort(squared).values
    at_least = ascending.flip(0).cumsum(0).flip(0)  # at_least[i] = sum of ascending[i:]
    denominator = at_least[torch.searchsorted(ascending, squared)] if squared.numel() else squared
    lamp = torch.where(denominator > 0, squared / denominator.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    out = torch.full_like(flat, -math.inf)
    out[finite] = lamp
    return out.view(score.shape)


def removal_order(scores: Scores, rule: SelectionRule) -> torch.Tensor:
    """The index (in `scores`' order) of the group that loses each next unit when the lowest
    scores over all groups go first, as global scope (``rule.scope == "lamp"``: by LAMP score;
    else normalised when ``rule.normalize``) ranks them; each group's best `min_keep` units are
    left out. Global scope at sparsity s removes the first ``round(s * total)`` entries.

    >>> removal_order({"a": torch.tensor([1.0, 4.0]), "b": torch.tensor([2.0, 3.0])}, SelectionRule()).tolist()
    [0, 1, 1, 0]
    """
    if rule.scope == "lamp":
        flat = [lamp_scores(score).flatten() for score in scores.values()]
    else:
        flat = [_normalised(score, rule.normalize) for score in scores.values()]
    ranking = torch.cat(flat) if flat else torch.zeros(0)
    ends = torch.tensor([part.numel() for part in flat], dtype=torch.long).cumsum(0)
    for part, end in zip(flat, ends.tolist()):  # each group's best `min_keep` units are never candidates
        floor = min(rule.min_keep, part.numel())
        if floor:
            ranking[end - part.numel() + torch.argsort(part, descending=True, stable=True)[:floor]] = math.inf
    candidates = int((ranking != math.inf).sum())
    keep_order = torch.argsort(ranking, descending=True, stable=True)
    return torch.searchsorted(ends, keep_order[keep_order.numel() - candidates:].flip(0), right=True)


def _global_scope(scores: Scores, rule: SelectionRule) -> dict[str, int]:
    """Per group, how many units to keep when the lowest (normalised or LAMP) scores over all
    groups go, never taking a group below its floor of `min_keep`."""
    order = removal_order(scores, rule)
    total = sum(score.numel() for score in scores.values())
    removed = torch.bincount(order[:min(round(rule.sparsity * total), order.numel())], minlength=len(scores))
    return {name: _keep_count(score.numel(), int(removed[index]), rule)
            for index, (name, score) in enumerate(scores.items())}


_SCOPES: dict[str, Callable[[Scores, SelectionRule], dict[str, int]]] = {
    "layer": _layer_scope,
    "global": _global_scope,
    "lamp": _global_scope,  # the same ranking over LAMP scores (removal_order reads rule.scope)
}
SCOPES = (*_SCOPES, "row")  # row scope selects inside each weight (prunekit.select_rows)


def select(scores: Scores, rule: SelectionRule) -> Masks:
    """Keep-masks (True = keep), shaped like each group's scores, as `rule` says.

    >>> select({"w": torch.tensor([3.0, 1.0, 2.0, 4.0])}, SelectionRule(sparsity=0.5))["w"].tolist()
    [True, False, False, True]
    >>> select({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])},
    ...        SelectionRule(sparsity=0.5, scope="global", min_keep=1))["a"].tolist()
    [False, True]
    >>> select({"w": torch.tensor([[1.0, 2.0], [4.0, 3.0]])},
    ...        SelectionRule(sparsity=0.5, scope="row", layouts={"w": (0, 1)}))["w"].tolist()
    [[False, True], [True, False]]
    """
    if rule.threshold is not None:
        masks = {name: score >= rule.threshold for name, score in scores.items()}
        if rule.min_keep:
            masks = {name: mask | keep_highest(scores[name], min(rule.min_keep, mask.numel()))
                     for name, mask in masks.items()}
        return masks
    if rule.scope not in SCOPES:
        raise unknown_name("scope", rule.scope, SCOPES)
    if rule.layer_sparsity is not None and (rule.scope != "layer" or rule.pattern is not None):
        raise PrunekitError(f"layer_sparsity sets each layer's own target, which is scope 'layer' without a pattern; "
                            f"got scope '{rule.scope}', pattern {rule.pattern!r}: leave both unset")
    if rule.pattern is not None or rule.scope == "row":
        return keep_within_rows(scores, rule.layouts or {}, rule.sparsity, rule.scope, rule.pattern)
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
