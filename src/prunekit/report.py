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
    ...     "macs_dense": 10, "latency_ms": 1.0, "latency_dense_ms": 2.0} for s, a in [(0, 0.8), (1, 0.9)]])
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
            "macs_nonzero": mean("macs_nonzero"), "macs": mean("macs"), "macs_dense": mean("macs_dense"),
            "latency_ms": mean("latency_ms"), "latency_dense_ms": mean("latency_dense_ms"),
        })
    return rows


def format_table(runs: Iterable[dict]) -> str:
    """A fixed-width table of the aggregated runs, one line per method x sparsity.

    ``MACs x`` is dense MACs / nonzero MACs of the deployed model, ``speedup`` the measured
    dense / pruned latency ratio (paired measurement in the same process).
    """
    rows = aggregate(runs)
    header = (f"{'method':<22}{'gran.':<13}{'target':>7}{'achieved':>9}{'acc %':>8}{'± sd':>6}"
              f"{'dense %':>8}{'drop pt':>8}{'params':>10}{'nonzero':>10}{'MACs nz':>11}{'MACs x':>7}"
              f"{'lat ms':>8}{'speedup':>8}")
    lines = [header, "-" * len(header)]
    for row in rows:
        speedup = row["latency_dense_ms"] / row["latency_ms"] if row["latency_ms"] else float("nan")
        mac_ratio = row["macs_dense"] / row["macs_nonzero"] if row["macs_nonzero"] else float("nan")
        lines.append(
            f"{row['method']:<22}{row['granularity']:<13}{row['sparsity_target']:>7.0%}"
            f"{row['sparsity_achieved']:>9.2%}{100 * row['accuracy']:>8.2f}{100 * row['accuracy_std']:>6.2f}"
            f"{100 * row['accuracy_dense']:>8.2f}{row['drop_pt']:>8.2f}"
            f"{row['params']:>10,.0f}{row['params_nonzero']:>10,.0f}{row['macs_nonzero']:>11,.0f}"
            f"{mac_ratio:>6.2f}x"
            f"{row['latency_ms']:>8.3f}{speedup:>7.2f}x"
        )
    return "\n".join(lines)
