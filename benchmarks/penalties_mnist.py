"""Benchmark: sparsity penalties (issue 10, first methods) against one-shot pruning on
LeNet-300-100 / MNIST-5k, same 10-epoch fine-tuning budget, 3 seeds, through `prunekit compare`.

l1-penalty trains with strength * sum|w| for the first half of the budget, prunes by magnitude,
then recovers without the penalty; neuron:group-lasso does the same with the L2 norm of each
neuron's weights and removes neurons by l2. Compared with one-shot magnitude (weights) and
one-shot neuron:l1 (neurons) at the command line's defaults.

Run:  .venv/bin/python benchmarks/penalties_mnist.py     (about 3 minutes on 2 cores)
Writes benchmarks/results/penalties_mnist.md and the runs under benchmarks/results/penalties_mnist/.
"""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "penalties_mnist"
BASE = ["compare", "--model", "lenet300", "--dataset", "mnist5k", "--seeds", "0,1,2", "--finetune-epochs", "10",
        "--no-progress"]
ROWS = [
    ("weights", ["--methods", "magnitude,l1-penalty", "--scope", "global", "--sparsity", "0.9,0.95,0.98"]),
    ("neurons", ["--methods", "neuron:l1,neuron:group-lasso", "--scope", "layer", "--sparsity", "0.8,0.9"]),
]


def main() -> None:
    from prunekit.io import atomic_write_text

    started = time.perf_counter()
    commands, lines = [], ["| method | target | acc. right after pruning % | acc. after recovery % (± sd) "
                           "| drop pt | params |", "|---|---|---|---|---|---|"]
    for name, extra in ROWS:
        command = [*BASE, *extra, "--out", str(OUT / name)]
        if "--report-only" not in sys.argv:
            subprocess.run([str(Path(sys.executable).parent / "prunekit"), *command], check=True)
        commands.append("- `prunekit " + shlex.join(command).replace(str(OUT), "runs") + "`")
        runs = json.loads((OUT / name / "results.json").read_text())["runs"]
        for method in dict.fromkeys(run["method"] for run in runs):
            for target in sorted({run["sparsity_target"] for run in runs}):
                members = [run for run in runs if run["method"] == method and run["sparsity_target"] == target]
                accuracy = [run["accuracy"] for run in members]
                dense = statistics.fmean(run["accuracy_dense"] for run in members)
                pruned = statistics.fmean(run["accuracy_pruned"] for run in members)
                lines.append(f"| {members[0]['granularity']}:{method} | {target:.0%} | {100 * pruned:.2f} | "
                             f"{100 * statistics.fmean(accuracy):.2f} (± {100 * statistics.pstdev(accuracy):.2f}) | "
                             f"{100 * (dense - statistics.fmean(accuracy)):.2f} | {members[0]['params']:,} |")
    text = "\n".join([
        "# Sparsity penalties on LeNet-300-100 / MNIST-5k", "",
        f"Wall time {time.perf_counter() - started:.0f} s (`.venv/bin/python benchmarks/penalties_mnist.py`). "
        "Each method gets the same 10 fine-tune epochs after the cached baseline; the penalty methods train with "
        "their penalty (strengths in `prunekit.regularizers.PENALTY_METHODS`) for the first 5, prune, and recover "
        "for 5 without it. 'Right after pruning' is the accuracy at that moment, before recovery. Test accuracy, "
        "mean of 3 seeds; params of the deployed model (neurons removed).", "",
        *commands, "", *lines, "",
    ])
    atomic_write_text(RESULTS / "penalties_mnist.md", text)
    print(text)


if __name__ == "__main__":
    main()
