"""Small value types shared across the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ParamStats:
    """What was observed about one parameter while running data through the model.

    ``grad_abs_mean`` is the mean over batches of |dL/dw| (per-batch absolute values, so
    gradients of opposite sign in different batches do not cancel).
    """

    grad_abs_mean: torch.Tensor | None = None
    batches: int = 0


@dataclass
class PruneResult:
    """What one call to :func:`prunekit.prune` did, with before/after counts over its targets."""

    method: str
    granularity: str
    scope: str
    sparsity_target: float | None
    threshold: float | None
    targets: list[str]
    params_targeted: int
    nonzero_before: int
    nonzero_after: int
    relative_sparsity: float
    seconds: float
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    unit: str = "weight"
    params_before: int | None = None
    params_after: int | None = None
    shrink_record: Any = field(default=None, repr=False)

    @property
    def sparsity_achieved(self) -> float:
        """Fraction of targeted units (weights, or neurons/channels/...) removed or zeroed."""
        return 1.0 - self.nonzero_after / max(self.params_targeted, 1)

    def __str__(self) -> str:
        goal = (
            f"sparsity {self.sparsity_target:.1%}"
            if self.sparsity_target is not None
            else f"threshold {self.threshold:g}"
        )
        lines = [
            f"{self.method} / {self.granularity} / {self.scope} scope, {goal}: "
            f"{self.sparsity_achieved:.2%} of {self.params_targeted:,} targeted {self.unit}s pruned "
            f"({self.nonzero_before:,} -> {self.nonzero_after:,} left), "
            f"relative sparsity {self.relative_sparsity:.2%}, {self.seconds:.2f} s"
        ]
        if self.params_before is not None:
            lines.append(f"  parameters {self.params_before:,} -> {self.params_after:,}")
        for name, layer_sparsity in self.layer_sparsity.items():
            lines.append(f"  {name:<40} {layer_sparsity:7.2%}")
        return "\n".join(lines)
