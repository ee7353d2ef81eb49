"""The rows of a comparison report (`prunekit.report_html`): runs grouped over seeds, with the
cells the HTML and markdown tables print.

Unlike `prunekit.report.aggregate`, a field a kind of run lacks is ``None`` instead of an error:
pretrained-transformer runs (`prunekit.harness_transformers`) have no MACs and no per-layer
sparsity, and their unstructured runs are not timed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from prunekit.errors import PrunekitError

#: granularity -> family compared in the report's words
FAMILIES = {"unstructured": "unstructured", "neuron": "neuron", "lstm-unit": "neuron", "channel": "channel",
            "head": "head", "layer": "layer", "hybrid": "hybrid"}

TABLE_HEADER = ("model", "method", "target", "achieved", "seeds", "accuracy", "± sd", "dense", "drop",
                "nonzero params", "params x", "MACs x", "latency ms", "speedup", "Pareto")


def run_label(run: dict) -> str:
    """How the report names a run's method: ``granularity:method`` plus what sets it apart.

    >>> run_label({"granularity": "unstructured", "method": "wanda", "pattern": "2:4"})
    'unstructured:wanda 2:4'
    """
    label = f"{run['granularity']}:{run['method']}"
    if run.get("pattern"):
        label += f" {run['pattern']}"
    if run.get("reconstruct"):
        label += " +reconstruct"
    if run.get("schedule") == "lottery-reinit":
        label += " (reinit control)"
    return label


def _mean(members: list[dict], key: str) -> float | None:
    values = [member.get(key) for member in members]
    return None if any(value is None for value in values) else statistics.fmean(values)


def _speedup(members: list[dict]) -> float | None:
    """Geometric mean of each run's own dense / pruned latency (paired timing), None if untimed."""
    if any(member.get("latency_ms") is None or member.get("latency_dense_ms") is None for member in members):
        return None
    return statistics.geometric_mean(member["latency_dense_ms"] / member["latency_ms"] for member in members)


def _layer_sparsity(members: list[dict]) -> dict[str, float]:
    """Mean per-layer sparsity over seeds, layers in the order the first run lists them."""
    names: dict[str, list[float]] = {}
    for member in members:
        for name, value in (member.get("layer_sparsity") or {}).items():
            names.setdefault(name, []).append(value)
    return {name: statistics.fmean(values) for name, values in names.items()}


def report_rows(runs: Iterable[dict]) -> list[dict]:
    """Group runs by (model, method label, scope, target sparsity), in the order they first appear,
    with the mean over seeds and the per-seed accuracies (runs without an accuracy are left out).

    >>> rows = report_rows([{"model": "m", "method": "magnitude", "granularity": "unstructured", "seed": s,
    ...     "sparsity_target": 0.9, "sparsity_achieved": 0.9, "accuracy": a, "accuracy_dense": 0.9}
    ...     for s, a in [(0, 0.8), (1, 0.9)]])
    >>> [(row["label"], row["seeds"], round(row["accuracy"], 3), row["macs_nonzero"]) for row in rows]
    [('unstructured:magnitude', 2, 0.85, None)]
    """
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        if run.get("accuracy") is not None:
            key = (run.get("model"), run_label(run), run.get("scope"), run.get("sparsity_target"))
            groups.setdefault(key, []).append(run)
    rows = []
    for (model, label, scope, sparsity), members in groups.items():
        accuracies = [member["accuracy"] for member in members]
        row = {"model": model, "label": label, "method": members[0]["method"],
               "granularity": members[0]["granularity"], "family": FAMILIES.get(members[0]["granularity"]),
               "scope": scope, "sparsity_target": sparsity, "seeds": len(members), "accuracies": accuracies,
               "accuracy": statistics.fmean(accuracies), "accuracy_std": statistics.pstdev(accuracies),
               "cosine": any(member.get("accuracy_metric") for member in members),
               "speedup": _speedup(members), "layer_sparsity": _layer_sparsity(members),
               "latency_noisy": any(member.get("latency_noisy") for member in members)}
        for key in ("accuracy_dense", "sparsity_achieved", "params", "params_nonzero", "params_dense",
                    "macs_nonzero", "macs_dense", "latency_ms", "latency_dense_ms"):
            row[key] = _mean(members, key)
        row["drop"] = None if row["accuracy_dense"] is None else row["accuracy_dense"] - row["accuracy"]
        rows.append(row)
    return rows


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """`numerator` / `denominator`, None when either is missing or the denominator is 0.

    >>> ratio(10, 4), ratio(None, 4), ratio(3, 0)
    (2.5, None, None)
    """
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def reductions(row: dict) -> dict[str, float | None]:
    """How many times smaller the run is than the dense model: ``params`` (nonzero parameters),
    ``storage`` (parameters of the deployed tensors, zeros included), ``macs`` (nonzero MACs).

    >>> reductions({"params_dense": 100, "params_nonzero": 10, "params": 100, "macs_dense": 50, "macs_nonzero": None})
    {'params': 10.0, 'storage': 1.0, 'macs': None}
    """
    return {"params": ratio(row["params_dense"], row["params_nonzero"]),
            "storage": ratio(row["params_dense"], row["params"]),
            "macs": ratio(row["macs_dense"], row["macs_nonzero"])}


def format_accuracy(value: float | None, cosine: bool) -> str:
    """An accuracy as printed: a percentage, or for embedding runs the mean cosine itself.

    >>> format_accuracy(0.957, False), format_accuracy(0.80061, True), format_accuracy(None, False)
    ('95.70%', '0.8006', '-')
    """
    if value is None:
        return "-"
    return f"{value:.4f}" if cosine else f"{100 * value:.2f}%"


def format_drop(row: dict) -> str:
    """The accuracy drop from the dense model as printed: points, or cosine for embedding runs.

    >>> format_drop({"drop": 0.021, "cosine": False}), format_drop({"drop": 0.19938, "cosine": True})
    ('2.10 pt', '0.1994')
    """
    if row["drop"] is None:
        return "-"
    return f"{row['drop']:.4f}" if row["cosine"] else f"{100 * row['drop']:.2f} pt"


def format_times(value: float | None) -> str:
    """A ratio such as a speedup, ``2.29x``; ``-`` when missing or not finite.

    >>> format_times(2.2871), format_times(None)
    ('2.29x', '-')
    """
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def format_sparsity(value: float | None, digits: int = 0) -> str:
    """A sparsity as a percentage (``-`` when missing).

    >>> format_sparsity(0.9), format_sparsity(0.90174, 2), format_sparsity(None)
    ('90%', '90.17%', '-')
    """
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def table_cells(rows: list[dict], frontiers: dict[str, list[bool | None]]) -> list[list[str]]:
    """One list of cells per row, in the order of `TABLE_HEADER`; `frontiers` maps a cost name
    to each row's place on that Pareto frontier (`prunekit.report_pareto.frontier_flags`).

    >>> row = report_rows([{"model": "m", "method": "l1", "granularity": "channel", "seed": 0,
    ...     "sparsity_target": 0.5, "sparsity_achieved": 0.5, "accuracy": 0.97, "accuracy_dense": 0.98,
    ...     "params": 40, "params_nonzero": 40, "params_dense": 100, "latency_ms": 1.0, "latency_dense_ms": 2.0}])
    >>> table_cells(row, {"latency": [True]})[0][-6:]
    ['40', '2.50x', '-', '1.000', '2.00x', 'latency']
    """
    cells = []
    for index, row in enumerate(rows):
        reduced = reductions(row)
        pareto = ", ".join(name for name, flags in frontiers.items() if flags[index])
        cells.append([
            str(row["model"]), row["label"], format_sparsity(row["sparsity_target"]),
            format_sparsity(row["sparsity_achieved"], 2), str(row["seeds"]),
            format_accuracy(row["accuracy"], row["cosine"]),
            f"{row['accuracy_std']:.4f}" if row["cosine"] else f"{100 * row['accuracy_std']:.2f}",
            format_accuracy(row["accuracy_dense"], row["cosine"]), format_drop(row),
            "-" if row["params_nonzero"] is None else f"{row['params_nonzero']:,.0f}",
            format_times(reduced["params"]), format_times(reduced["macs"]),
            "-" if row["latency_ms"] is None else f"{row['latency_ms']:.3f}",
            ("~" if row["latency_noisy"] and row["speedup"] is not None else "") + format_times(row["speedup"]),
            pareto,
        ])
    return cells


def _sparsity_key(row: dict) -> float:
    value = row["sparsity_target"] if row["sparsity_target"] is not None else row["sparsity_achieved"]
    return -1.0 if value is None else value


def most_pruned_best(rows: list[dict]) -> dict:
    """Of `rows`, the most accurate at the highest target sparsity (achieved, where no target).

    >>> rows = [{"sparsity_target": s, "sparsity_achieved": s, "accuracy": a}
    ...         for s, a in [(0.5, 0.9), (0.9, 0.7), (0.9, 0.8)]]
    >>> most_pruned_best(rows)["accuracy"]
    0.8
    """
    return max(rows, key=lambda row: (_sparsity_key(row), row["accuracy"]))


def choose_row(rows: list[dict], chosen: str | None = None) -> dict | None:
    """The row whose per-layer sparsity a report draws: the one named by `chosen` (its label or
    method, optionally ``@sparsity``: ``"unstructured:magnitude@0.9"``, ``"magnitude"``), else
    `most_pruned_best` of the rows that record per-layer sparsity; None when none does.

    >>> rows = report_rows([{"model": "m", "method": name, "granularity": "neuron", "seed": 0, "accuracy": a,
    ...     "sparsity_target": s, "layer_sparsity": {"fc1": s}} for name, s, a in [("l1", 0.5, 0.9), ("l2", 0.7, 0.8)]])
    >>> choose_row(rows)["label"], choose_row(rows, "l1@0.5")["label"]
    ('neuron:l2', 'neuron:l1')
    """
    candidates = [row for row in rows if row["layer_sparsity"]]
    if chosen is not None:
        def names(row: dict) -> set[str]:
            plain = {row["label"], row["method"]}
            if row["sparsity_target"] is None:
                return plain
            return plain | {f"{name}@{row['sparsity_target']:g}" for name in plain}

        matches = [row for row in candidates if chosen in names(row)]
        if not matches:
            offered = ", ".join(sorted({f"{row['label']}@{row['sparsity_target']:g}" for row in candidates
                                        if row["sparsity_target"] is not None})) or "none"
            raise PrunekitError(f"no run named '{chosen}' with per-layer sparsity in this report; choose one of: "
                                f"{offered}")
        candidates = matches
    return most_pruned_best(candidates) if candidates else None
