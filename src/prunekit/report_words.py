"""The comparison a report makes in words (weights vs neurons vs channels vs heads vs hybrid:
size, speed, accuracy), every number taken from the measured runs.

Each family present is represented by its most accurate run at its highest target sparsity
(`prunekit.report_rows.most_pruned_best`); families without runs are not mentioned.
"""

from __future__ import annotations

from prunekit.report_rows import (format_accuracy, format_drop, format_sparsity, format_times, most_pruned_best,
                                  reductions)

FAMILY_NAMES = {
    "unstructured": "Weight pruning (unstructured)",
    "neuron": "Neuron pruning",
    "channel": "Channel pruning (structured)",
    "head": "Attention-head pruning",
    "layer": "Layer pruning",
    "hybrid": "Hybrid pruning (units removed, then weights zeroed)",
}
SHORT_NAMES = {"unstructured": "unstructured weights", "neuron": "neurons", "channel": "channels", "head": "heads",
               "layer": "layers", "hybrid": "hybrid"}
COSINE_NOTE = ("Accuracy here is the mean cosine similarity of held-out sentence embeddings to the dense model's "
               "(dense = 1.0000), and a drop is in cosine.")


def _method(row: dict) -> str:
    """The row's label without its granularity (the family says it)."""
    return row["label"].split(":", 1)[-1]


def family_sentence(family: str, rows: list[dict]) -> str:
    """One sentence on a family's runs: its most accurate run at its highest target, with the
    accuracy drop, size reductions and measured speedup; its smallest drop when another run has it.

    >>> from prunekit.report_rows import report_rows
    >>> rows = report_rows([{"model": "m", "method": "l1", "granularity": "channel", "seed": 0, "accuracy": 0.97,
    ...     "accuracy_dense": 0.98, "sparsity_target": 0.5, "sparsity_achieved": 0.5, "params": 40,
    ...     "params_nonzero": 40, "params_dense": 100, "latency_ms": 1.0, "latency_dense_ms": 2.29}])
    >>> print(family_sentence("channel", rows))  # doctest: +NORMALIZE_WHITESPACE
    Channel pruning (structured), best at its highest target 50%: l1 (achieved 50.00%) reaches 97.00%
    (dense 98.00%), a drop of 1.00 pt; 2.50x fewer nonzero parameters (dense tensors 2.50x smaller);
    measured speedup 2.29x.
    """
    best = most_pruned_best(rows)
    reduced = reductions(best)
    text = (f"{FAMILY_NAMES[family]}, best at its highest target {format_sparsity(best['sparsity_target'])}: "
            f"{_method(best)} (achieved {format_sparsity(best['sparsity_achieved'], 2)}) reaches "
            f"{format_accuracy(best['accuracy'], best['cosine'])} (dense "
            f"{format_accuracy(best['accuracy_dense'], best['cosine'])}), a drop of {format_drop(best)}")
    if reduced["params"] is not None:
        text += f"; {format_times(reduced['params'])} fewer nonzero parameters"
        if reduced["storage"] is not None:
            text += f" (dense tensors {format_times(reduced['storage'])} smaller)"
    if reduced["macs"] is not None:
        text += f", {format_times(reduced['macs'])} fewer nonzero MACs"
    text += "; not timed" if best["speedup"] is None else f"; measured speedup {format_times(best['speedup'])}"
    measured = [row for row in rows if row["drop"] is not None]
    lowest = min(measured, key=lambda row: row["drop"], default=None)
    if lowest is not None and best["drop"] is not None and lowest["drop"] < best["drop"]:
        text += (f" (its smallest drop: {format_drop(lowest)}, {_method(lowest)} at "
                 f"{format_sparsity(lowest['sparsity_target'])})")
    return text + "."


#: (caption, measure: higher is better, how the winner's value is written)
LEADS = (
    ("fewest nonzero parameters", lambda row: reductions(row)["params"],
     lambda row: f"{format_times(reductions(row)['params'])} fewer"),
    ("smallest dense tensors", lambda row: reductions(row)["storage"],
     lambda row: f"{format_times(reductions(row)['storage'])} smaller"),
    ("fastest", lambda row: row["speedup"], lambda row: f"measured speedup {format_times(row['speedup'])}"),
    ("most accurate", lambda row: None if row["drop"] is None else -row["drop"],
     lambda row: f"{format_drop(row)} drop"),
)


def _leaders(representatives: dict[str, dict]) -> str:
    """Which family is smallest, fastest and most accurate, among the families' representatives;
    a claim is left out where fewer than two families were measured or all measured the same."""
    claims = []
    for caption, measure, describe in LEADS:
        scored = [(measure(row), family) for family, row in representatives.items() if measure(row) is not None]
        if len({value for value, _ in scored}) > 1:
            family = max(scored, key=lambda pair: pair[0])[1]
            claims.append(f"{caption}: {SHORT_NAMES[family]} ({describe(representatives[family])})")
    return ("Of these, " + "; ".join(claims) + ".") if claims else ""


def comparison_words(rows: list[dict]) -> list[str]:
    """Paragraphs comparing the pruning families present in `rows` (`report_rows`): one per family
    and model, then which family leads in what; built only from the measured numbers; the cosine
    note first when accuracy is a cosine.

    >>> from prunekit.report_rows import report_rows
    >>> run = {"model": "m", "seed": 0, "sparsity_target": 0.5, "sparsity_achieved": 0.5, "accuracy_dense": 0.98}
    >>> rows = report_rows([{**run, "method": "magnitude", "granularity": "unstructured", "accuracy": 0.975},
    ...                     {**run, "method": "l1", "granularity": "neuron", "accuracy": 0.96}])
    >>> comparison_words(rows)[-1]
    'Of these, most accurate: unstructured weights (0.50 pt drop).'
    """
    paragraphs = [COSINE_NOTE] if any(row["cosine"] for row in rows) else []
    models = list(dict.fromkeys(row["model"] for row in rows))
    for model in models:
        families = {family: [row for row in rows if row["model"] == model and row["family"] == family]
                    for family in FAMILY_NAMES}
        families = {family: members for family, members in families.items() if members}
        if not families:
            continue
        sentences = [family_sentence(family, members) for family, members in families.items()]
        if len(families) > 1:
            sentences.append(_leaders({family: most_pruned_best(members) for family, members in families.items()}))
        prefix = f"{model}: " if len(models) > 1 else ""
        paragraphs += [prefix + sentence for sentence in sentences if sentence]
    return paragraphs
