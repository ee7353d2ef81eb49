"""What a pruned model may cost (:class:`Budget`) and how much each layer loses to meet it
(:class:`Allocation`); :mod:`prunekit.allocation` computes allocations.

A budget is ``sparsity`` (share of the targeted units removed), ``params`` / ``macs`` (share of
the dense parameter / MAC count to keep, or an absolute count when the value is >= 1) or
``latency`` (share of the dense measured latency to keep).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from prunekit.errors import PrunekitError, unknown_name

BUDGET_KINDS = ("sparsity", "params", "macs", "latency")


@dataclass(frozen=True)
class Budget:
    """What the pruned model may cost (see the module docstring); ``Budget.parse("macs=0.25")``.

    >>> Budget("params", 0.1).limit(1000), Budget("params", 250).limit(1000)
    (100.0, 250)
    """

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise unknown_name("budget kind", self.kind, BUDGET_KINDS)
        value = self.value
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise PrunekitError(f"budget value must be a number, got {value!r}")
        if self.kind == "sparsity" and not 0.0 <= value < 1.0:
            raise PrunekitError(f"a sparsity budget is the share of units removed, in [0, 1); got {value}")
        if self.kind == "latency" and not 0.0 < value <= 1.0:
            raise PrunekitError(f"a latency budget is the share of the dense latency to keep, in (0, 1]; got {value}")
        if self.kind in ("params", "macs") and (value <= 0 or (value >= 1 and value != int(value))):
            raise PrunekitError(f"a {self.kind} budget is the share of the dense count to keep, in (0, 1), or a "
                                f"whole count >= 1 (e.g. {self.kind}=0.25 or {self.kind}=120000); got {value}")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``"KIND=VALUE"``, e.g. ``"macs=0.25"`` or ``"params=120000"``.

        >>> Budget.parse("macs=0.25")
        Budget(kind='macs', value=0.25)
        """
        kind, sep, value = str(text).partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise PrunekitError(f"a budget is KIND=VALUE with KIND one of {', '.join(BUDGET_KINDS)}, e.g. "
                                f"macs=0.25 (keep 25% of the MACs); got {text!r}")
        return cls(kind.strip(), int(number) if number >= 1 and number == int(number) else number)

    def limit(self, dense: float) -> float:
        """The most the pruned model may have when the dense model has `dense`."""
        return self.value * dense if self.value < 1 else self.value

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


@dataclass(frozen=True)
class Allocation:
    """Per-layer amounts that meet a budget: ``layer_sparsity`` is ``{group name: share of its
    units removed}`` (exact: units removed / units). `dense` and `achieved` are the budgeted
    quantity (params, MACs per example, or milliseconds) before and after; `epsilon` the common
    predicted drop (``sensitivity``)."""

    allocation: str
    budget: Budget
    granularity: str
    method: str
    layer_sparsity: dict[str, float]
    units_removed: int
    units_total: int
    dense: float | None = None
    achieved: float | None = None
    epsilon: float | None = None

    @property
    def sparsity(self) -> float:
        """Share of all targeted units removed."""
        return self.units_removed / max(self.units_total, 1)

    def to_dict(self) -> dict:
        """JSON-ready fields (the budget as ``"kind=value"``)."""
        return {**asdict(self), "budget": str(self.budget), "sparsity": self.sparsity}


__all__ = ["BUDGET_KINDS", "Allocation", "Budget"]
