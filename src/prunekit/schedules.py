"""When a ``Pruner`` prunes, and to which sparsity: one object per schedule, steps counted from 0.

A schedule is asked at every ``pruner.step()`` whether it prunes at that step and, if so, which
sparsity target to reach (a ratio schedule ramps towards the Pruner's final `sparsity`). It
holds no state of its own: the Pruner keeps the step count, so a schedule can be shared and
compared. Adding a schedule = one subclass with the three methods below, one signature each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prunekit.errors import PrunekitError


class Schedule:
    """The interface every schedule implements."""

    def prunes_at(self, step: int) -> bool:
        """Whether the Pruner prunes at `step` (0 is the first ``step()`` call)."""
        raise NotImplementedError

    def sparsity_at(self, step: int, final: float) -> float:
        """The sparsity to reach at a pruning `step`, for a final target of `final`."""
        raise NotImplementedError

    def finished(self, step: int) -> bool:
        """True once no step at or after `step` prunes."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """Plain settings, stored in ``pruner.state_dict()`` and compared on resume."""
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class OneShot(Schedule):
    """Prune once, to the final target, at step `at_step` (default: the first ``step()``).

    >>> schedule = OneShot()
    >>> schedule.prunes_at(0), schedule.prunes_at(1), schedule.sparsity_at(0, 0.9), schedule.finished(1)
    (True, False, 0.9, True)
    """

    at_step: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.at_step, int) or isinstance(self.at_step, bool) or self.at_step < 0:
            raise PrunekitError(f"OneShot(at_step=...) must be an int >= 0 (0 = the first step()); got {self.at_step!r}")

    def prunes_at(self, step: int) -> bool:
        return step == self.at_step

    def sparsity_at(self, step: int, final: float) -> float:
        return final

    def finished(self, step: int) -> bool:
        return step > self.at_step
