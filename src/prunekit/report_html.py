"""A comparison's report: ``report.html`` (one self-contained page: plain HTML, inline CSS, the
plots embedded as base64 PNGs; it loads nothing from a network and runs no script) and
``report.md`` (the same, the plots as PNG files beside it), written next to ``results.json``.

The page holds the comparison in words (`prunekit.report_words`), the table of runs (mean over
seeds, `prunekit.report_rows`) with the Pareto frontiers (`prunekit.report_pareto`) marked, and
the plots (`prunekit.report_plots`).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from prunekit.io import atomic_write_bytes, atomic_write_text
from prunekit.report_markdown import COLUMN_NOTES, markdown_page, setting_text
from prunekit.report_pareto import COSTS, frontier_flags
from prunekit.report_plots import PLOT_NAMES, Plot, render_plots
from prunekit.report_rows import TABLE_HEADER, choose_row, report_rows, table_cells
from prunekit.report_words import comparison_words

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; } td.text { text-align: left; }
tr.frontier td { background: #eef6ee; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-weight: bold; margin-bottom: 0.3em; }
p.note { font-size: 0.85em; color: #555; max-width: 60em; }
div.wide { overflow-x: auto; }
"""
_TEXT_COLUMNS = {"model", "method", "Pareto"}


def _html_table(header: Sequence[str], cells: list[list[str]], row_classes: Sequence[str] = ()) -> str:
    """A table; cells of the columns in `_TEXT_COLUMNS` (and of two-column tables) align left."""
    left = [name in _TEXT_COLUMNS or len(header) == 2 for name in header]
    lines = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(name)}</th>" for name in header) + "</tr></thead>",
             "<tbody>"]
    for index, row in enumerate(cells):
        css = f' class="{row_classes[index]}"' if index < len(row_classes) and row_classes[index] else ""
        lines.append(f"<tr{css}>" + "".join(
            f'<td class="text">{html.escape(cell)}</td>' if left[column] else f"<td>{html.escape(cell)}</td>"
            for column, cell in enumerate(row)) + "</tr>")
    return "\n".join(lines + ["</tbody>", "</table>"])


def html_page(title: str, words: list[str], cells: list[list[str]], plots: list[Plot], config: dict | None,
              frontier_rows: Sequence[bool] = ()) -> str:
    """The report as one HTML page; `frontier_rows` marks the table rows on a Pareto frontier.

    >>> page = html_page("prunekit report: m", ["Words & numbers."], [], [Plot("p.png", "A plot", b"png")], None)
    >>> "Words &amp; numbers." in page, '<img src="data:image/png;base64,cG5n"' in page
    (True, True)
    """
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
             f"<h1>{html.escape(title)}</h1>", '<h2 id="comparison">Comparison</h2>']
    parts += [f"<p>{html.escape(paragraph)}</p>" for paragraph in words] or ["<p>No measured runs.</p>"]
    parts += ['<h2 id="runs">Runs</h2>', '<div class="wide">',
              _html_table(TABLE_HEADER, cells, ["frontier" if flag else "" for flag in frontier_rows]), "</div>",
              f'<p class="note">{html.escape(COLUMN_NOTES)} Rows on a frontier are shaded.</p>']
    if plots:
        parts.append('<h2 id="plots">Plots</h2>')
    for plot in plots:
        encoded = base64.b64encode(plot.png).decode("ascii")
        parts += [f'<figure id="{html.escape(plot.name.removesuffix(".png"))}">',
                  f"<figcaption>{html.escape(plot.title)}</figcaption>",
                  f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(plot.title)}">', "</figure>"]
    if config:
        parts += ['<h2 id="settings">Settings</h2>',
                  _html_table(("setting", "value"), [[key, setting_text(value)] for key, value in config.items()])]
    return "\n".join(parts + ["</body>", "</html>", ""])


def write_report(out_dir: str | Path, runs: Iterable[dict], config: dict | None = None,
                 chosen: str | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/report.md`` (and the plots as ``report_*.png``)
    for comparison `runs` (the dicts of ``results.json``); `config` is listed as the settings;
    `chosen` names the run whose per-layer sparsity is drawn (``"unstructured:magnitude@0.9"``;
    default: the most accurate at the highest target sparsity). Returns both paths.

    >>> import tempfile
    >>> runs = [{"model": "m", "method": "l1", "granularity": "neuron", "seed": 0, "accuracy": 0.9,
    ...     "accuracy_dense": 0.95, "sparsity_target": 0.5, "sparsity_achieved": 0.5, "layer_sparsity": {"fc1": 0.5}}]
    >>> [path.name for path in write_report(tempfile.mkdtemp(), runs, {"seeds": [0]})]
    ['report.html', 'report.md']
    """
    out_dir = Path(out_dir)
    rows = report_rows(runs)
    chosen_row = choose_row(rows, chosen)  # a wrong name is refused before anything is written
    plots = render_plots(rows, chosen_row)
    frontiers = {cost: frontier_flags(rows, cost) for cost in COSTS}
    cells = table_cells(rows, frontiers)
    words = comparison_words(rows)
    models = ", ".join(dict.fromkeys(str(row["model"]) for row in rows))
    title = f"prunekit report: {models}" if models else "prunekit report"
    for plot in plots:
        atomic_write_bytes(out_dir / plot.name, plot.png)
    for stale in set(PLOT_NAMES) - {plot.name for plot in plots}:  # a plot an earlier report drew
        (out_dir / stale).unlink(missing_ok=True)
    md_path = atomic_write_text(out_dir / "report.md", markdown_page(title, words, cells, plots, config))
    on_frontier = [any(flags[index] for flags in frontiers.values()) for index in range(len(rows))]
    html_path = atomic_write_text(out_dir / "report.html", html_page(title, words, cells, plots, config, on_frontier))
    return html_path, md_path


def report_from_results(results_path: str | Path, chosen: str | None = None) -> tuple[Path, Path]:
    """`write_report` for a ``results.json`` written by ``prunekit compare`` or ``prunekit demo``,
    into the folder that holds it.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "results.json"
    >>> _ = path.write_text(json.dumps({"config": {"model": "m"}, "runs": []}))
    >>> [written.name for written in report_from_results(path)]
    ['report.html', 'report.md']
    """
    payload = json.loads(Path(results_path).read_text())
    return write_report(Path(results_path).parent, payload["runs"], payload.get("config"), chosen)
