"""What a Pruner keeps from the training loop it rides along: running |gradient| sums and a
weight snapshot for rewinding.

Both are keyed by the parameter's plain dotted name (``"fc1.weight"``) and hold the *stored*
values (``original_parameter``), so they survive masks being attached between two steps and
serialise into ``pruner.state_dict()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import torch
from torch import nn

from prunekit.distributed import all_reduce_sum
from prunekit.errors import PrunekitError
from prunekit.masking import named_effective_parameters, original_parameter
from prunekit.schedules import Schedule
from prunekit.types import PruneResult


class GradientSums:
    """Sum of |grad| of chosen parameters over the backward passes since the last ``reset()``.

    Tensor hooks on the stored parameters add each backward pass's own gradient (before it is
    accumulated into ``.grad``, so skipped or delayed ``zero_grad`` calls do not matter); nothing
    else of the user's loop is touched.
    ``close()`` removes the hooks.

    >>> model = nn.Linear(2, 1)
    >>> sums = GradientSums(model, ["weight"])
    >>> for _ in range(2):
    ...     model(torch.ones(1, 2)).sum().backward()
    >>> sums.mean()["weight"].tolist(), sums.counts["weight"]
    ([[1.0, 1.0]], 2)
    >>> sums.close()
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self._params = {name: original_parameter(model, name) for name in self.names}
        # float32 sums whatever the parameters' dtype (many bf16 additions would lose the later ones)
        self.sums = {name: torch.zeros(param.shape, dtype=torch.float32, device=param.device)
                     for name, param in self._params.items()}
        self.counts = {name: 0 for name in self.names}
        self._handles = [param.register_hook(self._adder(name)) for name, param in self._params.items()]

    def _adder(self, name: str):
        def add(grad: torch.Tensor) -> None:
            if self.sums[name].device != grad.device:  # the model moved (.to(device)) after the Pruner was built
                self.sums[name] = self.sums[name].to(grad.device)
            self.sums[name].add_(grad.detach().abs().float())
            self.counts[name] += 1
        return add

    def mean(self) -> dict[str, torch.Tensor]:
        """Mean |grad| per parameter since the last reset (zeros where nothing arrived); under
        torch.distributed, over the backward passes of every rank (each rank's hooks see its own
        gradients, before DDP averages them)."""
        return self.reduced()[0]

    def reduced(self) -> tuple[dict[str, torch.Tensor], int]:
        """The mean (see :meth:`mean`) and the backward passes counted over every rank, from one
        collective that every rank joins (so a rank that saw no pass cannot leave the others waiting)."""
        totals = all_reduce_sum({"sums": self.sums, "counts": self.counts})
        mean = {name: totals["sums"][name] / max(totals["counts"][name], 1) for name in self.names}
        return mean, max(totals["counts"].values(), default=0)

    def reset(self) -> None:
        for name in self.names:
            self.sums[name].zero_()
            self.counts[name] = 0

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict:
        return {"sums": {name: tensor.clone() for name, tensor in self.sums.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping) -> None:
        for name in self.names:
            self.sums[name].copy_(state["sums"][name])
            self.counts[name] = int(state["counts"][name])


def take_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter's stored values, by plain name (masked ones included).

    >>> model = nn.Linear(2, 1)
    >>> sorted(take_snapshot(model))
    ['bias', 'weight']
    """
    return {name: original_parameter(model, name).detach().clone() for name, _ in named_effective_parameters(model)}


def rewind(model: nn.Module, snapshot: Mapping[str, torch.Tensor]) -> None:
    """Put every parameter's stored values back to `snapshot` in place (masks stay, so pruned
    weights stay zero; the parameter objects an optimiser holds stay the same).

    >>> model = nn.Linear(2, 1)
    >>> snapshot = take_snapshot(model)
    >>> with torch.no_grad():
    ...     _ = model.weight.add_(1.0)
    >>> rewind(model, snapshot); torch.equal(model.weight, snapshot["weight"])
    True
    """
    current = dict(named_effective_parameters(model))
    for name, values in snapshot.items():
        if name not in current or current[name].shape != values.shape:
            raise PrunekitError(f"cannot rewind '{name}': the snapshot holds shape {tuple(values.shape)}, the model "
                                f"{tuple(current[name].shape) if name in current else 'nothing'}; units were "
                                "removed physically since the snapshot (rewinding needs masks, remove=False)")
    with torch.no_grad():
        for name, values in snapshot.items():
            original_parameter(model, name).copy_(values)


class LoopState:
    """What a Pruner's schedule needs from the loop: gradient sums (``GradientThreshold``) and
    the weights to rewind to (``Lottery``). Empty for schedules that need neither.

    >>> from prunekit.schedules import Lottery
    >>> model = nn.Linear(2, 1)
    >>> state = LoopState.start(model, Lottery(levels=1, every=1), ["weight"])
    >>> sorted(state.snapshot), state.gradients is None
    (['bias', 'weight'], True)
    """

    def __init__(self, schedule: Schedule, gradients: GradientSums | None,
                 snapshot: dict[str, torch.Tensor] | None) -> None:
        self.schedule = schedule
        self.gradients = gradients
        self.snapshot = snapshot

    @classmethod
    def start(cls, model: nn.Module, schedule: Schedule, names: Iterable[str]) -> LoopState:
        gradients = GradientSums(model, names) if schedule.accumulates_gradients else None
        snapshot = take_snapshot(model) if schedule.snapshot_step() == 0 else None
        return cls(schedule, gradients, snapshot)

    def before_step(self, model: nn.Module, step: int) -> None:
        """Remember the weights when step `step` follows the schedule's snapshot step."""
        snapshot_step = self.schedule.snapshot_step()
        if snapshot_step is not None and snapshot_step > 0 and step == snapshot_step - 1:
            self.snapshot = take_snapshot(model)

    def evidence_for(self, step_pass):
        """`step_pass` with the loop's mean |gradient| as its evidence (reduced over ranks under
        torch.distributed), or unchanged when the schedule needs none."""
        if self.gradients is None:
            return step_pass
        mean, passes = self.gradients.reduced()
        if passes == 0:
            raise PrunekitError(
                f"{type(self.schedule).__name__} prunes by the |gradient| summed in the training loop, but no "
                "backward pass reached the pruned weights since the last pruning; call pruner.step() after "
                "loss.backward() (and optimizer.step())"
            )
        return replace(step_pass, observed=mean)

    def after_pruning(self, model: nn.Module, step: int, result: PruneResult) -> PruneResult:
        """Start new gradient sums; rewind the surviving weights when the schedule says so."""
        if self.gradients is not None:
            self.gradients.reset()
        if self.schedule.rewinds_at(step):
            rewind(model, self.snapshot)
            result = replace(result, rewound=True)
        return result

    def close(self) -> None:
        if self.gradients is not None:
            self.gradients.close()

    def state_dict(self) -> dict:
        return {"gradients": self.gradients.state_dict() if self.gradients is not None else None,
                "snapshot": None if self.snapshot is None else {k: v.clone() for k, v in self.snapshot.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        if self.gradients is not None and state.get("gradients") is not None:
            self.gradients.load_state_dict(state["gradients"])
        if state.get("snapshot") is not None:
            self.snapshot = {name: tensor.clone() for name, tensor in state["snapshot"].items()}
