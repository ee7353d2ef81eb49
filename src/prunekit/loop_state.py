"""What a Pruner keeps from the training loop it rides along: running |gradient| sums, movement
scores (-w * dL/dw summed) and a weight snapshot for rewinding.

Both are keyed by the parameter's plain dotted name (``"fc1.weight"``) and hold the *stored*
values (``original_parameter``), so they survive masks being attached between two steps and
serialise into ``pruner.state_dict()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import torch
from torch import nn

from prunekit.distributed import all_reduce_sum, world_size
from prunekit.errors import PrunekitError
from prunekit.masking import named_effective_parameters, original_parameter
from prunekit.schedules import Schedule
from prunekit.stats import LOOP_ONLY
from prunekit.types import PruneResult, Signal


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
            self.sums[name].add_(self._term(name, grad))
            self.counts[name] += 1
        return add

    def _term(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """What one backward pass adds for parameter `name`: its |gradient|, in float32."""
        return grad.detach().abs().float()

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


class MovementScores(GradientSums):
    """Movement scores (Sanh, Wolf & Rush 2020): ``S = sum over backward passes of -(w * dL/dw)``
    per targeted weight, `w` being its stored value during that backward pass (before the
    optimiser step that follows). ``S`` grows where training pushes a weight away from zero.

    The scores accumulate over the whole run and are not reset after a pruning, as the paper's
    scores accumulate over all of fine-tuning: a gradual schedule prunes every few dozen steps,
    and ranking by only the steps since the last pruning would rest on little, noisy evidence.
    Masked weights get no gradient, so their scores stop moving (they are gone for good).

    >>> model = nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    >>> scores = MovementScores(model, ["weight"])
    >>> for _ in range(2):  # dL/dw = [1, 1]: descent pulls 1.0 towards zero and pushes -2.0 away
    ...     model(torch.ones(1, 2)).sum().backward()
    >>> scores.totals()[0]["weight"].tolist()
    [[-2.0, 4.0]]
    >>> scores.close()
    """

    def _term(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        return -(self._params[name].detach().float() * grad.detach().float())

    def totals(self) -> tuple[dict[str, torch.Tensor], int]:
        """The scores and the backward passes counted over every rank (one collective that
        every rank joins). Under torch.distributed each rank's hooks see its own gradient, before
        DDP averages them, so the ranks' sums are averaged: the result is the sum of -w times the
        averaged gradient the optimiser stepped with, as one process with all the data would get."""
        totals = all_reduce_sum({"sums": self.sums, "counts": self.counts})
        ranks = world_size()
        return {name: totals["sums"][name] / ranks for name in self.names}, max(totals["counts"].values(), default=0)


def check_loop_schedule(method: str, needs: str | None, schedule: Schedule | None) -> None:
    """Refuse a criterion that reads what only a training loop gives (``stats.LOOP_ONLY``) when
    no schedule was named: the default, one pruning at the first ``step()``, would rank the
    weights by at most one backward pass (and ``prune()``, by none).

    >>> from prunekit.schedules import Polynomial
    >>> check_loop_schedule("movement", "movement", Polynomial(end_step=100))  # prunes after training steps
    >>> check_loop_schedule("movement", "movement", None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: method 'movement' ranks weights by -w * dL/dw summed over the backward ...
    """
    if schedule is None and needs in LOOP_ONLY:
        raise PrunekitError(
            f"method '{method}' ranks weights by -w * dL/dw summed over the backward passes of your training loop, "
            "so it needs a schedule that prunes after training steps: pass schedule=Polynomial(begin_step=0, "
            "end_step=<about a quarter of your steps>, frequency=<end_step // 20>) (hard movement pruning; add "
            "threshold=0.0 for the soft variant), or OneShot(at_step=<steps>) to prune once after that many "
            "steps. prune() prunes before any training step and cannot use it"
        )


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
    """What a Pruner needs from the loop: gradient sums (``GradientThreshold``), movement scores
    (when its criterion reads them: method ``"movement"``) and the weights to rewind to
    (``Lottery``). Empty when it needs none of them.

    >>> from prunekit.schedules import Lottery
    >>> model = nn.Linear(2, 1)
    >>> state = LoopState.start(model, Lottery(levels=1, every=1), ["weight"])
    >>> sorted(state.snapshot), state.gradients is None
    (['bias', 'weight'], True)
    """

    def __init__(self, schedule: Schedule, gradients: GradientSums | None,
                 snapshot: dict[str, torch.Tensor] | None, movement: MovementScores | None = None) -> None:
        self.schedule = schedule
        self.gradients = gradients
        self.snapshot = snapshot
        self.movement = movement

    @classmethod
    def start(cls, model: nn.Module, schedule: Schedule, names: Iterable[str], needs: str | None = None) -> LoopState:
        """Hook what `schedule` and a criterion that needs `needs` (``Criterion.needs``) read."""
        names = tuple(names)
        gradients = GradientSums(model, names) if schedule.accumulates_gradients else None
        movement = MovementScores(model, names) if needs == "movement" else None
        snapshot = take_snapshot(model) if schedule.snapshot_step() == 0 else None
        return cls(schedule, gradients, snapshot, movement)

    def before_step(self, model: nn.Module, step: int) -> None:
        """Remember the weights when step `step` follows the schedule's snapshot step."""
        snapshot_step = self.schedule.snapshot_step()
        if snapshot_step is not None and snapshot_step > 0 and step == snapshot_step - 1:
            self.snapshot = take_snapshot(model)

    def evidence_for(self, step_pass):
        """`step_pass` with the loop's mean |gradient| as its evidence (reduced over ranks under
        torch.distributed), or the movement scores summed so far; unchanged when it needs neither."""
        if self.movement is not None:
            return replace(step_pass, observed=self._movement_evidence())
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

    def _movement_evidence(self) -> dict[str, Signal]:
        scores, passes = self.movement.totals()
        if passes == 0:
            raise PrunekitError(
                "method 'movement' ranks weights by -w * dL/dw summed over the backward passes of your training "
                "loop, but no backward pass reached the pruned weights before this pruning (a OneShot() schedule "
                "prunes at the first step()): use a schedule that prunes after training steps, e.g. "
                "Polynomial(begin_step=0, end_step=..., frequency=...), and call pruner.step() after "
                "loss.backward() (and optimizer.step())"
            )
        return {name: Signal(movement=score) for name, score in scores.items()}

    def after_pruning(self, model: nn.Module, step: int, result: PruneResult) -> PruneResult:
        """Start new gradient sums (movement scores go on accumulating); rewind the surviving
        weights when the schedule says so."""
        if self.gradients is not None:
            self.gradients.reset()
        if self.schedule.rewinds_at(step):
            rewind(model, self.snapshot)
            result = replace(result, rewound=True)
        return result

    def close(self) -> None:
        for sums in (self.gradients, self.movement):
            if sums is not None:
                sums.close()

    def state_dict(self) -> dict:
        return {"gradients": self.gradients.state_dict() if self.gradients is not None else None,
                "movement": self.movement.state_dict() if self.movement is not None else None,
                "snapshot": None if self.snapshot is None else {k: v.clone() for k, v in self.snapshot.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        if self.gradients is not None and state.get("gradients") is not None:
            self.gradients.load_state_dict(state["gradients"])
        if self.movement is not None and state.get("movement") is not None:
            self.movement.load_state_dict(state["movement"])
        if state.get("snapshot") is not None:
            self.snapshot = {name: tensor.clone() for name, tensor in state["snapshot"].items()}
