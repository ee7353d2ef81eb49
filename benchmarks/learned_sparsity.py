"""Issue 10's summary table: every learned-sparsity method beside one-shot magnitude and the best
schedule of issue 9 (one-shot + distillation), on LeNet-300-100 / MNIST-5k at 90% and 95% weight
sparsity, and on ResNet-20 at 50% of channels, from the runs the method benchmarks committed.

Every row there is the same setting: the seed's cached baseline (seeds 0, 1, 2), the same
fine-tuning epochs after it (10 on LeNet-300-100, 4 on ResNet-20), test accuracy on the 1,000-image
test split. The mask predictor is scored on seeds 1 and 2 only (it was fitted on seed 0's oracle)
and its own benchmark fine-tunes its masks and magnitude's with the same recipe.

Run:  .venv/bin/python benchmarks/learned_sparsity.py    (seconds: it reads results, trains nothing)
Re-create the inputs with benchmarks/schedules_mnist.py, penalties_mnist.py, l0_mnist.py,
movement_mnist.py, at_init_mnist.py and predictor_mnist.py.
Writes benchmarks/results/learned_sparsity.md.
"""

from __future__ import annotations

import json
import statistics

from _common import RESULTS, read_runs, table_head, write_page

#: (row label, results.json under benchmarks/results, method as recorded, what the row is)
WEIGHT_ROWS = [
    ("magnitude, one-shot (default)", "schedules_mnist/oneshot", "magnitude", "issue 9 default"),
    ("magnitude, one-shot + distillation", "schedules_mnist/oneshot+distill", "magnitude", "issue 9's best schedule"),
    ("l1-penalty", "penalties_mnist/weights", "l1-penalty", "penalty, then magnitude"),
    ("l0 (weight gates)", "l0_mnist/weights", "l0", "gates, then the lowest go"),
    ("movement (hard)", "movement_mnist/main", "movement", "cubic schedule in the budget"),
    ("soft-movement", "movement_mnist/main", "soft-movement", "stops near 54%: see its page"),
    ("snip (at initialisation)", "at_init_mnist", "snip", "untrained model, then full training"),
    ("synflow (at initialisation)", "at_init_mnist", "synflow", "untrained model, then full training"),
]
CHANNEL_ROWS = [
    ("channel:l1, one-shot", "penalties_mnist/channels", "l1"),
    ("channel:bn-slimming", "penalties_mnist/channels", "bn-slimming"),
    ("channel:group-lasso", "penalties_mnist/channels", "group-lasso"),
    ("channel:l1, one-shot (L0 run)", "l0_mnist/channels", "l1"),
    ("channel:l0", "l0_mnist/channels", "l0"),
]


def _runs(folder: str) -> list[dict]:
    """The committed runs under `folder`; none when that benchmark has not been run."""
    return read_runs(RESULTS / folder) if (RESULTS / folder / "results.json").is_file() else []


def _cell(runs: list[dict], method: str, target: float) -> str:
    members = [run for run in runs if run["method"] == method and run["sparsity_target"] == target]
    if not members:
        return "not run"
    drop = statistics.fmean(run["accuracy_dense"] - run["accuracy"] for run in members)
    reached = statistics.fmean(run["sparsity_achieved"] for run in members)
    note = f" (at {reached:.0%})" if abs(reached - target) > 0.005 else ""
    return f"{100 * statistics.fmean(run['accuracy'] for run in members):.2f} / {100 * drop:+.2f}{note}"


def _predictor_cells() -> tuple[str, str, str, str]:
    path = RESULTS / "predictor_mnist.json"
    if not path.is_file():
        return ("not run",) * 4
    runs = [run for run in json.loads(path.read_text())["accuracy"] if run["seed"] != 0]
    cells = []
    for method in ("predictor", "magnitude"):
        for target in (0.9, 0.95):
            accuracy = [run["accuracy"] for run in runs if run["method"] == method and run["sparsity"] == target]
            cells.append(f"{100 * statistics.fmean(accuracy):.2f}" if accuracy else "not run")
    return tuple(cells)


def main() -> None:
    lines = table_head("method", "90%: accuracy % / drop pt", "95%: accuracy % / drop pt", "what it is", "runs")
    for label, folder, method, what in WEIGHT_ROWS:
        runs = _runs(folder)
        lines.append(f"| {label} | {_cell(runs, method, 0.9)} | {_cell(runs, method, 0.95)} | {what} | "
                     f"`benchmarks/results/{folder}` |")
    predictor_90, predictor_95, magnitude_90, magnitude_95 = _predictor_cells()
    lines.append(f"| predictor (seeds 1, 2; magnitude in the same runs: {magnitude_90} / {magnitude_95}) | "
                 f"{predictor_90} | {predictor_95} | one-shot masks from the learned predictor | "
                 "`benchmarks/results/predictor_mnist.json` |")
    channel_lines = table_head("method", "accuracy % / drop pt at 50% of channels", "params", "MACs",
                               "latency vs dense", "runs")
    for label, folder, method in CHANNEL_ROWS:
        runs = [run for run in _runs(folder) if run["method"] == method]
        sizes = "| | |"
        if runs:
            dense = runs[0]
            sizes = (f"{statistics.fmean(run['params'] for run in runs):,.0f} of {dense['params_dense']:,} | "
                     f"{statistics.fmean(run['macs'] for run in runs):,.0f} of {dense['macs_dense']:,} | "
                     f"{statistics.fmean(run['latency_ms'] / run['latency_dense_ms'] for run in runs):.2f}x |")
        channel_lines.append(f"| {label} | {_cell(runs, method, 0.5)} | {sizes} `benchmarks/results/{folder}` |")
    text = "\n".join([
        "# Learned sparsity against one-shot magnitude (issue 10 summary)", "",
        "Command: `.venv/bin/python benchmarks/learned_sparsity.py` (reads the committed runs; the benchmark "
        "behind each row is named in its last column). Same baselines (seeds 0, 1, 2), same fine-tuning "
        "budget after them (10 epochs on LeNet-300-100), test accuracy, means of 3 seeds; drop = dense minus "
        "pruned, in points (negative: better than dense). A sparsity in brackets is what the method reached "
        "when it differs from the target.", "",
        "## LeNet-300-100, weight sparsity", "", *lines, "",
        "## ResNet-20, 50% of channels (4 fine-tune epochs)", "", *channel_lines, "",
    ])
    write_page(RESULTS / "learned_sparsity.md", text)


if __name__ == "__main__":
    main()
