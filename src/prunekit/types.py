"""Small value types shared across the pipeline: what criteria see, and what a pruning step did."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

#: ``(slices, unit_index)``: row ``i`` of `slices` is one slice of a weight (flattened), and
#: ``unit_index[i]`` the unit it belongs to, or -1 when it belongs to none.
Slices = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Signal:
    """What was observed of each unit's value `x` on data, averaged over what the data offered.

    `x` is the unit's own value: the weight itself for unstructured pruning, the activation a
    neuron / channel / hidden unit produces, or the contribution of an attention head. Fields a
    collector did not measure are None.

    * ``mean_abs``: mean |x|
    * ``zero_fraction``: fraction of observations with x <= 0 (the zeros a ReLU makes: APoZ)
    * ``grad_abs``: mean |dL/dx|
    * ``taylor``: mean |x * dL/dx| (first-order estimate of the loss change when x is removed)
    * ``movement``: sum over training steps of -(x * dL/dx), x a weight (movement pruning, Sanh
      et al. 2020): high when the weight moved away from zero (``prunekit.loop_state``)
    * ``input_norm``: x a weight, ‖X_j‖₂ over the calibration data of the input feature j it
      multiplies (Wanda, Sun et al. 2023), spread over the weight's shape
    """

    mean_abs: torch.Tensor | None = None
    zero_fraction: torch.Tensor | None = None
    grad_abs: torch.Tensor | None = None
    taylor: torch.Tensor | None = None
    movement: torch.Tensor | None = None
    input_norm: torch.Tensor | None = None


@dataclass(frozen=True)
class Evidence:
    """Everything a criterion may use to score the units of one group.

    Scores come out in `shape` (the weight's shape for unstructured pruning, ``(num_units,)``
    otherwise). The granularity fills what it can see: `weight` (unstructured), the weight
    slices each unit owns (`incoming`: the unit's own filter / row; `outgoing`: what reads it),
    the scale of a normalisation layer after it, what was observed on data (`signal`), or the
    measured loss increase when each unit alone is removed (`removal_cost`), or each unit's
    learned L0 gate (`gate`: its unclipped mean, <= 0 when the gate is shut), or the keep-probability
    a trained mask predictor gives it (`predicted`, ``prunekit.predictor``).
    """

    shape: tuple[int, ...]
    weight: torch.Tensor | None = None
    incoming: tuple[Slices, ...] = ()
    outgoing: tuple[Slices, ...] = ()
    norm_scale: torch.Tensor | None = None
    signal: Signal | None = None
    removal_cost: torch.Tensor | None = None
    gate: torch.Tensor | None = None
    predicted: torch.Tensor | None = None

    @property
    def num_units(self) -> int:
        """How many units the group has (entries of `shape`).

        >>> Evidence((2, 3)).num_units
        6
        """
        count = 1
        for size in self.shape:
            count *= size
        return count


@dataclass
class PruneResult:
    """What one pruning step did, with before/after counts of the units it targeted.

    Counts are of `unit`s: weights for unstructured pruning (a weight counts as present while it
    is nonzero), else neurons, channels, LSTM hidden units, heads or layers (present while not
    removed or masked). `layer_sparsity` is the share of each group's units that is gone.
    """

    method: str
    granularity: str
    scope: str
    sparsity_target: float | None
    threshold: float | None
    targets: list[str]
    unit: str
    units_targeted: int
    units_before: int
    units_after: int
    relative_sparsity: float
    seconds: float
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    params_before: int | None = None
    params_after: int | None = None
    shrink_record: Any = field(default=None, repr=False)
    rewound: bool = False  # the surviving weights went back to a snapshot (Lottery): reset the optimiser
    pattern: str | None = None  # "N:M": N of every M consecutive weights kept along the inputs
    reconstructed: bool = False  # the layers reading the pruned units were refitted (prunekit.reconstruct)

    @property
    def sparsity_achieved(self) -> float:
        """Fraction of the targeted units that are gone (removed, masked or zero)."""
        return 1.0 - self.units_after / max(self.units_targeted, 1)

    def __str__(self) -> str:
        goal = (
            f"sparsity {self.sparsity_target:.1%}"
            if self.sparsity_target is not None
            else f"threshold {self.threshold:g}"
        )
        goal += f", pattern {self.pattern}" if self.pattern else ""
        goal += ", readers refitted" if self.reconstructed else ""
        lines = [
            f"{self.method} / {self.granularity} / {self.scope} scope, {goal}: "
            f"{self.sparsity_achieved:.2%} of {self.units_targeted:,} targeted {self.unit}s pruned "
            f"({self.units_before:,} -> {self.units_after:,} left), "
            f"relative sparsity {self.relative_sparsity:.2%}, {self.seconds:.2f} s"
        ]
        if self.params_before is not None:
            lines.append(f"  parameters {self.params_before:,} -> {self.params_after:,}")
        for name, layer_sparsity in self.layer_sparsity.items():
            lines.append(f"  {name:<40} {layer_sparsity:7.2%}")
        return "\n".join(lines)


@dataclass(frozen=True)
class SparsityReport:
    """``pruner.sparsity``: the target its schedule has reached so far and what the model has.

    `target` is None for threshold pruning; `achieved` is the share of targeted units gone.
    """

    target: float | None
    achieved: float
