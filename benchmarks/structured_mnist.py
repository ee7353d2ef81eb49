"""Benchmark: structured pruning with physical removal on MNIST-5k (the structured issue's targets).

Targets (3 seeds, mean):
  - resnet20, 50% channels, fine-tuned: measured CPU latency at batch 64 >= 2.0x faster than the
    dense baseline in the same run (aim 2.5x), accuracy drop <= 1 pt; MAC ratio reported beside it.
  - lenet300, 50% neurons: accuracy drop <= 1 pt, measured speedup reported.
  - lstm, 50% hidden units: model really smaller (params), accuracy drop <= 2 pt.

Run:  .venv/bin/python benchmarks/structured_mnist.py   (about 20 minutes on 2 cores)
Writes benchmarks/results/structured_mnist.json and .md (the committed results).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from prunekit.harness import CompareConfig, run_compare, write_results
from prunekit.io import atomic_write_text
from prunekit.report import aggregate, format_table

RESULTS = Path(__file__).parent / "results"


def _row(rows, model, method):
    return next(r for r in rows if r["model"] == model and r["method"] == method)


def _checks(runs: list[dict]) -> list[tuple[str, bool, str]]:
    rows = aggregate(runs)
    resnet = _row(rows, "resnet20", "l1")
    resnet_speedup = resnet["latency_dense_ms"] / resnet["latency_ms"]
    resnet_macs = resnet["macs_dense"] / resnet["macs_nonzero"]
    lenet = _row(rows, "lenet300", "taylor")
    lenet_speedup = lenet["latency_dense_ms"] / lenet["latency_ms"]
    lstm = _row(rows, "lstm", "weight-norm")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    started = time.perf_counter()
    common = dict(sparsities=(), scope="layer", seeds=seeds, finetune_epochs=args.finetune_epochs, progress=False)
    configs = [
        CompareConfig("resnet20", "mnist5k", ("channel:l1@0.5", "channel:fpgm@0.5", "channel:random@0.5"), **common),
        CompareConfig("lenet300", "mnist5k", ("neuron:taylor@0.5", "neuron:weight-norm@0.5", "neuron:apoz@0.5",
                                              "neuron:random@0.5"), **common),
        CompareConfig("lstm", "mnist5k", ("lstm-unit:weight-norm@0.5", "lstm-unit:taylor@0.5",
                                          "lstm-unit:random@0.5"), **common),
    ]
    runs, tables = [], []
    for config in configs:
        model_runs = run_compare(config, on_run=lambda r: print(
            f"{r['model']} {r['granularity']}:{r['method']} s{r['seed']}: {100 * r['accuracy']:.2f}% "
            f"(dense {100 * r['accuracy_dense']:.2f}%), {r['latency_dense_ms'] / r['latency_ms']:.2f}x", flush=True))
        runs += model_runs
        tables.append(f"{config.model}:\n{format_table(model_runs)}")
    write_results(RESULTS / "structured_mnist", configs[0], runs)
    checks = _checks(runs)
    lines = ["# Structured pruning with physical removal on MNIST-5k", "",
             f"Command: `.venv/bin/python benchmarks/structured_mnist.py` (seeds {args.seeds}, "
             f"{args.finetune_epochs} fine-tune epochs, layer scope: every prunable layer loses 50% of its units). "
             f"Wall time {time.perf_counter() - started:.0f} s on this machine (2 cores).", "",
             "Accuracy on the 1,000-image test split, mean over seeds. Params/MACs/latency are of the shrunk model; "
             "latency is the median of alternating dense/pruned timing rounds at batch 64 in the same process.", "",
             "```", "\n\n".join(tables), "```", "", "| check | result | value |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {value} |" for name, ok, value in checks]
    text = "\n".join(lines) + "\n"
    atomic_write_text(RESULTS / "structured_mnist.md", text)
    print(text)


if __name__ == "__main__":
    main()
