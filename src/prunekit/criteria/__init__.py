"""Registry of pruning criteria: pure functions ``(Evidence, Generator) -> scores``, higher = keep.

A criterion says which piece of evidence it `reads`; a granularity says which pieces it can
provide (``prunekit.granularity``), so a criterion works with every granularity that provides
what it reads, and neither names the other. Criteria never look at layer types. Adding a
criterion = one function + one line in ``CRITERIA``.

    reads                  what it is                                     needs data
    weight                 the weight tensor (unstructured)               no
    incoming               weight slices each unit owns (+ outgoing)      no
    norm_scale             |gamma| of the BatchNorm after each unit       no
    signal.<field>         what was observed of each unit's value x on    activations / gradients
                           data (the weight itself, or an activation)
    activation.<field>     the same, where x is an activation (units)     activations / gradients
    removal_cost           loss increase when each unit alone is removed  removal-loss
    signal.movement        sum of -(w * dL/dw) over a training loop       training steps
    gate                   the unit's learned L0 gate (prunekit.gates)    no (training)
    predicted              keep-probability of a trained mask predictor   gradients (its features)
                           (prunekit.predictor)
    signal.input_norm      ‖X_j‖₂ of the input feature each weight        input-norms (forward passes)
                           multiplies (Wanda)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import MappingProxyType

import torch

from prunekit.criteria import movement, observed, predicted, random_scores, weights
from prunekit.errors import unknown_name
from prunekit.types import Evidence

ScoreFn = Callable[[Evidence, torch.Generator], torch.Tensor]

#: What data a criterion needs, by the evidence it reads (absent: none).
NEEDS = MappingProxyType({
    "activation.mean_abs": "activations",
    "activation.zero_fraction": "activations",
    "activation.grad_abs": "gradients",
    "signal.grad_abs": "gradients",
    "signal.taylor": "gradients",
    "removal_cost": "removal-loss",
    "signal.synflow": "synflow",
    "signal.movement": "movement",  # summed in the training loop only (prunekit.loop_state)
    "predicted": "gradients",  # the predictor's features include each weight's mean |dL/dw|
    "signal.input_norm": "input-norms",
})


@dataclass(frozen=True)
class Criterion:
    """A named scoring rule and the evidence it reads (None: nothing, e.g. random)."""

    name: str
    score: ScoreFn
    description: str
    reads: str | None = None
    #: scores already mean the same in every layer (e.g. gate probabilities): global scope ranks
    #: them as they are instead of dividing each group's by its mean first
    comparable: bool = False
    #: the scope its scores are compared in when the caller names none (None: the granularity's);
    #: e.g. Wanda compares the weights of each output row
    scope: str | None = None

    @property
    def needs(self) -> str | None:
        """The data it needs: None, ``"activations"``, ``"gradients"`` or ``"removal-loss"``.

        >>> CRITERIA["taylor"].needs, CRITERIA["magnitude"].needs
        ('gradients', None)
        """
        return NEEDS.get(self.reads) if self.reads is not None else None

    def works_with(self, provided: Iterable[str]) -> bool:
        """Whether a granularity that provides `provided` evidence can use this criterion."""
        return self.reads is None or self.reads in set(provided)


CRITERIA: MappingProxyType = MappingProxyType({criterion.name: criterion for criterion in [
    Criterion("magnitude", weights.magnitude, "|w|: smallest absolute weights go first", "weight"),
    Criterion("normalized", weights.normalized,
              "|w| / sum|w| within the layer, so layers of different scale rank fairly in global scope", "weight"),
    Criterion("l1", weights.l1, "L1 norm of the unit's incoming weights (filter / row)", "incoming"),
    Criterion("l2", weights.l2, "L2 norm of the unit's incoming weights", "incoming"),
    Criterion("weight-norm", weights.weight_norm, "L2 norm of all the unit's incoming and outgoing connections",
              "incoming"),
    Criterion("fpgm", weights.fpgm, "distance to the other filters (geometric median: most replaceable first)",
              "incoming"),
    Criterion("bn-scale", weights.bn_scale, "|gamma| of the following BatchNorm (network slimming)", "norm_scale"),
    Criterion("gradient", observed.gradient,
              "|dL/dw| averaged over data batches: weights the loss is least sensitive to go first", "signal.grad_abs"),
    Criterion("activation-gradient", observed.gradient, "mean |dL/da| over data (the unit's activation a)",
              "activation.grad_abs"),
    Criterion("taylor", observed.taylor,
              "mean |x * dL/dx| over data (first-order Taylor estimate of the loss change when the weight or "
              "activation x is removed)", "signal.taylor"),
    Criterion("snip", observed.taylor,
              "|w * dL/dw| on a batch of the untrained model (SNIP, Lee et al. 2019: prune at initialisation, "
              "then train); use num_batches=1", "signal.taylor"),
    Criterion("synflow", observed.taylor,
              "|w * dR/dw|, R the output sum of the all-positive network on ones (SynFlow, Tanaka et al. 2020: "
              "data-free, prune at initialisation in many small steps)", "signal.synflow"),
    Criterion("activation-mean", observed.activation_mean, "mean |activation| over data (heads: mean L2 norm "
              "of the head's contribution to the attention output)", "activation.mean_abs"),
    Criterion("apoz", observed.apoz, "average percentage of zeros after ReLU (most silent first)",
              "activation.zero_fraction"),
    Criterion("removal-cost", observed.removal_cost, "loss increase on data when the layer alone is removed",
              "removal_cost"),
    Criterion("l0", weights.gate, "learned hard-concrete gate (L0 regularisation, Louizos et al. 2018): shut "
              "gates go; train with regularizer=L0(...) first", "gate", comparable=True),
    Criterion("movement", movement.movement,
              "sum of -w * dL/dw over training steps (movement pruning, Sanh et al. 2020): weights training "
              "moves towards zero go first",
              "signal.movement"),
    Criterion("predictor", predicted.predicted,
              "keep-probability a trained MaskPredictor gives each weight from its |w|, |dL/dw|, |w * dL/dw|, "
              "layer statistics and position (prunekit.predictor); pass predictor= and data=", "predicted",
              comparable=True),
    Criterion("wanda", observed.wanda,
              "|w| * ‖X_j‖₂, the norm over calibration data of the input feature the weight multiplies (Wanda, "
              "Sun et al. 2023); forward passes only, compared within each output row by default; neurons / heads "
              "with reconstruct=True: ‖unit output‖₂ × ‖weights reading it‖₂", "signal.input_norm",
              scope="row"),
    Criterion("random", random_scores.random, "uniform random scores: the baseline to beat"),
]})


def criteria_for(provided: Iterable[str]) -> dict[str, Criterion]:
    """The criteria a granularity that provides `provided` evidence can use, by name.

    >>> sorted(criteria_for(["weight", "signal.grad_abs"]))
    ['gradient', 'magnitude', 'normalized', 'random']
    """
    provided = set(provided)
    return {name: criterion for name, criterion in CRITERIA.items() if criterion.works_with(provided)}


def get_criterion(name: str, provided: Iterable[str], kind: str = "method") -> Criterion:
    """The criterion `name` if it can use `provided` evidence; else an error listing those that
    can (`kind` names them in the message, e.g. "channel method").

    >>> get_criterion("l1", ["incoming"]).needs is None
    True
    """
    usable = criteria_for(provided)
    if name not in usable:
        raise unknown_name(kind, name, usable)
    return usable[name]


__all__ = ["CRITERIA", "NEEDS", "Criterion", "criteria_for", "get_criterion"]
