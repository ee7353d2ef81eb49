"""Benchmark: sparsity penalties (issue 10, first methods) against one-shot pruning on
LeNet-300-100 / MNIST-5k, same 10-epoch fine-tuning budget, 3 seeds, through `prunekit compare`.

l1-penalty trains with strength * sum|w| for the first half of the budget, prunes by magnitude,
then recovers without the penalty; neuron:group-lasso does the same with the L2 norm of each
neuron's weights and removes neurons by l2. Compared with one-shot magnitude (weights) and
one-shot neuron:l1 (neurons) at the command line's defaults; on ResNet-20, 50% of channels by
channel:l1 (one-shot) against bn-slimming and group-lasso.

Run:  .venv/bin/python benchmarks/penalties_mnist.py     (about 12 minutes on 2 cores; --only NAME runs one
      row group, --report-only re-renders from the results already written)
Writes benchmarks/results/penalties_mnist.md and the runs under benchmarks/results/penalties_mnist/.
"""

from __future__ import annotations

import statistics

from _common import (RESULTS, add_only, add_report_only, command_item, method_target_groups, parser_for,
                     percent_mean_sd, read_runs, read_timing, run_timed, runs_now, table_head, write_page)

OUT = RESULTS / "penalties_mnist"
BASE = ["compare", "--dataset", "mnist5k", "--seeds", "0,1,2", "--no-progress"]
LENET = ["--model", "lenet300", "--finetune-epochs", "10"]
ROWS = [
    ("weights", [*LENET, "--methods", "magnitude,l1-penalty", "--scope", "global", "--sparsity", "0.9,0.95,0.98"]),
    ("neurons", [*LENET, "--methods", "neuron:l1,neuron:group-lasso", "--scope", "layer", "--sparsity", "0.8,0.9"]),
    # resnet20 trains at ~12 s per epoch here: 4 fine-tune epochs (penalty for 2), exact channel counts for all
    ("channels", ["--model", "resnet20", "--finetune-epochs", "4", "--methods",
                  "channel:l1,channel:bn-slimming,channel:group-lasso", "--scope", "layer", "--sparsity", "0.5",
                  "--round-to", "none"]),
]


def main() -> None:
    parser = parser_for(__doc__)
    add_only(parser, (name for name, _ in ROWS))
    add_report_only(parser)
    args = parser.parse_args()
    commands = []
    lines = table_head("method", "target", "acc. right after pruning %", "acc. after recovery % (± sd)", "drop pt",
                       "params")
    timing_path = OUT / "timing.json"
    timing = read_timing(timing_path)
    for name, extra in ROWS:
        command = [*BASE, *extra, "--out", str(OUT / name)]
        if runs_now(args, name):
            run_timed(name, command, timing, timing_path)
        commands.append(command_item(command, OUT, timing.get(name)))
        for (method,), target, members in method_target_groups(read_runs(OUT / name)):
            accuracy = [run["accuracy"] for run in members]
            dense = statistics.fmean(run["accuracy_dense"] for run in members)
            pruned = statistics.fmean(run["accuracy_pruned"] for run in members)
            lines.append(f"| {members[0]['granularity']}:{method} | {target:.0%} | {100 * pruned:.2f} | "
                         f"{percent_mean_sd(accuracy)} | "
                         f"{100 * (dense - statistics.fmean(accuracy)):.2f} | {members[0]['params']:,} |")
    text = "\n".join([
        "# Sparsity penalties on MNIST-5k (LeNet-300-100, ResNet-20)", "",
        "Command: `.venv/bin/python benchmarks/penalties_mnist.py`, which runs the commands below (their wall "
        "times on this machine in brackets). "
        "Each method gets the same fine-tune epochs after the cached baseline (10 on LeNet-300-100, 4 on "
        "ResNet-20); the penalty methods train with their penalty (strengths in "
        "`prunekit.regularizers.PENALTY_METHODS`) for the first half, prune, and recover for the second half "
        "without it. 'Right after pruning' is the accuracy at that moment, before recovery. Test accuracy, "
        "mean of 3 seeds; params of the deployed model (neurons removed).", "",
        *commands, "", *lines, "",
        "ResNet-20 reads 10.00% (chance on the balanced 1,000-image test split) right after half of its channels "
        "are masked, whichever method chose them: the BatchNorm running statistics no longer match, and the remaining training brings "
        "it back.", "",
    ])
    write_page(RESULTS / "penalties_mnist.md", text)


if __name__ == "__main__":
    main()
