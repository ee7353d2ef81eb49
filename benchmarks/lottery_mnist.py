"""Benchmark: lottery tickets on LeNet-300-100 / MNIST-5k (Frankle & Carbin 2019), 3 seeds.

One iterative-magnitude-pruning run per seed from the initialisation of that seed's cached
baseline: each round trains with the model's recipe, then 20% of the remaining weights go
(global magnitude, all layers) and the survivors are rewound to their initial values; 12 rounds
reach 93.1% sparsity (6.9% of the weights left). The ticket is evaluated after each round's
training. Controls (the random-reinitialisation experiment of the paper): the ticket's masks at
the round that first leaves <= 20% and at the last round, on freshly drawn weights, trained
for one round.

Targets (issue 9): the ticket at <= 20% weights left within 1 pt of dense; report its gap to the
control at 20% and at <= 7% left.

Run:  .venv/bin/python benchmarks/lottery_mnist.py [--epochs-per-round N]   (~15 min on 2 cores)
Writes benchmarks/results/lottery_mnist.{json,md}.
"""

from __future__ import annotations

import json
import statistics
import time

from prunekit.io import atomic_write_text
from prunekit.lottery import LotterySettings, run_lottery
from prunekit.report import check_table
from prunekit.training import get_baseline

from _common import RESULTS, add_seeds, parser_for, seed_tuple, table_head, write_page

FINAL = 1 - 0.8 ** 12  # 93.1%


def main() -> None:
    parser = parser_for(__doc__)
    add_seeds(parser)
    parser.add_argument("--epochs-per-round", type=int, default=None, help="default: the recipe's 40")
    args = parser.parse_args()
    started = time.perf_counter()
    per_seed = []
    for seed in seed_tuple(args.seeds):
        _, meta = get_baseline("lenet300", "mnist5k", seed, progress=False)
        outcome = run_lottery(LotterySettings("lenet300", "mnist5k", sparsity=FINAL, seed=seed, rounds=12,
                                              epochs_per_round=args.epochs_per_round, controls_at=(0.8, FINAL)))
        per_seed.append({"seed": seed, "dense": meta["accuracy"], "rounds": outcome.rounds,
                         "controls": outcome.controls, "epochs_spent": outcome.epochs_spent})
        print(json.dumps(per_seed[-1]), flush=True)
    atomic_write_text(RESULTS / "lottery_mnist.json", json.dumps(per_seed, indent=2))
    dense = statistics.fmean(entry["dense"] for entry in per_seed)
    lines = table_head("weights left", "ticket acc % (mean of seeds)", "drop vs dense pt")
    for index in range(len(per_seed[0]["rounds"])):
        sparsity = statistics.fmean(entry["rounds"][index]["sparsity"] for entry in per_seed)
        accuracy = statistics.fmean(entry["rounds"][index]["accuracy"] for entry in per_seed)
        lines.append(f"| {1 - sparsity:.1%} | {100 * accuracy:.2f} | {100 * (dense - accuracy):.2f} |")
    control_lines = table_head("weights left", "ticket %", "random reinit %", "ticket - reinit pt")
    gaps = []
    for index in range(2):
        left = 1 - statistics.fmean(entry["controls"][index]["sparsity"] for entry in per_seed)
        ticket = statistics.fmean(entry["controls"][index]["ticket"] for entry in per_seed)
        control = statistics.fmean(entry["controls"][index]["control"] for entry in per_seed)
        gaps.append((left, ticket, control))
        control_lines.append(f"| {left:.1%} | {100 * ticket:.2f} | {100 * control:.2f} | "
                             f"{100 * (ticket - control):+.2f} |")
    left20, ticket20, control20 = gaps[0]
    left7, ticket7, control7 = gaps[1]
    checks = [
        ("ticket at <= 20% left within 1 pt of dense", 100 * (dense - ticket20) <= 1,
         f"{left20:.1%} left: {100 * (dense - ticket20):.2f} pt"),
        (f"gap to random reinit at {left20:.1%} left", "REPORT", f"{100 * (ticket20 - control20):+.2f} pt"),
        (f"gap to random reinit at {left7:.1%} left", "REPORT", f"{100 * (ticket7 - control7):+.2f} pt"),
    ]
    epochs = per_seed[0]["epochs_spent"]
    text = "\n".join([
        "# Lottery tickets on LeNet-300-100 / MNIST-5k", "",
        f"Command: `.venv/bin/python benchmarks/lottery_mnist.py{' --epochs-per-round ' + str(args.epochs_per_round) if args.epochs_per_round else ''}` "
        f"(seeds {args.seeds}); {epochs} training epochs per seed for the ticket (13 rounds), plus one round per "
        f"control. Wall time {time.perf_counter() - started:.0f} s. Dense accuracy {100 * dense:.2f}% "
        "(the cached baselines, trained from the same initial weights with the same recipe). The same runs come "
        "from `prunekit compare --model lenet300 --dataset mnist5k --methods magnitude --sparsity 0.8 "
        "--schedule lottery` one target at a time.", "",
        "Ticket after each round's training (12 rounds of 20%):", "", *lines, "",
        "Ticket vs random reinitialisation (same masks, fresh weights, one round of training):", "",
        *control_lines, "", *check_table(checks), "",
    ])
    write_page(RESULTS / "lottery_mnist.md", text)


if __name__ == "__main__":
    main()
