"""The plots of a comparison report (`prunekit.report_html`), as PNG bytes.

Matplotlib's object-oriented API with the Agg canvas (no pyplot), so the caller's backend and
open figures stay as they are. Every accuracy is the mean over seeds with its spread (population
standard deviation) as error bars.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from prunekit.report_pareto import COSTS, frontier_flags
from prunekit.report_rows import format_sparsity


@dataclass(frozen=True)
class Plot:
    """One rendered plot: `name` is its file name next to the report, `title` its caption."""

    name: str
    title: str
    png: bytes


def _figure(width: float = 8.0, height: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _accuracy_axis(rows: list[dict]) -> tuple[float, str]:
    """(scale, label) of the accuracy axis: percent, or the mean cosine of embedding runs."""
    if any(row["cosine"] for row in rows):
        return 1.0, "mean cosine to the dense embeddings (held-out text)"
    return 100.0, "accuracy (%)"


def _series(rows: list[dict]) -> dict[str, str]:
    """Row -> series name (label, with the model when there are several) -> colour, in first-seen order."""
    many_models = len({row["model"] for row in rows}) > 1
    names = dict.fromkeys(_name(row, many_models) for row in rows)
    return {name: f"C{index % 10}" for index, name in enumerate(names)}


def _name(row: dict, many_models: bool) -> str:
    return f"{row['model']} {row['label']}" if many_models else row["label"]


def _dense_lines(axes, rows: list[dict], scale: float) -> None:
    """A dashed line at each dense accuracy, the y range widened to show it (axhline does not)."""
    dense_values = sorted({scale * row["accuracy_dense"] for row in rows if row["accuracy_dense"] is not None})
    for dense in dense_values:
        axes.axhline(dense, linestyle="--", color="black", linewidth=1,
                     label=f"dense ({dense:.4f})" if scale == 1.0 else f"dense ({dense:.2f})")
    if dense_values:
        low, high = axes.get_ylim()
        margin = 0.05 * (max(high, *dense_values) - min(low, *dense_values))
        axes.set_ylim(min(low, dense_values[0] - margin), max(high, dense_values[-1] + margin))


def accuracy_vs_sparsity(rows: list[dict]) -> bytes:
    """Accuracy against achieved sparsity, one line per method (error bars: spread over seeds)."""
    scale, ylabel = _accuracy_axis(rows)
    many_models = len({row["model"] for row in rows}) > 1
    figure = _figure()
    axes = figure.add_subplot()
    for name, color in _series(rows).items():
        members = sorted((row for row in rows
                          if _name(row, many_models) == name and row["sparsity_achieved"] is not None),
                         key=lambda row: row["sparsity_achieved"])
        if not members:
            continue
        axes.errorbar([100 * row["sparsity_achieved"] for row in members], [scale * row["accuracy"] for row in members],
                      yerr=[scale * row["accuracy_std"] for row in members], marker="o", capsize=3, color=color,
                      label=name)
    _dense_lines(axes, rows, scale)
    axes.set_xlabel("sparsity achieved (% of the targeted weights / units removed)")
    axes.set_ylabel(ylabel)
    axes.set_title("accuracy vs sparsity (mean ± spread over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def accuracy_vs_cost(rows: list[dict], cost: str) -> bytes | None:
    """Accuracy against the share of the dense model's `cost` (a `COSTS` name), the Pareto
    frontier ringed and joined, the dense model a star at 1.0; None when no row has that cost."""
    flags = frontier_flags(rows, cost)
    if all(flag is None for flag in flags):
        return None
    scale, ylabel = _accuracy_axis(rows)
    many_models = len({row["model"] for row in rows}) > 1
    colors = _series(rows)
    figure = _figure()
    axes = figure.add_subplot()
    for name, color in colors.items():
        members = [row for row, flag in zip(rows, flags) if flag is not None and _name(row, many_models) == name]
        if members:
            axes.errorbar([COSTS[cost](row) for row in members], [scale * row["accuracy"] for row in members],
                          yerr=[scale * row["accuracy_std"] for row in members], fmt="o", capsize=3, color=color,
                          label=name)
    for model in dict.fromkeys(row["model"] for row in rows):
        front = sorted((COSTS[cost](row), scale * row["accuracy"]) for row, flag in zip(rows, flags)
                       if flag and row["model"] == model)
        axes.plot([x for x, _ in front], [y for _, y in front], linestyle="-", drawstyle="steps-post", color="grey",
                  linewidth=1, zorder=1)
        axes.scatter([x for x, _ in front], [y for _, y in front], s=160, facecolors="none", edgecolors="black",
                     zorder=3, label="Pareto frontier" if model == rows[0]["model"] else None)
    dense = {row["accuracy_dense"] for row in rows if row["accuracy_dense"] is not None}
    axes.scatter([1.0] * len(dense), [scale * value for value in dense], marker="*", s=160, color="black",
                 label="dense model")
    axes.set_xlabel("nonzero MACs, share of the dense model's" if cost == "MACs"
                    else "measured latency / dense latency (paired timing)")
    axes.set_ylabel(ylabel)
    axes.set_title(f"accuracy vs {cost}: the Pareto frontier ringed")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def layer_sparsity_bars(row: dict) -> bytes:
    """Horizontal bars: the sparsity of each layer of one report row (mean over its seeds)."""
    names = list(row["layer_sparsity"])
    figure = _figure(8.0, max(3.0, 1.5 + 0.28 * len(names)))
    axes = figure.add_subplot()
    positions = range(len(names))
    axes.barh(positions, [100 * row["layer_sparsity"][name] for name in names], color="C0")
    axes.set_yticks(list(positions), names, fontsize="small")
    axes.invert_yaxis()  # the first layer on top
    axes.set_xlim(0, 100)
    axes.set_xlabel("sparsity of the layer (% of its weights or units removed)")
    axes.set_title(f"per-layer sparsity: {row['label']} at {format_sparsity(row['sparsity_target'])} "
                   f"(achieved {format_sparsity(row['sparsity_achieved'], 2)})")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def seed_spread(rows: list[dict]) -> bytes | None:
    """Every seed's accuracy as a dot beside the mean ± spread of each row; None with one seed each."""
    if all(row["seeds"] < 2 for row in rows):
        return None
    scale, xlabel = _accuracy_axis(rows)
    figure = _figure(8.0, max(3.0, 1.5 + 0.35 * len(rows)))
    axes = figure.add_subplot()
    for index, row in enumerate(rows):
        axes.scatter([scale * value for value in row["accuracies"]], [index] * row["seeds"], color="C0", s=14,
                     alpha=0.7, label="one seed" if index == 0 else None)
        axes.errorbar([scale * row["accuracy"]], [index], xerr=[scale * row["accuracy_std"]], fmt="s", color="black",
                      capsize=4, label="mean ± spread" if index == 0 else None)
    axes.set_yticks(range(len(rows)), [f"{row['label']} {format_sparsity(row['sparsity_target'])}" for row in rows],
                    fontsize="small")
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    axes.set_title("spread over seeds")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


#: every file name a report may write; the ones a report does not draw are removed from its folder
PLOT_NAMES = ("report_accuracy_sparsity.png", "report_accuracy_macs.png", "report_accuracy_latency.png",
              "report_layer_sparsity.png", "report_seeds.png")


def render_plots(rows: list[dict], chosen: dict | None) -> list[Plot]:
    """The report's plots for `rows` (`prunekit.report_rows.report_rows`); the per-layer bars
    show `chosen`. Plots without data (no MACs, nothing timed, one seed) are left out.

    >>> from prunekit.report_rows import report_rows
    >>> rows = report_rows([{"model": "m", "method": "l1", "granularity": "neuron", "seed": 0, "accuracy": 0.9,
    ...     "accuracy_dense": 0.95, "sparsity_target": 0.5, "sparsity_achieved": 0.5}])
    >>> [plot.name for plot in render_plots(rows, None)]
    ['report_accuracy_sparsity.png']
    """
    if not rows:
        return []
    drawn = [(PLOT_NAMES[0], "Accuracy vs sparsity, per method", accuracy_vs_sparsity(rows)),
             (PLOT_NAMES[1], "Accuracy vs nonzero MACs, Pareto frontier", accuracy_vs_cost(rows, "MACs")),
             (PLOT_NAMES[2], "Accuracy vs measured latency, Pareto frontier", accuracy_vs_cost(rows, "latency"))]
    if chosen is not None:
        drawn.append((PLOT_NAMES[3], f"Per-layer sparsity of {chosen['label']} at "
                      f"{format_sparsity(chosen['sparsity_target'])}", layer_sparsity_bars(chosen)))
    drawn.append((PLOT_NAMES[4], "Spread over seeds", seed_spread(rows)))
    return [Plot(name, title, png) for name, title, png in drawn if png is not None]
