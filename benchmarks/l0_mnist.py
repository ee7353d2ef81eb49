"""Benchmark: L0 regularisation with hard-concrete gates (issue 10) on MNIST-5k, 3 seeds.

1. The architecture L0 learns on LeNet-300-100 (Louizos et al. report "784-h1-h2-10"): neuron
   gates from the trained baseline, no target (the gates decide), the same 10-epoch fine-tuning
   budget and recipe as ``prunekit compare`` (gates and penalty for the first half; then the shut
   neurons are removed physically and the rest recovers without the penalty). Python API: the
   Pruner in prunekit's trainer, exactly as ``prunekit compare`` drives it, without a target.
2. L0 at fixed targets through ``prunekit compare`` beside one-shot pruning at the defaults:
   weights at 90/95% (global), neurons at 80/90% (layer), ResNet-20 channels at 50% (4 epochs, as in
   benchmarks/penalties_mnist.py), with params, MACs and measured latency of the deployed models.

Run:  .venv/bin/python benchmarks/l0_mnist.py   (--only architecture|weights|neurons|channels;
      --report-only re-renders from the results already written)
Writes benchmarks/results/l0_mnist.md and the runs under benchmarks/results/l0_mnist/.
"""

from __future__ import annotations

import copy
import json
import statistics
import time

from _common import (RESULTS, add_only, add_report_only, command_item, method_target_groups, parser_for,
                     percent_mean_sd, read_runs, read_timing, run_timed, runs_now, table_head, write_page)

OUT = RESULTS / "l0_mnist"
SEEDS = (0, 1, 2)
STRENGTHS = (1e-5, 3e-5, 1e-4)  # 1e-5: the harness's default for units (PENALTY_METHODS["l0"])
BASE = ["compare", "--dataset", "mnist5k", "--seeds", "0,1,2", "--no-progress"]
LENET = ["--model", "lenet300", "--finetune-epochs", "10"]
ROWS = [
    ("weights", [*LENET, "--methods", "magnitude,l0", "--scope", "global", "--sparsity", "0.9,0.95"]),
    ("neurons", [*LENET, "--methods", "neuron:l1,neuron:l0", "--scope", "layer", "--sparsity", "0.8,0.9"]),
    ("channels", ["--model", "resnet20", "--finetune-epochs", "4", "--methods", "channel:l1,channel:l0",
                  "--scope", "layer", "--sparsity", "0.5", "--round-to", "none"]),
]


def learn_architecture(seed: int, strength: float) -> dict:
    """One run of part 1: LeNet-300-100 with neuron gates and no target."""
    import torch

    from prunekit import Pruner
    from prunekit.callbacks import PrunerCallback
    from prunekit.data import load_dataset, make_loader
    from prunekit.metrics import count_macs, count_params, paired_latency
    from prunekit.recovery import PruningWatch, finetune_lr
    from prunekit.regularizers import L0
    from prunekit.schedules import OneShot
    from prunekit.training import default_train_config, evaluate, get_baseline, train

    splits = load_dataset("mnist5k")
    recipe = default_train_config("lenet300")
    dense, _ = get_baseline("lenet300", "mnist5k", seed, progress=False)
    test_loader = make_loader(splits.test, 500, shuffle=False)
    loader = make_loader(splits.train, recipe.batch_size, shuffle=True, seed=seed, augment_shift=recipe.augment_shift)
    example = next(iter(make_loader(splits.train, 8, shuffle=False)))[0]
    model, epochs = copy.deepcopy(dense), 10
    pruner = Pruner(model, "l0", granularity="neuron", example_inputs=example, regularizer=L0(strength),
                    schedule=OneShot(at_step=epochs * len(loader) // 2))
    watch = PruningWatch([pruner], lambda: evaluate(model, test_loader))
    started = time.perf_counter()
    train(model, loader, epochs, lr=finetune_lr("lenet300", recipe.lr), optimizer=recipe.optimizer,
          weight_decay=recipe.weight_decay, lr_schedule=recipe.lr_schedule, seed=seed, progress=False,
          callbacks=[PrunerCallback(pruner), watch])
    pruner.finalize()
    seconds = time.perf_counter() - started
    batch = next(iter(make_loader(splits.test, 64, shuffle=False)))[0]
    latency_dense, latency = paired_latency(dense, model, batch)
    return {
        "seed": seed, "strength": strength, "architecture": [784, model.fc1.out_features, model.fc2.out_features, 10],
        "accuracy_dense": evaluate(dense, test_loader), "accuracy_pruned": watch.measured,
        "accuracy": evaluate(model, test_loader), "params": count_params(model)[0],
        "params_dense": count_params(dense)[0], "macs": count_macs(model, example[:1])[0],
        "macs_dense": count_macs(dense, example[:1])[0], "latency_ms": latency, "latency_dense_ms": latency_dense,
        "seconds": seconds,
    }


def _mean(values) -> float:
    return statistics.fmean(values)


def architecture_lines(runs: list[dict]) -> list[str]:
    lines = table_head("λ (per parameter)", "architecture per seed", "acc. right after removal %",
                       "acc. after recovery % (± sd)", "drop pt", "params", "MACs", "latency vs dense (batch 64)")
    for strength in STRENGTHS:
        members = [run for run in runs if run["strength"] == strength]
        if not members:
            continue
        shapes = ", ".join("-".join(str(width) for width in run["architecture"]) for run in members)
        accuracy = [run["accuracy"] for run in members]
        lines.append(
            f"| {strength:g} | {shapes} | {100 * _mean(r['accuracy_pruned'] for r in members):.2f} | "
            f"{percent_mean_sd(accuracy)} | "
            f"{100 * (_mean(r['accuracy_dense'] for r in members) - _mean(accuracy)):.2f} | "
            f"{_mean(r['params'] for r in members):,.0f} of {members[0]['params_dense']:,} | "
            f"{_mean(r['macs'] for r in members):,.0f} of {members[0]['macs_dense']:,} | "
            f"{_mean(r['latency_ms'] / r['latency_dense_ms'] for r in members):.2f}x |")
    return lines


def compare_lines(runs: list[dict]) -> list[str]:
    """One table row per method and target of one `prunekit compare` command's runs."""
    lines = []
    for (method,), target, members in method_target_groups(runs):
        accuracy = [run["accuracy"] for run in members]
        dense = _mean(run["accuracy_dense"] for run in members)
        latency = _mean(run["latency_ms"] / run["latency_dense_ms"] for run in members)
        lines.append(
            f"| {members[0]['granularity']}:{method} | {target:.0%} | "
            f"{100 * _mean(r['sparsity_achieved'] for r in members):.1f}% | "
            f"{100 * _mean(r['accuracy_pruned'] for r in members):.2f} | "
            f"{percent_mean_sd(accuracy)} | "
            f"{100 * (dense - _mean(accuracy)):.2f} | {_mean(r['params'] for r in members):,.0f} | "
            f"{_mean(r['params_nonzero'] for r in members):,.0f} | {_mean(r['macs'] for r in members):,.0f} | "
            f"{latency:.2f}x |")
    return lines


def main() -> None:
    from prunekit.io import atomic_write_text

    parser = parser_for(__doc__)
    add_only(parser, ("architecture", *(name for name, _ in ROWS)))
    add_report_only(parser)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    timing_path, architecture_path = OUT / "timing.json", OUT / "architecture.json"
    timing = read_timing(timing_path)
    if runs_now(args, "architecture"):
        started = time.perf_counter()
        runs = [learn_architecture(seed, strength) for strength in STRENGTHS for seed in SEEDS]
        atomic_write_text(architecture_path, json.dumps(runs, indent=2))
        timing["architecture"] = time.perf_counter() - started
        atomic_write_text(timing_path, json.dumps(timing, indent=2))
    commands = {name: [*BASE, *extra, "--out", str(OUT / name)] for name, extra in ROWS}
    for name, command in commands.items():
        if runs_now(args, name):
            run_timed(name, command, timing, timing_path)
    done = [name for name in commands if (OUT / name / "results.json").is_file()]
    table = table_head("method", "target", "sparsity reached", "acc. right after pruning %",
                       "acc. after recovery % (± sd)", "drop pt", "params", "nonzero params", "MACs",
                       "latency vs dense")
    table += [line for name in done for line in compare_lines(read_runs(OUT / name))]
    architecture = json.loads(architecture_path.read_text()) if architecture_path.is_file() else []
    text = "\n".join([
        "# L0 regularisation (hard-concrete gates) on MNIST-5k", "",
        f"Command: `.venv/bin/python benchmarks/l0_mnist.py` (part 1 took "
        f"{timing.get('architecture', float('nan')):.0f} s here). Test accuracy on the 1,000-image test split; "
        "means of seeds 0, 1, 2; latency is the deployed model against the dense one, timed alternately in the "
        "same process (prunekit.metrics.paired_latency).", "",
        "## 1. The architecture L0 learns on LeNet-300-100", "",
        "Neuron gates on the trained baseline, no target: the gates decide. The fine-tuning recipe of "
        "`prunekit compare` (10 epochs; gates and penalty for the first 5, gate logits at "
        "`prunekit.gates.GATE_LR`), then the neurons whose deterministic gate is 0 are removed physically and "
        "the model recovers for 5 epochs without the penalty. The penalty is λ × the expected number of "
        "parameters whose gate is open (each neuron counts the weights it owns). Louizos et al. write the "
        "architecture as input-hidden-hidden-output; they also gate the 784 inputs (their λ = 0.1/N run on full "
        "MNIST learns 219-214-100), while prunekit gates the hidden neurons only, so the inputs stay 784.", "",
        *architecture_lines(architecture), "",
        "## 2. L0 at fixed targets beside one-shot pruning (`prunekit compare`)", "",
        "Every run gets the same fine-tuning epochs after the cached baseline. `l0` trains with gates and "
        "penalty (λ = 1e-4 per weight, 1e-5 per unit parameter: `PENALTY_METHODS`) for the first half, then "
        "keeps the highest gates (the shut ones always go, so the sparsity may pass the target), folds the "
        "gates into the weights and recovers without them. One-shot rows prune at the start and fine-tune for "
        "the whole budget.", "",
        *(command_item(commands[name], OUT, timing.get(name)) for name in done), "", *table, "",
    ])
    write_page(RESULTS / "l0_mnist.md", text)


if __name__ == "__main__":
    main()
