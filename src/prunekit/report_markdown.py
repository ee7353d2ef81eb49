"""The markdown page of a comparison report (`prunekit.report_html.write_report` writes it beside
the HTML): the same words and table, the plots referenced as the PNG files next to it."""

from __future__ import annotations

import json
from collections.abc import Sequence

from prunekit.report_plots import Plot
from prunekit.report_rows import TABLE_HEADER

#: what the table's columns mean, under the table in both pages
COLUMN_NOTES = (
    "Mean over seeds; ± sd is the spread (population standard deviation) of the accuracy over seeds. "
    "params x: dense parameters / nonzero parameters; MACs x: dense MACs / nonzero MACs; latency ms: the "
    "pruned model's measured latency; speedup: dense / pruned latency, both timed in alternation in the same "
    "run (geometric mean over seeds; ~: its timing rounds still disagreed after extra rounds, a busy machine, so "
    "rough); Pareto: on the frontier of accuracy against nonzero MACs or measured "
    "latency (no other run at least as accurate and at most as costly, one of the two strictly)."
)


def setting_text(value) -> str:
    """A config value as one short line (JSON, cut at 100 characters).

    >>> setting_text(("magnitude", "l1")), setting_text(None), len(setting_text("x" * 500))
    ('["magnitude", "l1"]', 'null', 100)
    """
    text = json.dumps(value, default=str)
    return text if len(text) <= 100 else text[:99] + "…"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], cells: list[list[str]]) -> list[str]:
    """The lines of a markdown table.

    >>> markdown_table(("a", "b"), [["1", "x|y"]])
    ['| a | b |', '|---|---|', '| 1 | x\\\\|y |']
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in cells]


def markdown_page(title: str, words: list[str], cells: list[list[str]], plots: list[Plot],
                  config: dict | None) -> str:
    """The report as markdown; each plot is an image link to its PNG file in the same folder.

    >>> page = markdown_page("prunekit report: m", ["Words."], [], [Plot("p.png", "A plot", b"")], {"seeds": [0]})
    >>> "![A plot](p.png)" in page, "| seeds | [0] |" in page
    (True, True)
    """
    lines = [f"# {title}", ""]
    for paragraph in words:
        lines += [paragraph, ""]
    lines += ["## Runs", "", *markdown_table(TABLE_HEADER, cells), "", COLUMN_NOTES, ""]
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            lines += [f"### {plot.title}", "", f"![{plot.title}]({plot.name})", ""]
    if config:
        lines += ["## Settings", "", *markdown_table(("setting", "value"),
                                                     [[key, setting_text(value)] for key, value in config.items()]), ""]
    return "\n".join(lines)
