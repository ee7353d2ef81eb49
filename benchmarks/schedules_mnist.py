"""Benchmark: schedules and recovery on LeNet-300-100 / MNIST-5k, through the `prunekit` command.

Every row is one `prunekit compare` command a user can type (printed in the results page), with the
command line's defaults except what the row names. Budget: 10 fine-tune epochs after the dense
baseline for every schedule (gradual schedules prune inside those epochs), 3 seeds.

Targets (issue 9):
  - the best schedule, with or without distillation, within 10 epochs: 95% sparsity with a drop <= 0.5 pt;
  - the highest sparsity within 1 pt of dense (aim 98%), found by `--schedule iterative --tolerance 1`;
  - a table of every schedule at 90% and 95%: accuracy right after pruning, after recovery, epochs.
Lottery tickets are benchmarked in benchmarks/lottery_mnist.py (they retrain from the initialisation).

Run:  .venv/bin/python benchmarks/schedules_mnist.py     (about 6 minutes on 2 quiet cores;
      --report-only re-renders the page from the results already written)
Writes benchmarks/results/schedules_mnist.md and the runs under benchmarks/results/schedules_mnist/.
"""

from __future__ import annotations

import json
import statistics
import time

from _common import (RESULTS, add_report_only, command_item, parser_for, read_runs, read_timing, run_prunekit,
                     table_head, write_page)

OUT = RESULTS / "schedules_mnist"
BASE = ["compare", "--model", "lenet300", "--dataset", "mnist5k", "--seeds", "0,1,2", "--no-progress"]
WEIGHTS = ["--methods", "magnitude", "--scope", "global"]
TEN = ["--finetune-epochs", "10"]

ROWS = [  # name, the arguments after BASE
    ("oneshot", [*WEIGHTS, "--sparsity", "0.9,0.95", *TEN]),  # the command, defaults otherwise
    ("oneshot+distill", [*WEIGHTS, "--sparsity", "0.9,0.95", *TEN, "--distill"]),
    ("iterative", [*WEIGHTS, "--sparsity", "0.9,0.95", *TEN, "--schedule", "iterative"]),
    ("agp", [*WEIGHTS, "--sparsity", "0.9,0.95", *TEN, "--schedule", "agp"]),
    ("agp+distill", [*WEIGHTS, "--sparsity", "0.9,0.95", *TEN, "--schedule", "agp", "--distill"]),
    ("gradient", ["--methods", "gradient", "--scope", "global", "--sparsity", "0.9,0.95", *TEN,
                  "--schedule", "gradient"]),
    ("oneshot-high", [*WEIGHTS, "--sparsity", "0.97,0.98", *TEN]),
    # where distillation may help: a short budget, and removing whole neurons
    ("oneshot-2-epochs", [*WEIGHTS, "--sparsity", "0.95", "--finetune-epochs", "2"]),
    ("oneshot-2-epochs+distill", [*WEIGHTS, "--sparsity", "0.95", "--finetune-epochs", "2", "--distill"]),
    ("neuron-l1", ["--methods", "neuron:l1", "--scope", "layer", "--sparsity", "0.8", *TEN]),
    ("neuron-l1+distill", ["--methods", "neuron:l1", "--scope", "layer", "--sparsity", "0.8", *TEN, "--distill"]),
    ("search", [*WEIGHTS, "--sparsity", "0.9", *TEN, "--schedule", "iterative", "--tolerance", "1"]),
]


def _rows(name: str, runs: list[dict]) -> list[dict]:
    rows = []
    for target in sorted({run["sparsity_target"] for run in runs}):
        members = [run for run in runs if run["sparsity_target"] == target]
        dense = statistics.fmean(run["accuracy_dense"] for run in members)
        after = [run["accuracy"] for run in members]
        pruned = [run["accuracy_pruned"] for run in members if run.get("accuracy_pruned") is not None]
        rows.append({
            "row": name, "target": target, "seeds": len(members),
            "achieved": statistics.fmean(run["sparsity_achieved"] for run in members),
            "pruned": statistics.fmean(pruned) if pruned else None,
            "after": statistics.fmean(after), "sd": statistics.pstdev(after), "dense": dense,
            "drop": 100 * (dense - statistics.fmean(after)),
            "epochs": statistics.fmean(run["epochs_spent"] for run in members),
        })
    return rows


def _table(rows: list[dict]) -> str:
    lines = table_head("schedule", "target", "achieved", "acc. right after pruning %", "acc. after recovery % (± sd)",
                       "dense %", "drop pt", "fine-tune epochs")
    for row in rows:
        pruned = f"{100 * row['pruned']:.2f}" if row["pruned"] is not None else "n/a"
        target = f"{row['target']:.0%}" if round(100 * row["target"], 6).is_integer() else f"{row['target']:.1%}"
        lines.append(f"| {row['row']} | {target} | {row['achieved']:.2%} | {pruned} | "
                     f"{100 * row['after']:.2f} (± {100 * row['sd']:.2f}) | {100 * row['dense']:.2f} | "
                     f"{row['drop']:.2f} | {row['epochs']:g} |")
    return "\n".join(lines)


def _theta_sweep(seeds=(0, 1, 2), epochs: int = 10) -> str:
    """How GradientThreshold's theta maps to sparsity: theta set at quantiles of the mean |grad| the
    dense model shows over its first fine-tuning window, then the schedule run in the same 10-epoch
    budget (pruning every 1/20 of the first quarter, as `--schedule gradient` does)."""
    from prunekit import GradientThreshold, Pruner
    from prunekit.callbacks import PrunerCallback
    from prunekit.data import load_dataset, make_loader
    from prunekit.loop_state import GradientSums
    from prunekit.recovery import finetune_lr, schedule_for
    from prunekit.training import default_train_config, evaluate, get_baseline, train
    import torch

    splits, recipe = load_dataset("mnist5k"), default_train_config("lenet300")
    test_loader = make_loader(splits.test, 256, shuffle=False)
    lines = table_head("quantile", "theta (mean abs. gradient)", "sparsity reached", "accuracy %", "drop pt")
    for quantile in (0.3, 0.5, 0.7, 0.8):
        reached, drops, thetas, accuracies = [], [], [], []
        for seed in seeds:
            model, meta = get_baseline("lenet300", "mnist5k", seed, progress=False)
            loader = make_loader(splits.train, recipe.batch_size, shuffle=True, seed=seed,
                                 augment_shift=recipe.augment_shift)
            window = schedule_for("gradient", epochs * len(loader)).frequency
            probe = GradientSums(model, [n for n, p in model.named_parameters() if n.endswith("weight")])
            for index, (inputs, targets) in zip(range(window), loader):
                torch.nn.functional.cross_entropy(model(inputs), targets).backward()
            model.zero_grad(set_to_none=True)
            every = torch.cat([value.flatten() for value in probe.mean().values()])
            probe.close()
            theta = float(torch.quantile(every, quantile))
            gradual = schedule_for("gradient", epochs * len(loader))
            schedule = GradientThreshold(theta, gradual.begin_step + window, gradual.end_step, gradual.frequency)
            pruner = Pruner(model, "gradient", scope="global", schedule=schedule)
            train(model, loader, epochs, lr=finetune_lr("lenet300", recipe.lr), lr_schedule=recipe.lr_schedule,
                  seed=seed, progress=False, callbacks=[PrunerCallback(pruner)])
            reached.append(pruner.sparsity.achieved)
            pruner.finalize()
            accuracy = evaluate(model, test_loader)
            accuracies.append(accuracy)
            drops.append(100 * (meta["accuracy"] - accuracy))
            thetas.append(theta)
        lines.append(f"| {quantile:.0%} | {statistics.fmean(thetas):.2e} | {statistics.fmean(reached):.2%} | "
                     f"{100 * statistics.fmean(accuracies):.2f} | {statistics.fmean(drops):.2f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    from prunekit.io import atomic_write_text  # the benchmark only reads prunekit's output otherwise
    from prunekit.report import check_table

    parser = parser_for(__doc__)
    add_report_only(parser)
    report_only = parser.parse_args().report_only  # re-render from the results.json files already written
    timing = OUT / "timing.json"
    seconds_by_row = read_timing(timing) if report_only else {}
    started = time.perf_counter()
    commands, rows = [], []
    for name, extra in ROWS:
        command = [*BASE, *extra, "--out", str(OUT / name)]
        if not report_only:
            seconds_by_row[name] = float(round(run_prunekit(command)))  # whole seconds, as the page shows them
        commands.append(command_item(command, OUT, seconds_by_row[name]))
        rows += _rows(name, read_runs(OUT / name))
        print(_table(rows), flush=True)
    theta_table = _theta_sweep()
    if report_only:
        wall = seconds_by_row["wall"]
    else:
        wall = time.perf_counter() - started
        atomic_write_text(timing, json.dumps({**seconds_by_row, "wall": wall}, indent=2))
    budget10 = [row for row in rows if row["epochs"] == 10 and not row["row"].startswith("neuron")]
    best95 = min((row for row in budget10 if row["target"] == 0.95), key=lambda row: row["drop"])
    within = [row for row in rows if row["drop"] <= 1.0 and not row["row"].startswith("neuron")]
    highest = max(within, key=lambda row: row["achieved"]) if within else None
    checks = [
        ("best schedule at 95% within 10 epochs: drop <= 0.5 pt", best95["drop"] <= 0.5,
         f"{best95['row']}: {best95['drop']:.2f} pt"),
        ("highest sparsity within 1 pt of dense (aim 98%)",
         "PASS" if highest and highest["achieved"] >= 0.98 else "REPORT",
         highest["row"] + ": " + format(highest["achieved"], ".2%") if highest else "none"),
    ]
    text = "\n".join([
        "# Schedules and recovery on LeNet-300-100 / MNIST-5k", "",
        f"Command: `.venv/bin/python benchmarks/schedules_mnist.py`. Wall time {wall:.0f} s. "
        "Each row below is one `prunekit compare` command with the command line's defaults otherwise "
        "(global magnitude; fine-tuning with the model's recipe at the default learning rate; gradual schedules "
        "prune during the first quarter of the 10 epochs). Accuracy on the 1,000-image test split, mean of 3 seeds. "
        "'Right after pruning' is measured after the pruning step that reached the target, before the training "
        "that follows it (for one-shot: before any fine-tuning). The search row raises sparsity from 90%, each "
        "level removing 30% of what is left and fine-tuned 10 epochs, while the validation drop stays within "
        "1 point; its epochs are the total over levels, and seeds that stop at different levels get a row each. "
        "The neuron rows remove 80% of each hidden layer's neurons (layer scope; target and achieved count "
        "neurons) and show where distillation from the dense model helps or not.", "",
        *commands, "", _table(rows), "", *check_table(checks), "",
        "## GradientThreshold: how theta maps to sparsity", "",
        "theta is set per seed at a quantile of the mean absolute gradient of every weight over the first pruning window "
        "(dense model, training data); the schedule then prunes, every 1/20 of the first quarter of the 10-epoch "
        "budget, the weights whose mean absolute gradient since the previous pruning stayed below theta. Pruned weights get "
        "no gradient, so the sparsity only grows; it overshoots the quantile because gradients shrink as "
        "training converges. Python API (`prunekit.GradientThreshold`), 3 seeds.", "",
        theta_table, "",
    ])
    write_page(RESULTS / "schedules_mnist.md", text)


if __name__ == "__main__":
    main()
