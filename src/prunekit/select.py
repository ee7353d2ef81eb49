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
