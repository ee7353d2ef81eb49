"""Readable tables of comparison runs (mean over seeds)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable


def aggregate(runs: Iterable[dict]) -> list[dict]:
    """Group runs by (model, method, granularity, scope, sparsity) and average over seeds.

    >>> rows = aggregate([{"model": "m", "method": "magnitude", "granularity": "unstructured",
    ...     "scope": "global", "sparsity_target": 0.5, "seed": s, "accuracy": a, "accuracy_dense": 0.9,
    ...     "sparsity_achieved": 0.5, "params_nonzero": 5, "params": 10, "macs_nonzero": 5, "macs": 10,
    ...     "latency_ms": 1.0, "latency_dense_ms": 2.0} for s, a in [(0, 0.8), (1, 0.9)]])
    >>> round(rows[0]["accuracy"], 3), rows[0]["seeds"]
    (0.85, 2)
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        key = (run["model"], run["method"], run["granularity"], run["scope"], run["sparsity_target"])
        groups[key].append(run)
    rows = []
    for (model, method, granularity, scope, sparsity), members in groups.items():
        def mean(key: str) -> float:
            return statistics.fmean(member[key] for member in members)

        accuracies = [member["accuracy"] for member in members]
        rows.append({
            "model": model, "method": method, "granularity": granularity, "scope": scope,
            "sparsity_target": sparsity, "seeds": len(members),
            "accuracy": mean("accuracy"), "accuracy_std": statistics.pstdev(accuracies),
            "accuracy_dense": mean("accuracy_dense"), "drop_pt": 100 * (mean("accuracy_dense") - mean("accuracy")),
            "sparsity_achieved": mean("sparsity_achieved"),
            "params_nonzero": mean("params_nonzero"), "params": mean("params"),
            "macs_nonzero": mean("macs_nonzero"), "macs": mean("macs"),
            "latency_ms": mean("latency_ms"), "latency_dense_ms": mean("latency_dense_ms"),
        })
    return rows


def format_table(runs: Iterable[dict]) -> str:
    """A fixed-width table of the aggregated runs, one line per method x sparsity."""
    rows = aggregate(runs)
    header = (f"{'method':<22}{'gran.':<14}{'target':>7}{'achieved':>10}{'acc %':>9}{'± sd':>7}"
              f"{'dense %':>9}{'drop pt':>9}{'nonzero params':>16}{'nonzero MACs':>14}"
              f"{'lat ms':>9}{'speedup':>9}")
    lines = [header, "-" * len(header)]
    for row in rows:
        speedup = row["latency_dense_ms"] / row["latency_ms"] if row["latency_ms"] else float("nan")
        lines.append(
            f"{row['method']:<22}{row['granularity']:<14}{row['sparsity_target']:>7.0%}"
            f"{row['sparsity_achieved']:>10.2%}{100 * row['accuracy']:>9.2f}{100 * row['accuracy_std']:>7.2f}"
            f"{100 * row['accuracy_dense']:>9.2f}{row['drop_pt']:>9.2f}"
            f"{row['params_nonzero']:>16,.0f}{row['macs_nonzero']:>14,.0f}"
            f"{row['latency_ms']:>9.3f}{speedup:>8.2f}x"
        )
    return "\n".join(lines)
