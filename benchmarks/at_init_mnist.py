"""Benchmark: pruning at initialisation (SNIP, SynFlow) against magnitude pruning of the trained
model on LeNet-300-100 / MNIST-5k, at equal total training, through one `prunekit compare` command.

magnitude: the cached baseline (40 epochs) pruned once, then 10 fine-tune epochs (50 in all);
snip / synflow: the same seed's untrained model pruned (SynFlow in 100 data-free rounds, SNIP on
one batch), then trained for 40 + 10 = 50 epochs with the model's recipe. Global scope, 3 seeds.

Run:  .venv/bin/python benchmarks/at_init_mnist.py     (about 4 minutes on 2 cores; --report-only
      re-renders the page from the results.json already written)
Writes benchmarks/results/at_init_mnist.md and benchmarks/results/at_init_mnist/results.json.
"""

from __future__ import annotations

import json
import statistics

from _common import (RESULTS, add_report_only, parser_for, percent_mean_sd, read_runs, read_timing, run_prunekit,
                     shown_command, table_head, write_page)

OUT = RESULTS / "at_init_mnist"
COMMAND = ["compare", "--model", "lenet300", "--dataset", "mnist5k", "--methods", "magnitude,snip,synflow",
           "--scope", "global", "--sparsity", "0.9,0.95,0.98", "--seeds", "0,1,2", "--finetune-epochs", "10",
           "--no-progress", "--out", str(OUT)]


def _dead_pixel_weights(sparsity: float = 0.95) -> str:
    """Where SNIP and SynFlow put fc1's kept weights, seed 0: how many sit on the pixels that are
    blank in every training image (SynFlow feeds ones, so it cannot know they are blank)."""
    import prunekit
    from prunekit.data import load_dataset, make_loader
    from prunekit.state import seeded_rng
    from prunekit.zoo import build_model

    splits = load_dataset("mnist5k")
    images = splits.train.tensors[0].reshape(len(splits.train.tensors[0]), -1)
    dead = (images == images.min()).all(dim=0)
    parts = []
    for method, rounds in (("snip", 1), ("synflow", 100)):
        with seeded_rng(0):
            model = build_model("lenet300", splits.input_shape, splits.num_classes)
        schedule = prunekit.Iterative(levels=rounds, every=1) if rounds > 1 else None
        pruner = prunekit.Pruner(model, method, sparsity, scope="global", schedule=schedule, num_batches=1,
                                 data=make_loader(splits.train, 64, shuffle=True, seed=0),
                                 example_inputs=splits.train.tensors[0][:2])
        for _ in range(rounds):
            pruner.step()
        keep = prunekit.get_masks(model)["fc1.weight"]
        parts.append(f"{method} keeps {int(keep.sum()):,} fc1 weights, {int(keep[:, dead].sum()):,} of them on "
                     f"the {int(dead.sum())} pixels blank in every training image")
    return f"At {sparsity:.0%} (seed 0): " + "; ".join(parts) + "."


def main() -> None:
    from prunekit.io import atomic_write_text

    parser = parser_for(__doc__)
    add_report_only(parser)
    timing = OUT / "timing.json"
    if not parser.parse_args().report_only:
        atomic_write_text(timing, json.dumps({"wall": run_prunekit(COMMAND)}))
    wall = read_timing(timing)["wall"]
    runs = read_runs(OUT)
    lines = table_head("method", "target", "acc. right after pruning %", "acc. after training % (± sd)", "dense %",
                       "drop pt", "training epochs")
    for method in ("magnitude", "snip", "synflow"):
        for target in (0.9, 0.95, 0.98):
            members = [r for r in runs if r["method"] == method and r["sparsity_target"] == target]
            accuracy = [r["accuracy"] for r in members]
            dense = statistics.fmean(r["accuracy_dense"] for r in members)
            epochs = "40 + 10" if method == "magnitude" else str(members[0]["epochs_spent"])
            lines.append(f"| {method} | {target:.0%} | {100 * statistics.fmean(r['accuracy_pruned'] for r in members):.2f} "
                         f"| {percent_mean_sd(accuracy)} "
                         f"| {100 * dense:.2f} | {100 * (dense - statistics.fmean(accuracy)):.2f} | {epochs} |")
    text = "\n".join([
        "# Pruning at initialisation on LeNet-300-100 / MNIST-5k", "",
        f"Command: `{shown_command(COMMAND, OUT, 'runs/at_init')}` "
        f"(wall time {wall:.0f} s on this machine; `benchmarks/at_init_mnist.py` runs it). "
        "magnitude prunes the trained baseline and fine-tunes 10 epochs; snip and synflow prune the same seed's "
        "untrained weights and then train 50 epochs: the same total training. Test accuracy, mean of 3 seeds.", "",
        *lines, "",
        "At equal total training, pruning the trained model is ahead of both at-initialisation methods at every "
        "sparsity on this small dataset. " + _dead_pixel_weights(), "",
    ])
    write_page(RESULTS / "at_init_mnist.md", text)


if __name__ == "__main__":
    main()
