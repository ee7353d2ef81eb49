"""Pareto frontiers of accuracy against a cost (nonzero MACs, measured latency) in a report."""

from __future__ import annotations

from collections.abc import Sequence

from prunekit.report_rows import ratio

#: cost name -> the share of the dense model's cost a report row has (None: not measured);
#: latency is the paired pruned / dense ratio (1 / speedup), so runs timed at different moments compare
COSTS = {
    "MACs": lambda row: ratio(row["macs_nonzero"], row["macs_dense"]),
    "latency": lambda row: None if row["speedup"] is None else 1.0 / row["speedup"],
}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which ``(cost, accuracy)`` points are on the Pareto frontier: a point is, unless another
    point has accuracy >= and cost <= with at least one of the two strict. Equal points are
    both on it (neither is better).

    >>> pareto_front([(1.0, 0.9), (0.5, 0.9), (0.5, 0.8), (0.2, 0.7), (0.5, 0.9)])
    [False, True, False, True, True]
    """
    def dominated(cost: float, accuracy: float) -> bool:
        return any(other_cost <= cost and other_accuracy >= accuracy
                   and (other_cost < cost or other_accuracy > accuracy) for other_cost, other_accuracy in points)

    return [not dominated(cost, accuracy) for cost, accuracy in points]


def frontier_flags(rows: list[dict], cost: str) -> list[bool | None]:
    """For each report row, whether it is on its model's frontier of mean accuracy against the
    `cost` named in `COSTS`; None for rows without that cost.

    >>> rows = [{"model": "m", "accuracy": a, "speedup": s} for a, s in [(0.9, 1.0), (0.8, 2.0), (0.7, None)]]
    >>> frontier_flags(rows, "latency")
    [True, True, None]
    """
    flags: list[bool | None] = [None] * len(rows)
    for model in dict.fromkeys(row["model"] for row in rows):
        indices = [index for index, row in enumerate(rows) if row["model"] == model and COSTS[cost](row) is not None]
        points = [(COSTS[cost](rows[index]), rows[index]["accuracy"]) for index in indices]
        for index, on_front in zip(indices, pareto_front(points)):
            flags[index] = on_front
    return flags
