"""Turn scores into keep-masks: by ratio (per layer or global) or by absolute threshold.

Ratio selection removes exactly ``round(sparsity * n)`` entries (per tensor in layer scope, over
all tensors in global scope): ties are broken by position rather than by a threshold, so the
achieved sparsity never overshoots because many scores are equal (e.g. already-zero weights).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Masks = dict[str, torch.Tensor]
SCOPES = ("layer", "global")


def _keep_all_but_lowest(flat_scores: torch.Tensor, num_pruned: int) -> torch.Tensor:
    keep = torch.ones(flat_scores.numel(), dtype=torch.bool)
    if num_pruned > 0:
        order = torch.argsort(flat_scores, stable=True)
        keep[order[:num_pruned]] = False
    return keep


def select_by_ratio(scores: Mapping[str, torch.Tensor], sparsity: float, scope: str = "layer") -> Masks:
    """Keep-masks that remove the `sparsity` fraction of lowest-scored entries.

    >>> masks = select_by_ratio({"w": torch.tensor([3.0, 1.0, 2.0, 4.0])}, 0.5)
    >>> masks["w"].tolist()
    [True, False, False, True]
    """
    if scope == "layer":
        return {
            name: _keep_all_but_lowest(score.flatten().float(), round(sparsity * score.numel())).view(
                score.shape
            )
            for name, score in scores.items()
        }
    if scope != "global":
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    flat = torch.cat([score.flatten().float() for score in scores.values()])
    keep = _keep_all_but_lowest(flat, round(sparsity * flat.numel()))
    masks: Masks = {}
    offset = 0
    for name, score in scores.items():
        masks[name] = keep[offset : offset + score.numel()].view(score.shape)
        offset += score.numel()
    return masks


def select_by_threshold(scores: Mapping[str, torch.Tensor], threshold: float) -> Masks:
    """Keep-masks that remove every entry whose score is below `threshold`.

    >>> select_by_threshold({"w": torch.tensor([0.1, 0.5, 0.05])}, 0.2)["w"].tolist()
    [False, True, False]
    """
    return {name: score >= threshold for name, score in scores.items()}


def _keep_count(num_units: int, num_removed: int, round_to: int | None) -> int:
    keep = max(num_units - num_removed, 1)
    if round_to and round_to > 1 and num_units >= round_to:
        keep = max(round_to, min(num_units, round_to * round(keep / round_to)))
    return keep


def _keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(scores.float(), descending=True, stable=True)[:keep]] = True
    return mask


def select_units(
    scores: Mapping[str, torch.Tensor], sparsity: float, scope: str = "layer", round_to: int | None = None
) -> Masks:
    """Per-group unit keep-masks removing the `sparsity` fraction of lowest-scored units.

    Every group keeps at least one unit (never all of a layer is removed). In global scope the
    scores of each group are divided by the group's mean first, so groups of different scale
    compete fairly. `round_to` rounds each group's kept count to a multiple (e.g. 8).

    >>> select_units({"fc1": torch.tensor([0.1, 0.9, 0.5, 0.3])}, 0.5)["fc1"].tolist()
    [False, True, True, False]
    """
    if scope == "layer":
        return {
            name: _keep_top(score, _keep_count(score.numel(), round(sparsity * score.numel()), round_to))
            for name, score in scores.items()
        }
    if scope != "global":
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    names = list(scores)
    normalised = []
    for name in names:
        mean = scores[name].float().abs().mean()
        normalised.append(scores[name].float() / mean if mean > 0 else scores[name].float())
    flat = torch.cat(normalised)
    owner = torch.cat([torch.full((score.numel(),), index) for index, score in enumerate(normalised)])
    remaining = [score.numel() for score in normalised]
    removed = [0] * len(names)
    budget = round(sparsity * flat.numel())
    for position in torch.argsort(flat, stable=True).tolist():
        if budget == 0:
            break
        group = int(owner[position])
        if remaining[group] > 1:  # never remove a group's last unit
            remaining[group] -= 1
            removed[group] += 1
            budget -= 1
    return {
        name: _keep_top(scores[name], _keep_count(scores[name].numel(), removed[index], round_to))
        for index, name in enumerate(names)
    }
