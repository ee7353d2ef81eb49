"""Benchmark: structured pruning with physical removal on MNIST-5k (the structured issue's targets).

Targets (3 seeds, mean):
  - resnet20, 50% channels, fine-tuned: measured CPU latency at batch 64 >= 2.0x faster than the
    dense baseline in the same run (aim 2.5x), accuracy drop <= 1 pt; MAC ratio reported beside it.
  - lenet300, 50% neurons: accuracy drop <= 1 pt, measured speedup reported.
  - lstm, 50% hidden units: model really smaller (params), accuracy drop <= 2 pt.
Also reported (no target): resnet20 without 3 of its 7 removable blocks, transformer-tiny without
half of its attention heads or one of its two encoder layers.

Run:  .venv/bin/python benchmarks/structured_mnist.py   (about 25 minutes on 2 cores)
      .venv/bin/python benchmarks/structured_mnist.py --report-only   (re-render the .md from the .json)
Writes benchmarks/results/structured_mnist/results.json and benchmarks/results/structured_mnist.md.
"""

from __future__ import annotations

import json
import time

from prunekit.harness import CompareConfig, run_compare, write_results
from prunekit.io import atomic_write_text
from prunekit.report import aggregate, benchmark_markdown, format_table

from _common import RESULTS, add_finetune, add_report_only, add_seeds, parser_for, seed_tuple, write_page

OUT = RESULTS / "structured_mnist"

METHODS = {
    "resnet20": ("channel:l1@0.5", "channel:fpgm@0.5", "channel:random@0.5",
                 "layer:removal-cost@0.43", "layer:random@0.43"),
    "lenet300": ("neuron:taylor@0.5", "neuron:weight-norm@0.5", "neuron:apoz@0.5", "neuron:random@0.5"),
    "lstm": ("lstm-unit:weight-norm@0.5", "lstm-unit:taylor@0.5", "lstm-unit:random@0.5"),
    "transformer-tiny": ("head:l1@0.5", "head:activation-mean@0.5", "head:random@0.5",
                         "layer:removal-cost@0.5"),
}


def _row(rows, model, granularity, method):
    return next(r for r in rows if (r["model"], r["granularity"], r["method"]) == (model, granularity, method))


def _checks(runs: list[dict]) -> list[tuple[str, bool, str]]:
    rows = aggregate(runs)
    resnet = _row(rows, "resnet20", "channel", "l1")
    resnet_speedup = resnet["speedup"]
    resnet_macs = resnet["macs_dense"] / resnet["macs_nonzero"]
    lenet = _row(rows, "lenet300", "neuron", "taylor")
    lenet_speedup = lenet["speedup"]
    lstm = _row(rows, "lstm", "lstm-unit", "weight-norm")
    lstm_dense = next(r["params_dense"] for r in runs if r["model"] == "lstm")
    return [
        ("resnet20 channel l1 50%: latency speedup >= 2.0x", resnet_speedup >= 2.0,
         f"{resnet_speedup:.2f}x (MACs {resnet_macs:.2f}x fewer)"),
        ("resnet20 channel l1 50%: speedup >= 2.5x (aim)", resnet_speedup >= 2.5, f"{resnet_speedup:.2f}x"),
        ("resnet20 channel l1 50%: drop <= 1 pt", resnet["drop_pt"] <= 1.0, f"{resnet['drop_pt']:.2f} pt"),
        ("lenet300 neuron taylor 50%: drop <= 1 pt", lenet["drop_pt"] <= 1.0,
         f"{lenet['drop_pt']:.2f} pt, speedup {lenet_speedup:.2f}x"),
        ("lstm lstm-unit weight-norm 50%: params smaller", lstm["params"] < lstm_dense,
         f"{lstm['params']:,.0f} params (dense {lstm_dense:,})"),
        ("lstm lstm-unit weight-norm 50%: drop <= 2 pt", lstm["drop_pt"] <= 2.0, f"{lstm['drop_pt']:.2f} pt"),
    ]


def _report(payload: dict) -> str:
    runs, config = payload["runs"], payload["config"]
    intro = [
        f"Command: `.venv/bin/python benchmarks/structured_mnist.py` (seeds {payload['seeds']}, "
        f"{config['finetune_epochs']} fine-tune epochs at lr {config['finetune_lr']:g} with the model's recipe, "
        "layer scope: every prunable layer loses the stated share of its units). "
        f"Wall time {payload['wall_seconds']:.0f} s on this machine (2 cores), torch {payload['torch']}.",
        "Accuracy on the 1,000-image test split, mean over seeds. Params/MACs/latency are of the shrunk model; "
        "latency at batch 64: 5 alternating dense/pruned rounds of 15 timed passes in the same process, the "
        "fastest round's median per model; "
        "speedup is the geometric mean over seeds of each run's dense/pruned latency ratio. "
        "`layer:removal-cost` measures the loss increase of skipping each block on the 500-image validation "
        "split; `@0.43` removes 3 of resnet20's 7 identity-shortcut blocks.",
    ]
    ordered = sorted(runs, key=lambda run: list(METHODS).index(run["model"]))
    return benchmark_markdown("Structured pruning with physical removal on MNIST-5k", intro,
                              [format_table(ordered)], _checks(runs))


def main() -> None:
    parser = parser_for(__doc__)
    add_seeds(parser)
    add_finetune(parser, epochs=10)
    add_report_only(parser)
    args = parser.parse_args()
    if not args.report_only:
        seeds = seed_tuple(args.seeds)
        started = time.perf_counter()
        common = dict(sparsities=(), scope="layer", seeds=seeds, finetune_epochs=args.finetune_epochs,
                      finetune_lr=args.finetune_lr, progress=False)
        runs = []
        for model, methods in METHODS.items():
            runs += run_compare(CompareConfig(model, "mnist5k", methods, **common), on_run=lambda r: print(
                f"{r['model']} {r['granularity']}:{r['method']} s{r['seed']}: {100 * r['accuracy']:.2f}% "
                f"(dense {100 * r['accuracy_dense']:.2f}%), {r['latency_dense_ms'] / r['latency_ms']:.2f}x", flush=True))
        config = CompareConfig("*", "mnist5k", tuple(m for ms in METHODS.values() for m in ms), **common)
        path = write_results(OUT, config, runs)
        payload = json.loads(path.read_text())
        payload.update(seeds=args.seeds, wall_seconds=time.perf_counter() - started)
        atomic_write_text(path, json.dumps(payload, indent=2))
    payload = json.loads((OUT / "results.json").read_text())
    text = _report(payload)
    write_page(RESULTS / "structured_mnist.md", text)


if __name__ == "__main__":
    main()
