"""Readable tables of comparison runs (mean over seeds) and the markdown pages of the benchmarks."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable

#: one benchmark check: (description, passed or a verdict such as "REPORT", measured value)
Check = tuple[str, bool | str, str]


def aggregate(runs: Iterable[dict]) -> list[dict]:
    """Group runs by (model, method, granularity, scope, sparsity) and average over seeds.

    Latencies are means in ms; ``speedup`` is the geometric mean over seeds of each run's own
    dense / pruned latency ratio (both timed in the same run), so one slow moment of the machine
    shifts one ratio a little instead of dominating a mean of milliseconds. ``latency_per_mac``
    is speedup / MAC reduction (geometric mean over seeds): 1.0 when latency falls as MACs do.

    >>> rows = aggregate([{"model": "m", "method": "magnitude", "granularity": "unstructured",
    ...     "scope": "global", "sparsity_target": 0.5, "seed": s, "accuracy": a, "accuracy_dense": 0.9,
    ...     "sparsity_achieved": 0.5, "params_nonzero": 5, "params": 10, "macs_nonzero": 5, "macs": 10,
    ...     "macs_dense": 10, "latency_ms": 1.0, "latency_dense_ms": 2.0} for s, a in [(0, 0.8), (1, 0.9)]])
    >>> round(rows[0]["accuracy"], 3), rows[0]["seeds"], rows[0]["speedup"]
    (0.85, 2, 2.0)
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
            "speedup": statistics.geometric_mean(m["latency_dense_ms"] / m["latency_ms"] for m in members),
            "latency_per_mac": _latency_per_mac(members),
            **_noise(members, ""),
        })
    return rows


#: the marker before a speedup whose timing rounds disagreed, and what it means under the table
NOISY_MARK = "~"


def _noise(members: list[dict], suffix: str) -> dict:
    """Whether any run's timing was noisy (prunekit.paired_timing), the largest spread of its
    rounds' ratios and the highest load average seen; runs timed before these were recorded count
    as not noisy."""
    spreads = [m[f"latency{suffix}_spread"] for m in members if m.get(f"latency{suffix}_spread") is not None]
    loads = [m["load_avg_1m"] for m in members if m.get("load_avg_1m") is not None]
    return {f"latency{suffix}_noisy": any(m.get(f"latency{suffix}_noisy") for m in members),
            f"latency{suffix}_spread": max(spreads, default=None), "load_avg_1m": max(loads, default=None)}


def noisy_note(rows: Iterable[dict], keys: tuple[str, ...] = ("latency_noisy",)) -> list[str]:
    """The line under a table that explains the noisy marker; empty when no row is marked.

    >>> noisy_note([{"latency_noisy": True, "latency_spread": 0.4, "load_avg_1m": 3.1}])[0][:40]
    '~ speedup: its timing rounds disagreed b'
    """
    marked = [row for row in rows if any(row.get(key) for key in keys)]
    if not marked:
        return []
    spread = max(max((row.get(key.replace("noisy", "spread")) or 0.0) for key in keys) for row in marked)
    loads = [row["load_avg_1m"] for row in marked if row.get("load_avg_1m") is not None]
    load = f", 1-minute load average up to {max(loads):.1f}" if loads else ""
    return [f"{NOISY_MARK} speedup: its timing rounds disagreed by up to {spread:.0%} of the dense / pruned ratio "
            f"even after extra rounds (the machine was busy{load}); treat it as rough and rerun on a quiet machine"]


def _speedup_cell(speedup: float, noisy: bool, width: int) -> str:
    """``2.29x``, or ``~2.29x`` when its timing was noisy, right-aligned in `width` characters."""
    return f"{(NOISY_MARK if noisy else '') + format(speedup, '.2f'):>{width - 1}}x"


def _latency_per_mac(members: list[dict]) -> float:
    """Geometric mean over runs of (dense / pruned latency) / (dense / nonzero MACs); nan without MACs."""
    if any(not member["macs_nonzero"] for member in members):
        return float("nan")
    return statistics.geometric_mean((m["latency_dense_ms"] / m["latency_ms"]) / (m["macs_dense"] / m["macs_nonzero"])
                                     for m in members)


def format_table(runs: Iterable[dict]) -> str:
    """A fixed-width table of the aggregated runs, one line per model x method x sparsity.

    ``MACs x`` is dense MACs / nonzero MACs of the deployed model, ``speedup`` the measured
    dense / pruned latency ratio (paired measurement in the same run; geometric mean over seeds),
    ``lat/MAC`` speedup / MAC reduction (1.00: latency falls as MACs do; lower: the kernels do not
    turn the removed MACs into time). The model column is as wide as the longest model name,
    since one table may mix several models. A speedup marked ``~`` was timed on a busy machine
    (its rounds' ratios still disagreed after extra rounds, prunekit.paired_timing); a line under
    the table says so.

    >>> run = {"model": "lenet300", "method": "magnitude", "granularity": "unstructured", "scope": "global",
    ...     "sparsity_target": 0.9, "seed": 0, "accuracy": 0.95, "accuracy_dense": 0.96,
    ...     "sparsity_achieved": 0.9, "params_nonzero": 10, "params": 100, "macs_nonzero": 10, "macs": 100,
    ...     "macs_dense": 100, "latency_ms": 1.0, "latency_dense_ms": 2.0}
    >>> header, _, line = format_table([run]).splitlines()
    >>> header.split()[:4], line.split()[:5]
    (['model', 'method', 'gran.', 'target'], ['lenet300', 'magnitude', 'unstructured', '90%', '90.00%'])
    """
    rows = aggregate(runs)
    model_width = max([len("model")] + [len(row["model"]) for row in rows]) + 2
    header = (f"{'model':<{model_width}}{'method':<22}{'gran.':<13}{'target':>7}{'achieved':>9}{'acc %':>8}"
              f"{'± sd':>6}{'dense %':>8}{'drop pt':>8}{'params':>10}{'nonzero':>10}{'MACs nz':>11}{'MACs x':>7}"
              f"{'lat ms':>8}{'speedup':>8}{'lat/MAC':>8}")
    lines = [header, "-" * len(header)]
    for row in rows:
        mac_ratio = row["macs_dense"] / row["macs_nonzero"] if row["macs_nonzero"] else float("nan")
        lines.append(
            f"{row['model']:<{model_width}}{row['method']:<22}{row['granularity']:<13}{row['sparsity_target']:>7.0%}"
            f"{row['sparsity_achieved']:>9.2%}{100 * row['accuracy']:>8.2f}{100 * row['accuracy_std']:>6.2f}"
            f"{100 * row['accuracy_dense']:>8.2f}{row['drop_pt']:>8.2f}"
            f"{row['params']:>10,.0f}{row['params_nonzero']:>10,.0f}{row['macs_nonzero']:>11,.0f}"
            f"{mac_ratio:>6.2f}x"
            f"{row['latency_ms']:>8.3f}{_speedup_cell(row['speedup'], row['latency_noisy'], 8)}"
            f"{row['latency_per_mac']:>8.2f}"
        )
    return "\n".join(lines + noisy_note(rows))


def _mean_or_none(members: list[dict], key: str) -> float | None:
    values = [member.get(key) for member in members]
    return None if any(value is None for value in values) else statistics.fmean(values)


def _latency_cells(members: list[dict], suffix: str) -> str:
    """``pruned / dense ms  speedup`` (geometric mean of each run's ratio), or dashes when untimed."""
    pruned, dense = _mean_or_none(members, f"latency{suffix}_ms"), _mean_or_none(members, f"latency_dense{suffix}_ms")
    if pruned is None or dense is None:
        return f"{'-':>17}{'-':>8}"
    speedup = statistics.geometric_mean(m[f"latency_dense{suffix}_ms"] / m[f"latency{suffix}_ms"] for m in members)
    return f"{pruned:>8.1f} /{dense:>7.1f}{_speedup_cell(speedup, _noise(members, suffix)[f'latency{suffix}_noisy'], 8)}"


def format_transformer_table(runs: Iterable[dict]) -> str:
    """A table of pretrained-transformer runs (prunekit.harness_transformers), mean over seeds; its
    first line says what ``accuracy`` means there: the mean cosine similarity of sentence
    embeddings to the dense model's (dense = 1.0). Latency: pruned / dense ms at batch 1 and at the
    largest batch; ``-`` where a run was not timed (unstructured zeros do not speed up dense kernels);
    ``~`` before a speedup timed on a busy machine, as in `format_table`.

    >>> run = {"method": "wanda", "granularity": "unstructured", "scope": "row", "pattern": None,
    ...     "sparsity_target": 0.5, "sparsity_achieved": 0.5, "accuracy": 0.86, "nn_agreement": 0.75,
    ...     "params": 100, "params_nonzero": 60, "prune_seconds": 1.5, "latency_ms": None,
    ...     "latency_dense_ms": None, "latency_b1_ms": None, "latency_dense_b1_ms": None, "latency_batch_size": 32}
    >>> lines = format_transformer_table([run]).splitlines()
    >>> "mean cosine" in lines[0], lines[3].split()[:6]
    (True, ['wanda', 'unstructured', 'row', '50%', '50.00%', '0.8600'])
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["method"], run["granularity"], run["pattern"] or run["scope"], run["sparsity_target"])].append(run)
    batch = max((run["latency_batch_size"] for members in groups.values() for run in members), default=32)
    header = (f"{'method':<20}{'gran.':<13}{'scope':<7}{'target':>7}{'achieved':>9}{'cosine':>8}{'± sd':>7}"
              f"{'nn agr':>7}{'params':>12}{'nonzero':>12}{'prune s':>8}{'b1 ms / dense':>17}{'speedup':>8}"
              f"{f'b{batch} ms / dense':>17}{'speedup':>8}")
    lines = ["accuracy = cosine: mean cosine similarity of held-out sentence embeddings to the dense model's "
             "(dense = 1.0); nn agr: share of held-out paragraphs whose nearest neighbour is unchanged",
             header, "-" * len(header)]
    noise = []
    for (method, granularity, scope, sparsity), members in groups.items():
        def mean(key: str) -> float:
            return statistics.fmean(member[key] for member in members)

        noise.append({**_noise(members, "_b1"), **_noise(members, "")})
        cosine_sd = statistics.pstdev(member["accuracy"] for member in members)
        lines.append(f"{method:<20}{granularity:<13}{scope:<7}{sparsity:>7.0%}{mean('sparsity_achieved'):>9.2%}"
                     f"{mean('accuracy'):>8.4f}{cosine_sd:>7.4f}{mean('nn_agreement'):>7.3f}{mean('params'):>12,.0f}"
                     f"{mean('params_nonzero'):>12,.0f}{mean('prune_seconds'):>8.2f}"
                     f"{_latency_cells(members, '_b1')}{_latency_cells(members, '')}")
    return "\n".join(lines + noisy_note(noise, ("latency_b1_noisy", "latency_noisy")))


def check_table(checks: list[Check]) -> list[str]:
    """The lines of a benchmark's markdown table of `checks`, each ``(description, result, measured
    value)``: a result True / False reads PASS / FAIL, a string (e.g. ``"REPORT"``) stands as it is.

    >>> for line in check_table([("b > a", True, "2 > 1"), ("c < 1", False, "3"), ("gap", "REPORT", "0.2 pt")]):
    ...     print(line)
    | check | result | value |
    |---|---|---|
    | b > a | PASS | 2 > 1 |
    | c < 1 | FAIL | 3 |
    | gap | REPORT | 0.2 pt |
    """
    lines = ["| check | result | value |", "|---|---|---|"]
    for name, result, value in checks:
        verdict = result if isinstance(result, str) else ("PASS" if result else "FAIL")
        lines.append(f"| {name} | {verdict} | {value} |")
    return lines


def benchmark_markdown(title: str, intro: list[str], tables: list[str], checks: list[Check]) -> str:
    """A benchmark's results page: a ``# title``, the `intro` paragraphs, the fixed-width `tables`
    (e.g. from `format_table`) in one code block, then the table of the `checks` (`check_table`), each
    ``(description, passed, measured value)``. Empty `tables` or `checks` leave their section out.

    >>> print(benchmark_markdown("Demo", ["Command: `run`."], ["a  b", "c  d"], [("b > a", True, "2 > 1")]))
    # Demo
    <BLANKLINE>
    Command: `run`.
    <BLANKLINE>
    ```
    a  b
    <BLANKLINE>
    c  d
    ```
    <BLANKLINE>
    | check | result | value |
    |---|---|---|
    | b > a | PASS | 2 > 1 |
    <BLANKLINE>
    """
    lines = [f"# {title}", ""]
    for paragraph in intro:
        lines += [paragraph, ""]
    if tables:
        lines += ["```", "\n\n".join(tables), "```", ""]
    if checks:
        lines += check_table(checks)
    return "\n".join(lines).rstrip("\n") + "\n"
