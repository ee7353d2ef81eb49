"""Benchmark: unstructured (weight) pruning on MNIST-5k, the core issue's targets.

Targets (3 seeds, mean):
  - LeNet-300-100, global magnitude + fine-tuning: drop <= 0.5 pt at 90%, <= 1.0 pt at 95%;
    random at 90% at least 5 pt worse than magnitude.
  - LeNet-5: drop <= 0.5 pt at 90%.
  - achieved sparsity equals the target to within one weight (global scope).

Run:  .venv/bin/python benchmarks/unstructured_mnist.py   (about 5 minutes on 2 cores)
Writes benchmarks/results/unstructured_mnist.json and .md (the committed results).
"""

from __future__ import annotations

import time

from prunekit.harness import CompareConfig, run_compare, write_results
from prunekit.report import aggregate, benchmark_markdown, format_table

from _common import RESULTS, add_finetune, add_seeds, parser_for, seed_tuple, write_page


def _row(rows, model, method, sparsity):
    return next(r for r in rows if r["model"] == model and r["method"] == method and r["sparsity_target"] == sparsity)


def _checks(runs: list[dict]) -> list[tuple[str, bool, str]]:
    rows = aggregate(runs)
    m90, m95 = _row(rows, "lenet300", "magnitude", 0.9), _row(rows, "lenet300", "magnitude", 0.95)
    r90 = _row(rows, "lenet300", "random", 0.9)
    l90 = _row(rows, "lenet5", "magnitude", 0.9)
    worst_count_error = max(
        abs(run["sparsity_achieved"] - run["sparsity_target"]) * run["units_targeted"] for run in runs
    )
    return [
        ("lenet300 magnitude 90%: drop <= 0.5 pt", m90["drop_pt"] <= 0.5, f"{m90['drop_pt']:.2f} pt"),
        ("lenet300 magnitude 95%: drop <= 1.0 pt", m95["drop_pt"] <= 1.0, f"{m95['drop_pt']:.2f} pt"),
        ("lenet300 magnitude 95%: drop <= 0.5 pt (stretch)", m95["drop_pt"] <= 0.5, f"{m95['drop_pt']:.2f} pt"),
        ("lenet300 random 90% >= 5 pt worse than magnitude",
         100 * (m90["accuracy"] - r90["accuracy"]) >= 5, f"{100 * (m90['accuracy'] - r90['accuracy']):.2f} pt"),
        ("lenet5 magnitude 90%: drop <= 0.5 pt", l90["drop_pt"] <= 0.5, f"{l90['drop_pt']:.2f} pt"),
        ("achieved sparsity within one weight of target", worst_count_error <= 1.0,
         f"max {worst_count_error:.2f} weights off"),
    ]


def main() -> None:
    parser = parser_for(__doc__)
    add_seeds(parser)
    add_finetune(parser, epochs=20)
    args = parser.parse_args()
    seeds = seed_tuple(args.seeds)
    started = time.perf_counter()
    configs = [
        CompareConfig("lenet300", "mnist5k", ("magnitude@0.9", "magnitude@0.95", "random@0.9"), (),
                      scope="global", seeds=seeds, finetune_epochs=args.finetune_epochs,
                      finetune_lr=args.finetune_lr, progress=False),
        CompareConfig("lenet5", "mnist5k", ("magnitude@0.9",), (),
                      scope="global", seeds=seeds, finetune_epochs=args.finetune_epochs,
                      finetune_lr=args.finetune_lr, progress=False),
    ]
    runs = []
    for config in configs:
        runs += run_compare(config, on_run=lambda r: print(
            f"{r['model']} {r['method']} {r['sparsity_target']} s{r['seed']}: {100 * r['accuracy']:.2f}%", flush=True))
    write_results(RESULTS / "unstructured_mnist", configs[0], runs)
    intro = [
        f"Command: `.venv/bin/python benchmarks/unstructured_mnist.py` (seeds {args.seeds}, "
        f"{args.finetune_epochs} fine-tune epochs at lr {args.finetune_lr:g} (cosine), global scope, all layers incl. classifier pruned). "
        f"Wall time {time.perf_counter() - started:.0f} s on this machine.",
        "Accuracy on the 1,000-image test split, mean over seeds; latency of the baked model at batch 64 "
        "(unstructured zeros do not speed up dense kernels; that is the structured issue's job).",
    ]
    text = benchmark_markdown("Unstructured pruning on MNIST-5k", intro, [format_table(runs)], _checks(runs))
    write_page(RESULTS / "unstructured_mnist.md", text)


if __name__ == "__main__":
    main()
