"""Hard-concrete gates for L0 regularisation (Louizos, Welling & Kingma 2018).

Every gated unit (one weight, or one neuron / channel / LSTM unit with everything it owns) has
a learned logit ``log_alpha``. In training its gate is a stretched, clipped concrete sample

    s = sigmoid((log u - log(1 - u) + log_alpha) / temperature),  u ~ U(0, 1)
    z = min(1, max(0, s * (high - low) + low))

which is exactly 0 or 1 with positive probability; in eval mode the gate is deterministic,
``min(1, max(0, sigmoid(log_alpha) * (high - low) + low))``. The expected number of non-zero
gates, ``sum sigmoid(log_alpha - temperature * log(-low / high))`` (weighted by the parameters
each unit owns), is the differentiable L0 penalty.

Gates are masks that learn: ``GatedMask`` is a ``prunekit.masking.KeepMask`` whose factor also
holds the gates, so ``get_masks``, ``bake`` and reports treat gated and masked weights alike,
and ``prunekit.masking.fold_gates`` turns gates into plain masks (the Pruner does that when it
prunes). One ``GateBank`` per group holds the logits; a unit's gate multiplies every slice it
owns (incoming and outgoing weights, biases, norm parameters), so a closed gate silences the
unit wherever it is read. The noise ``u`` is redrawn by ``GateBank.resample`` (``Pruner.step()``
does it), so all slices of a unit see the same sample within a training step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import PrunekitError
from prunekit.graph.types import UnitGroup
from prunekit.masking import KeepMask, _own_class, _param_order, named_effective_parameters, split_name

_EPS = 1e-6

#: The learning rate prunekit's trainer gives gate logits (their own optimiser group, as CoFi
#: pruning does): a gate must travel ~5 units of log_alpha (from keep 0.9 to shut) inside a
#: fine-tuning budget of a few hundred steps, which the weights' rate (1e-3 to 1e-2) cannot do.
GATE_LR = 0.1


@dataclass(frozen=True)
class HardConcrete:
    """The gate distribution's constants: Louizos et al.'s temperature 2/3 and stretch
    (-0.1, 1.1); `init_keep` is every gate's starting keep probability ``sigmoid(log_alpha)``
    (high, so gates start open on a trained model)."""

    temperature: float = 2.0 / 3.0
    low: float = -0.1
    high: float = 1.1
    init_keep: float = 0.9

    def __post_init__(self) -> None:
        def number(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not (number(self.temperature) and self.temperature > 0):
            raise PrunekitError(f"the hard-concrete temperature must be a number > 0 (2/3 is usual); got "
                                f"{self.temperature!r}")
        if not (number(self.low) and number(self.high) and self.low < 0 and self.high > 1):
            raise PrunekitError(f"the hard-concrete stretch needs low < 0 and high > 1 (so gates reach exactly 0 "
                                f"and 1; -0.1 and 1.1 are usual); got low={self.low!r}, high={self.high!r}")
        if not (number(self.init_keep) and 0 < self.init_keep < 1):
            raise PrunekitError(f"init_keep is the gates' starting keep probability, strictly between 0 and 1 "
                                f"(0.9 keeps a trained model nearly intact); got {self.init_keep!r}")


class GateBank(nn.Module):
    """The gates of one group: ``log_alpha`` (a parameter, shaped like the group's units), the
    current noise, and what each unit costs in the penalty (the parameters it owns)."""

    def __init__(self, group_name: str, unit_cost: torch.Tensor, spec: HardConcrete) -> None:
        super().__init__()
        self.group_name = group_name
        self.spec = spec
        start = math.log(spec.init_keep) - math.log1p(-spec.init_keep)
        self.log_alpha = nn.Parameter(torch.full(unit_cost.shape, start, device=unit_cost.device))
        self.register_buffer("unit_cost", unit_cost.float())
        # u = 0.5 (the median gate) until the first step() draws noise: building gates takes
        # nothing from the caller's random number generator
        self.register_buffer("noise", torch.full(unit_cost.shape, 0.5, device=unit_cost.device))

    def resample(self) -> None:
        """Draw fresh noise for the training-mode gates (from torch's global generator)."""
        with torch.no_grad():
            self.noise.uniform_(_EPS, 1.0 - _EPS)

    def mean_gate(self) -> torch.Tensor:
        """``sigmoid(log_alpha) * (high - low) + low``, before clipping: the deterministic gate is
        zero exactly where this is <= 0 (the ``l0`` criterion's scores)."""
        return torch.sigmoid(self.log_alpha) * (self.spec.high - self.spec.low) + self.spec.low

    def gate(self, deterministic: bool) -> torch.Tensor:
        """The gates: sampled with the current noise, or deterministic (eval mode)."""
        if deterministic:
            return self.mean_gate().clamp(0.0, 1.0)
        logistic = torch.log(self.noise) - torch.log1p(-self.noise)
        stretched = torch.sigmoid((logistic + self.log_alpha) / self.spec.temperature)
        return (stretched * (self.spec.high - self.spec.low) + self.spec.low).clamp(0.0, 1.0)

    def keep_probability(self) -> torch.Tensor:
        """P(gate != 0) per unit (differentiable)."""
        shift = self.spec.temperature * math.log(-self.spec.low / self.spec.high)
        return torch.sigmoid(self.log_alpha - shift)

    def expected_l0(self) -> torch.Tensor:
        """The expected number of parameters whose gate is open."""
        return (self.keep_probability() * self.unit_cost).sum()


class GateView(nn.Module):
    """How one bank's gates reach one parameter: along `dim` through `unit_index` (-1: a slice
    no unit owns, factor 1), or entry by entry (`dim` None, the bank shaped like the parameter)."""

    def __init__(self, bank: GateBank, dim: int | None, unit_index: torch.Tensor | None, ndim: int) -> None:
        super().__init__()
        self.bank = bank
        self.dim = dim
        self.ndim = ndim
        self.register_buffer("unit_index", unit_index if unit_index is not None else torch.zeros(0, dtype=torch.long))

    def factor(self, deterministic: bool) -> torch.Tensor:
        gates = self.bank.gate(deterministic)
        if self.dim is None:
            return gates
        index = self.unit_index.to(gates.device)
        per_slice = torch.where(index >= 0, gates[index.clamp_min(0)], torch.ones((), device=gates.device))
        shape = [1] * self.ndim
        shape[self.dim] = -1
        return per_slice.view(shape)


class GatedMask(KeepMask):
    """A keep-mask that also multiplies by learned gates (one or more `views`: a weight may be
    gated by its own unit's bank along one dim and by the previous layer's along another)."""

    def __init__(self, keep_mask: torch.Tensor, owner: str | None, param_order: tuple[str, ...],
                 views: Sequence[GateView]) -> None:
        super().__init__(keep_mask, owner, param_order)
        self.views = nn.ModuleList(views)

    def gate_factor(self, deterministic: bool) -> torch.Tensor:
        factor = None
        for view in self.views:
            value = view.factor(deterministic)
            factor = value if factor is None else factor * value
        return factor

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.keep_mask * self.gate_factor(deterministic=not self.training)

    def factor(self) -> torch.Tensor:
        return self.keep_mask * self.gate_factor(deterministic=True).detach()

    def effective_keep(self) -> torch.Tensor:
        return self.keep_mask & (self.gate_factor(deterministic=True).detach() > 0)


def _unit_cost(shapes: dict[str, torch.Size], group: UnitGroup) -> torch.Tensor:
    """Per unit, how many parameter entries it owns (Louizos et al. weight a group's gate by its size)."""
    cost = torch.zeros(group.num_units)
    for member in group.members:
        shape = shapes[member.param]
        per_slice = shape.numel() // shape[member.dim]
        owned = member.unit_index >= 0
        cost.index_add_(0, member.unit_index[owned], torch.full((int(owned.sum()),), float(per_slice)))
    return cost


def attach_gates(model: nn.Module, groups: Sequence[UnitGroup], spec: HardConcrete, owner: str | None) -> None:
    """Give every unit of `groups` a hard-concrete gate (parametrizations on the parameters it
    owns; an existing keep-mask on a parameter becomes part of its gated mask). Build the
    optimiser afterwards, or add ``gate_parameters(model)`` to it: the gates learn."""
    params = dict(named_effective_parameters(model))
    shapes = {name: tensor.shape for name, tensor in params.items()}
    views: dict[str, list[GateView]] = {}
    for group in groups:
        if group.members:
            bank = GateBank(group.name, _unit_cost(shapes, group).to(params[group.members[0].param].device), spec)
            for member in group.members:
                views.setdefault(member.param, []).append(
                    GateView(bank, member.dim, member.unit_index.clone(), len(shapes[member.param])))
        else:
            bank = GateBank(group.name, torch.ones(shapes[group.name], device=params[group.name].device), spec)
            views.setdefault(group.name, []).append(GateView(bank, None, None, len(shapes[group.name])))
    for fqn, param_views in views.items():
        _attach(model, fqn, param_views, owner)


def _attach(model: nn.Module, fqn: str, views: list[GateView], owner: str | None) -> None:
    module_name, param_name = split_name(fqn)
    module = model.get_submodule(module_name)
    if parametrize.is_parametrized(module, param_name):
        items = module.parametrizations[param_name]
        index = next(i for i, item in enumerate(items) if isinstance(item, KeepMask))
        existing = items[index]
        items[index] = GatedMask(existing.keep_mask, owner, existing.param_order, views)
        return
    keep = torch.ones(model.get_parameter(fqn).shape, dtype=torch.bool, device=model.get_parameter(fqn).device)
    gated = GatedMask(keep, owner, _param_order(module), views)
    _own_class(module)
    parametrize.register_parametrization(module, param_name, gated, unsafe=True)


def gate_banks(model: nn.Module) -> Iterator[GateBank]:
    """Every gate bank on `model`, once each."""
    seen = set()
    for module in model.modules():
        if isinstance(module, GateBank) and id(module) not in seen:
            seen.add(id(module))
            yield module


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The gates' learned logits (for an optimiser built before the gates were attached)."""
    return [bank.log_alpha for bank in gate_banks(model)]


def gate_scores(model: nn.Module, groups: Sequence[UnitGroup]) -> dict[str, torch.Tensor]:
    """Per group, each unit's unclipped mean gate (``GateBank.mean_gate``; <= 0: the gate is shut)."""
    banks = {bank.group_name: bank for bank in gate_banks(model)}
    missing = [group.name for group in groups if group.name not in banks]
    if missing:
        raise PrunekitError(f"'{missing[0]}' carries no L0 gates: the 'l0' criterion scores learned gates; build the "
                            "Pruner with regularizer=prunekit.regularizers.L0(...) and train before it prunes")
    return {group.name: banks[group.name].mean_gate().detach().float().cpu().reshape(group.unit_shape)
            for group in groups}


def resample_gates(model: nn.Module) -> None:
    """New noise for every gate on `model` (one sample per training step)."""
    for bank in gate_banks(model):
        bank.resample()
