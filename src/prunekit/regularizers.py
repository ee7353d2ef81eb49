"""Sparsity-inducing penalties: the terms ``Pruner.penalty()`` adds to the loss so that training
itself drives what will be pruned towards zero.

    L1(strength)          strength * sum |w| over the targeted weights (unstructured groups)
    GroupLasso(strength)  strength * sum over units of the L2 norm of everything the unit owns
                          (every member slice of its coupled group: incoming and outgoing
                          weights, biases, norm parameters), so whole units go to zero together
    BNScale(strength)     strength * sum |gamma| of the BatchNorm scales of channel groups
                          (Network Slimming, Liu et al. 2017); prune afterwards by ``bn-scale``

Terms are computed from the weights as the forward pass sees them (masks applied), so pruned
weights add nothing. Adding a penalty = one frozen dataclass with ``check`` and ``term``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.gates import HardConcrete, attach_gates, gate_banks, resample_gates
from prunekit.graph.types import UnitGroup
from prunekit.masking import named_effective_parameters
from prunekit.ties import tied_names


@dataclass(frozen=True)
class Regularizer:
    """The interface every penalty implements; `strength` (lambda) scales the term."""

    strength: float = 1e-4
    #: the penalty adds learned gates to the model (criterion 'l0' reads them)
    learns_gates = False

    def __post_init__(self) -> None:
        if not (isinstance(self.strength, (int, float)) and not isinstance(self.strength, bool)
                and math.isfinite(self.strength) and self.strength >= 0):
            raise PrunekitError(f"{type(self).__name__}(strength=...) is the penalty's weight in the loss: a finite "
                                f"number >= 0 (1e-5 to 1e-3 are usual); got {self.strength!r}")

    def check(self, model: nn.Module, groups: Sequence[UnitGroup], granularity: str) -> None:
        """Raise a PrunekitError when this penalty cannot apply to these groups (nothing changes)."""

    def term(self, model: nn.Module, groups: Sequence[UnitGroup]) -> torch.Tensor:
        """The penalty for the model's current weights (differentiable), strength included."""
        raise NotImplementedError

    def attach(self, model: nn.Module, groups: Sequence[UnitGroup], owner: str | None) -> None:
        """Add what the penalty learns to `model` (after ``check``; the Pruner calls it once)."""

    def advance(self, model: nn.Module) -> None:
        """Called by every ``Pruner.step()`` while the penalty is on (e.g. fresh gate noise)."""

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, **asdict(self)}


def _zero(model: nn.Module) -> torch.Tensor:
    parameter = next(model.parameters(), None)
    return torch.zeros((), device=parameter.device if parameter is not None else None)


@dataclass(frozen=True)
class L1(Regularizer):
    """``strength * sum |w|`` over the weights an unstructured Pruner targets.

    >>> model = nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    >>> from prunekit.granularity import get_granularity
    >>> L1(0.5).term(model, get_granularity("unstructured").find(model, None, ())).item()
    1.5
    """

    def check(self, model: nn.Module, groups: Sequence[UnitGroup], granularity: str) -> None:
        if granularity != "unstructured":
            raise PrunekitError(f"L1 penalises single weights (granularity 'unstructured'); for {granularity} units "
                                "use GroupLasso, which penalises each unit's weights together")

    def term(self, model: nn.Module, groups: Sequence[UnitGroup]) -> torch.Tensor:
        weights = dict(named_effective_parameters(model))
        total = _zero(model)
        for group in groups:
            total = total + weights[group.name].abs().sum()
        return self.strength * total


def unit_norms(model: nn.Module, group: UnitGroup) -> torch.Tensor:
    """The L2 norm of every slice a unit of `group` owns, per unit (differentiable).

    >>> import torch
    >>> from prunekit.graph.types import Member
    >>> model = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    >>> group = UnitGroup("", "neuron", 2, (Member("weight", 0, torch.tensor([0, 1])),), torch.arange(2))
    >>> unit_norms(model, group).tolist()
    [5.0, 1.0]
    """
    weights = dict(named_effective_parameters(model))
    squares = None
    for member in group.members:
        tensor = weights[member.param]
        dims = [dim for dim in range(tensor.dim()) if dim != member.dim]
        per_slice = tensor.pow(2).sum(dim=dims) if dims else tensor.pow(2)
        owned = member.unit_index.to(per_slice.device) >= 0
        part = torch.zeros(group.num_units, dtype=per_slice.dtype, device=per_slice.device)
        part = part.index_add(0, member.unit_index.to(per_slice.device)[owned], per_slice[owned])
        squares = part if squares is None else squares + part
    if squares is None:
        return torch.zeros(group.num_units)
    # the norm's gradient is undefined at zero: units already at zero get value and gradient 0, not NaN
    return torch.sqrt(squares.clamp_min(1e-30)) * (squares > 0)


@dataclass(frozen=True)
class GroupLasso(Regularizer):
    """``strength * sum over units of ||everything the unit owns||_2`` (Yuan & Lin 2006; for
    neurons, channels, LSTM units): the penalty is non-smooth at a unit's zero, so training drives
    whole units there and the unit criteria (``l2``, ``weight-norm``) then remove them.
    """

    def check(self, model: nn.Module, groups: Sequence[UnitGroup], granularity: str) -> None:
        if not groups or any(not group.members for group in groups):
            raise PrunekitError(f"GroupLasso penalises coupled units (granularity 'neuron', 'channel' or "
                                f"'lstm-unit'); granularity '{granularity}' has no member slices to group")

    def term(self, model: nn.Module, groups: Sequence[UnitGroup]) -> torch.Tensor:
        total = _zero(model)
        for group in groups:
            total = total + unit_norms(model, group).sum()
        return self.strength * total


def _bn_members(model: nn.Module, group: UnitGroup) -> list:
    modules = dict(model.named_modules())
    found = []
    for member in group.members:
        module_name, _, param_name = member.param.rpartition(".")
        if param_name == "weight" and isinstance(modules.get(module_name), nn.modules.batchnorm._BatchNorm):
            found.append(member)
    return found


@dataclass(frozen=True)
class BNScale(Regularizer):
    """``strength * sum |gamma|`` over the BatchNorm scales of the channel groups (Network Slimming):
    channels whose scale reaches zero contribute nothing and ``bn-scale`` removes them first."""

    def check(self, model: nn.Module, groups: Sequence[UnitGroup], granularity: str) -> None:
        if granularity != "channel":
            raise PrunekitError(f"BNScale (network slimming) penalises BatchNorm scales of channels: use "
                                f"granularity='channel' (got '{granularity}')")
        if not any(_bn_members(model, group) for group in groups):
            raise PrunekitError("BNScale (network slimming) found no BatchNorm scale on the prunable channels of "
                                "this model; use GroupLasso (or the l1 criterion) for models without BatchNorm")

    def term(self, model: nn.Module, groups: Sequence[UnitGroup]) -> torch.Tensor:
        weights = dict(named_effective_parameters(model))
        total = _zero(model)
        for group in groups:
            for member in _bn_members(model, group):
                owned = member.unit_index >= 0
                total = total + weights[member.param][owned.to(weights[member.param].device)].abs().sum()
        return self.strength * total


@dataclass(frozen=True)
class L0(Regularizer):
    """``strength * expected number of non-zero parameters`` through hard-concrete gates (Louizos,
    Welling & Kingma 2018; see ``prunekit.gates``): one gate per weight (granularity
    'unstructured') or per neuron / channel / LSTM unit, weighted by the parameters it owns. The
    Pruner attaches the gates when it is built (build the optimiser after it, so the gates learn),
    draws their noise at every ``step()``, and at its pruning step turns them into masks: units
    whose deterministic gate is 0 go (criterion ``l0``; or the lowest gates, to a `sparsity`), the
    others keep their gate folded into the weights.

    >>> model = nn.Linear(2, 1, bias=False)
    >>> from prunekit.granularity import get_granularity
    >>> groups = get_granularity("unstructured").find(model, None, ())
    >>> L0(0.5, init_keep=0.5).attach(model, groups, None)
    >>> round(L0(0.5, init_keep=0.5).term(model, groups).item(), 4)  # 0.5 * 2 gates * sigmoid((2/3) log 11)
    0.8318
    """

    temperature: float = 2.0 / 3.0
    low: float = -0.1
    high: float = 1.1
    init_keep: float = 0.9
    learns_gates = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.spec  # validates the gate constants here, before any model is touched

    @property
    def spec(self) -> HardConcrete:
        return HardConcrete(self.temperature, self.low, self.high, self.init_keep)

    def check(self, model: nn.Module, groups: Sequence[UnitGroup], granularity: str) -> None:
        if granularity != "unstructured" and (not groups or any(not group.members for group in groups)):
            raise PrunekitError(f"L0 gates single weights (granularity 'unstructured') or coupled units ('neuron', "
                                f"'channel', 'lstm-unit'); granularity '{granularity}' has no member slices to gate")
        if any(True for _ in gate_banks(model)):
            raise PrunekitError("this model already carries L0 gates that no Pruner manages (release_masks took them "
                                "from their Pruner before they became masks); call prunekit.masking.fold_gates(model) "
                                "to turn them into masks first")
        tied = tied_names(model)
        names = [name for group in groups for name in ([m.param for m in group.members] or [group.name])]
        shared = [name for name in names if len(tied.get(name, [name])) > 1]
        if shared:
            raise PrunekitError(f"'{shared[0]}' is tied to {tied[shared[0]]}: L0 gates on shared weights are not "
                                "supported; exclude it (exclude=[...])")

    def attach(self, model: nn.Module, groups: Sequence[UnitGroup], owner: str | None) -> None:
        attach_gates(model, groups, self.spec, owner)

    def advance(self, model: nn.Module) -> None:
        resample_gates(model)

    def term(self, model: nn.Module, groups: Sequence[UnitGroup]) -> torch.Tensor:
        wanted = {group.name for group in groups}
        total = _zero(model)
        for bank in gate_banks(model):
            if bank.group_name in wanted:
                total = total + bank.expected_l0()
        return self.strength * total


@dataclass(frozen=True)
class PenaltyMethod:
    """A training-time method of ``prunekit compare``: train with `penalty`, then prune by
    `criterion` (the penalty has driven what it removes towards zero), then recover without it."""

    granularities: tuple[str, ...]
    criterion: str
    penalty: type
    strength: float
    unit_strength: float | None = None  # for granularities other than 'unstructured', when it differs

    def strength_for(self, granularity: str) -> float:
        """The strength the harness trains `granularity` with.

        >>> PENALTY_METHODS["l0"].strength_for("neuron")
        1e-05
        """
        if granularity != "unstructured" and self.unit_strength is not None:
            return self.unit_strength
        return self.strength


#: ``--methods`` names of the penalty methods. Strengths picked on LeNet-300-100 / MNIST-5k, seed 0,
#: 10 fine-tune epochs (penalty for the first 5): l1-penalty at 95%: 1e-6 2.70 pt, 1e-5 1.80,
#: 1e-4 0.50, 3e-4 -0.20, 1e-3 0.40; group-lasso on 80% of neurons: 1e-5 0.60, 1e-4 0.70,
#: 1e-3 0.70, 3e-3 0.10, 1e-2 0.80. bn-slimming keeps Liu et al.'s 1e-4 (not tuned here).
#: l0 (gates at prunekit.gates.GATE_LR) on weights, accuracy at 95% (dense 95.9%): 1e-6 92.9, 1e-5 94.3,
#: 1e-4 95.7, 3e-4 95.8 (but the gates shut 95.5%, past the target), 1e-3 93.6 (98.7%); on 80% of
#: neurons (layer scope): 1e-6 95.1, 1e-5 95.3, 1e-4 93.1.
PENALTY_METHODS = MappingProxyType({
    "l1-penalty": PenaltyMethod(("unstructured",), "magnitude", L1, 3e-4),
    "group-lasso": PenaltyMethod(("neuron", "channel", "lstm-unit"), "l2", GroupLasso, 3e-3),
    "bn-slimming": PenaltyMethod(("channel",), "bn-scale", BNScale, 1e-4),
    "l0": PenaltyMethod(("unstructured", "neuron", "channel", "lstm-unit"), "l0", L0, 1e-4, unit_strength=1e-5),
})
