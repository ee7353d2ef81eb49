"""When a ``Pruner`` prunes, and to which sparsity: one object per schedule, steps counted from 0.

A schedule is asked at every ``pruner.step()`` whether it prunes at that step and, if so, which
sparsity target to reach (a ratio schedule ramps towards the Pruner's final `sparsity`). It
holds no state of its own: the Pruner keeps the step count (and a lottery's snapshot, a gradient
schedule's running sums), so a schedule can be shared and compared. Step `k` is the ``k``-th
``pruner.step()`` call; called after each optimiser step, as in the README's loop, it follows
``k + 1`` optimiser steps.

    OneShot(at_step=0)                         prune once, to the target
    Iterative(levels=3, every=500)             k prunings `every` steps apart, fine-tuning between
    Polynomial(0.0, 0.9, 0, 2000, 100)         gradual (Zhu & Gupta 2017): cubic ramp begin -> end
    Polynomial(..., threshold=0.0)             the same ramp as a cap on what scores below 0 may lose
    GradientThreshold(1e-4, 0, 2000, 100)      prune weights whose mean |grad| stayed below theta
    Lottery(levels=5, every=2000, rewind_step=0)  iterative magnitude pruning + weight rewinding

Adding a schedule = one frozen dataclass implementing the methods of ``Schedule``, one signature each.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from prunekit.errors import PrunekitError


class Schedule:
    """The interface every schedule implements (optional behaviours default to "none")."""

    #: the sparsity-selection method this schedule implies when the user names none
    default_method: str | None = None

    def prunes_at(self, step: int) -> bool:
        """Whether the Pruner prunes at `step` (0 is the first ``step()`` call)."""
        raise NotImplementedError

    def sparsity_at(self, step: int, final: float) -> float:
        """The sparsity to reach at a pruning `step`, for a final target of `final`."""
        raise NotImplementedError

    def finished(self, step: int) -> bool:
        """True once no step at or after `step` prunes."""
        raise NotImplementedError

    def final_sparsity(self, sparsity: float | None) -> float | None:
        """The final target, from the Pruner's `sparsity` and the schedule's own (if it has one)."""
        return sparsity

    def threshold_at(self, step: int) -> float | None:
        """An absolute score threshold to apply at `step` (None: select by ratio only)."""
        return None

    def snapshot_step(self) -> int | None:
        """Weights are remembered after this many optimiser steps, for rewinding (None: never)."""
        return None

    def rewinds_at(self, step: int) -> bool:
        """Whether the surviving weights go back to the snapshot right after pruning at `step`."""
        return False

    @property
    def accumulates_gradients(self) -> bool:
        """True when the Pruner must sum |gradient| of the pruned weights during training."""
        return False

    def to_dict(self) -> dict:
        """Plain settings, stored in ``pruner.state_dict()`` and compared on resume."""
        return {"type": type(self).__name__, **asdict(self)}


def _check_int(owner: str, name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PrunekitError(f"{owner}({name}=...) must be an int >= {minimum}; got {value!r}")


def _check_fraction(owner: str, name: str, value: object) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0):
        raise PrunekitError(f"{owner}({name}=...) must be a sparsity in [0, 1) (0.9 removes 90%); got {value!r}")


def _check_window(owner: str, begin_step: int, end_step: int, frequency: int) -> None:
    _check_int(owner, "begin_step", begin_step, 0)
    _check_int(owner, "end_step", end_step, 0)
    _check_int(owner, "frequency", frequency, 1)
    if end_step < begin_step:
        raise PrunekitError(f"{owner}: end_step ({end_step}) comes before begin_step ({begin_step}); pruning "
                            "runs from begin_step to end_step, so end_step must be >= begin_step")


def _in_window(step: int, begin_step: int, end_step: int, frequency: int) -> bool:
    return begin_step <= step <= end_step and ((step - begin_step) % frequency == 0 or step == end_step)


def _cubic(step: int, begin_step: int, end_step: int, initial: float, final: float, power: float) -> float:
    if end_step == begin_step or step >= end_step:
        return final
    progress = max(0.0, (step - begin_step) / (end_step - begin_step))
    return final + (initial - final) * (1.0 - progress) ** power


def _geometric(level: int, levels: int, final: float) -> float:
    """The sparsity after `level` of `levels` prunings that each remove the same share of what is left."""
    return 1.0 - (1.0 - final) ** (level / levels) if level < levels else final


@dataclass(frozen=True)
class OneShot(Schedule):
    """Prune once, to the final target, at step `at_step` (default: the first ``step()``).

    >>> schedule = OneShot()
    >>> schedule.prunes_at(0), schedule.prunes_at(1), schedule.sparsity_at(0, 0.9), schedule.finished(1)
    (True, False, 0.9, True)
    """

    at_step: int = 0

    def __post_init__(self) -> None:
        _check_int("OneShot", "at_step", self.at_step, 0)

    def prunes_at(self, step: int) -> bool:
        return step == self.at_step

    def sparsity_at(self, step: int, final: float) -> float:
        return final

    def finished(self, step: int) -> bool:
        return step > self.at_step


@dataclass(frozen=True)
class Iterative(Schedule):
    """Prune in `levels` rounds `every` steps apart (the first at `start`), fine-tuning between:
    the seed's prune -> evaluate -> fine-tune -> repeat.

    `levels` is a count (each round removes the same share of the weights left, so the last
    reaches the Pruner's target) or the explicit increasing sparsities of each round (the last one
    is the target).

    >>> schedule = Iterative(levels=3, every=100)
    >>> [step for step in range(301) if schedule.prunes_at(step)]
    [0, 100, 200]
    >>> [round(schedule.sparsity_at(step, 0.875), 3) for step in (0, 100, 200)]
    [0.5, 0.75, 0.875]
    >>> Iterative(levels=(0.5, 0.8), every=10).sparsity_at(10, 0.8)
    0.8
    """

    levels: int | tuple[float, ...] = 3
    every: int = 1
    start: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.levels, (list, tuple)):
            object.__setattr__(self, "levels", tuple(self.levels))
            for value in self.levels:
                _check_fraction("Iterative", "levels", value)
            if not self.levels or any(b <= a for a, b in zip(self.levels, self.levels[1:])):
                raise PrunekitError(f"Iterative(levels=...) as sparsities must be increasing, e.g. (0.5, 0.75, 0.9); "
                                    f"got {self.levels!r}")
        else:
            _check_int("Iterative", "levels", self.levels, 1)
        _check_int("Iterative", "every", self.every, 1)
        _check_int("Iterative", "start", self.start, 0)

    @property
    def count(self) -> int:
        return len(self.levels) if isinstance(self.levels, tuple) else self.levels

    def final_sparsity(self, sparsity: float | None) -> float | None:
        if not isinstance(self.levels, tuple):
            return sparsity
        if sparsity is not None and not math.isclose(sparsity, self.levels[-1]):
            raise PrunekitError(f"Iterative(levels={self.levels}) ends at {self.levels[-1]}, but the Pruner's "
                                f"sparsity is {sparsity}; give one of them (or make them agree)")
        return self.levels[-1]

    def _level(self, step: int) -> int:
        return (step - self.start) // self.every + 1

    def prunes_at(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.every == 0 and self._level(step) <= self.count

    def sparsity_at(self, step: int, final: float) -> float:
        level = min(max(self._level(step), 1), self.count)
        if isinstance(self.levels, tuple):
            return self.levels[level - 1]
        return _geometric(level, self.count, final)

    def finished(self, step: int) -> bool:
        return step > self.start + (self.count - 1) * self.every


@dataclass(frozen=True)
class Polynomial(Schedule):
    """Gradual pruning (Zhu & Gupta 2017): every `frequency` steps from `begin_step` to `end_step`
    the target rises as ``final + (initial - final) * (1 - progress) ** power``, fast at first
    and slowly at the end, while training recovers. `final` defaults to the Pruner's `sparsity`.

    With a `threshold`, each pruning removes only units scoring below it, the ramp (towards the
    Pruner's `sparsity`, if given) being a cap: the lowest scores go first, and the final sparsity
    may stay below the target. Soft movement pruning uses ``threshold=0.0`` with method
    ``"movement"`` (see ``prunekit.harness_movement``).

    >>> schedule = Polynomial(initial=0.0, final=0.5, begin_step=1000, end_step=2000, frequency=100)
    >>> [round(schedule.sparsity_at(step, 0.5), 3) for step in (1000, 1500, 2000)]
    [0.0, 0.438, 0.5]
    >>> schedule.prunes_at(1100), schedule.prunes_at(1150), schedule.finished(2001)
    (True, False, True)
    >>> Polynomial(end_step=10, threshold=0.0).threshold_at(5)
    0.0
    """

    initial: float = 0.0
    final: float | None = None
    begin_step: int = 0
    end_step: int = 0
    frequency: int = 100
    power: float = 3.0
    threshold: float | None = None

    def __post_init__(self) -> None:
        _check_fraction("Polynomial", "initial", self.initial)
        if self.threshold is not None and not (isinstance(self.threshold, (int, float))
                                               and not isinstance(self.threshold, bool) and math.isfinite(self.threshold)):
            raise PrunekitError(f"Polynomial(threshold=...) is a score below which units go (the ramp capping how "
                                f"many): a finite number, or None to prune by the ramp alone; got {self.threshold!r}")
        if self.final is not None:
            _check_fraction("Polynomial", "final", self.final)
            if self.final < self.initial:
                raise PrunekitError(f"Polynomial: final ({self.final}) is below initial ({self.initial}); "
                                    "sparsity only rises during a schedule")
        _check_window("Polynomial", self.begin_step, self.end_step, self.frequency)
        if not (isinstance(self.power, (int, float)) and not isinstance(self.power, bool) and self.power > 0):
            raise PrunekitError(f"Polynomial(power=...) must be a positive number (3 is Zhu & Gupta's); "
                                f"got {self.power!r}")

    def final_sparsity(self, sparsity: float | None) -> float | None:
        if self.final is None:
            if sparsity is not None and sparsity < self.initial:
                raise PrunekitError(f"Polynomial: the Pruner's sparsity ({sparsity}) is below initial "
                                    f"({self.initial}); sparsity only rises during a schedule")
            return sparsity
        if sparsity is not None and not math.isclose(sparsity, self.final):
            raise PrunekitError(f"Polynomial(final={self.final}) disagrees with the Pruner's sparsity={sparsity}; "
                                "give one of them (or make them agree)")
        return self.final

    def prunes_at(self, step: int) -> bool:
        return _in_window(step, self.begin_step, self.end_step, self.frequency)

    def sparsity_at(self, step: int, final: float) -> float:
        target = final if self.final is None else self.final
        return _cubic(step, self.begin_step, self.end_step, self.initial, target, self.power)

    def threshold_at(self, step: int) -> float | None:
        return self.threshold

    def finished(self, step: int) -> bool:
        return step > self.end_step


@dataclass(frozen=True)
class GradientThreshold(Schedule):
    """The seed's in-training rule: while training, every `frequency` steps from `begin_step` to
    `end_step`, weights whose mean |gradient| since the previous pruning stayed below `theta` are
    pruned (masked weights get no update). The Pruner sums |grad| of its weights after every
    backward pass (method ``"gradient"`` reads it; ``"taylor"`` reads |w * grad|).

    With the Pruner's `sparsity` as well, `sparsity` caps what `theta` may remove (the lowest
    gradients go first). Without `theta` (None), `sparsity` is the target, reached on the cubic
    ramp of :class:`Polynomial` by the lowest accumulated gradients.

    >>> schedule = GradientThreshold(theta=1e-4, begin_step=100, end_step=300, frequency=100)
    >>> [step for step in range(400) if schedule.prunes_at(step)], schedule.threshold_at(200)
    ([100, 200, 300], 0.0001)
    """

    theta: float | None = None
    begin_step: int = 0
    end_step: int = 0
    frequency: int = 100

    default_method = "gradient"

    def __post_init__(self) -> None:
        if self.theta is not None and not (isinstance(self.theta, (int, float)) and not isinstance(self.theta, bool)
                                           and math.isfinite(self.theta) and self.theta >= 0):
            raise PrunekitError(f"GradientThreshold(theta=...) is a mean |gradient| below which weights are "
                                f"pruned: a finite number >= 0 (or None to target the Pruner's sparsity); "
                                f"got {self.theta!r}")
        _check_window("GradientThreshold", self.begin_step, self.end_step, self.frequency)

    def final_sparsity(self, sparsity: float | None) -> float | None:
        if self.theta is None and sparsity is None:
            raise PrunekitError("GradientThreshold(theta=None) targets the Pruner's sparsity: pass sparsity= "
                                "to the Pruner, or give theta= (the mean |gradient| below which weights go)")
        return sparsity

    def prunes_at(self, step: int) -> bool:
        return _in_window(step, self.begin_step, self.end_step, self.frequency)

    def sparsity_at(self, step: int, final: float) -> float:
        if self.theta is not None:
            return final  # a cap
        return _cubic(step, self.begin_step, self.end_step, 0.0, final, 3.0)

    def threshold_at(self, step: int) -> float | None:
        return self.theta

    def finished(self, step: int) -> bool:
        return step > self.end_step

    @property
    def accumulates_gradients(self) -> bool:
        return True


@dataclass(frozen=True)
class Lottery(Schedule):
    """Lottery tickets (Frankle & Carbin 2019) with rewinding (Frankle et al. 2020): train `every`
    steps, prune by magnitude, put the surviving weights back to their values after
    `rewind_step` optimiser steps (0: the initialisation), train again; `levels` rounds, each
    removing the same share of what is left, the last reaching the target. Start it on the
    *untrained* model, in the loop of its original training; after each rewind, reset the
    optimiser's state (``result.rewound``; e.g. build a new optimiser).

    >>> schedule = Lottery(levels=2, every=100, rewind_step=10)
    >>> [step for step in range(300) if schedule.prunes_at(step)], schedule.snapshot_step()
    ([99, 199], 10)
    >>> round(schedule.sparsity_at(99, 0.96), 2), schedule.rewinds_at(199)
    (0.8, True)
    """

    levels: int = 5
    every: int = 1
    rewind_step: int = 0

    default_method = "magnitude"

    def __post_init__(self) -> None:
        _check_int("Lottery", "levels", self.levels, 1)
        _check_int("Lottery", "every", self.every, 1)
        _check_int("Lottery", "rewind_step", self.rewind_step, 0)
        if self.rewind_step > self.every:
            raise PrunekitError(f"Lottery: rewind_step ({self.rewind_step}) comes after the first pruning (after "
                                f"every={self.every} steps); rewind to an earlier step (0 = the initialisation)")

    def prunes_at(self, step: int) -> bool:
        return (step + 1) % self.every == 0 and (step + 1) // self.every <= self.levels

    def sparsity_at(self, step: int, final: float) -> float:
        return _geometric(min((step + 1) // self.every, self.levels), self.levels, final)

    def snapshot_step(self) -> int | None:
        return self.rewind_step

    def rewinds_at(self, step: int) -> bool:
        return self.prunes_at(step)

    def finished(self, step: int) -> bool:
        return step >= self.levels * self.every

