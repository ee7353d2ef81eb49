"""Benchmark: the learned mask predictor (issue 10) on LeNet-300-100 / MNIST-5k, 3 seeds.

The oracle is iterative global magnitude pruning with fine-tuning: from a seed's cached dense
baseline, 5 prunings 2 epochs apart (each removing the same share of what is left) inside 16
epochs of the fine-tuning recipe (`prunekit compare`'s: the model's optimiser, cosine decay and
augmentation at `recovery.finetune_lr`); its final masks are the labels. One predictor per target
sparsity (90%, 95%) is fitted on seed 0's oracle, features read on seed 0's dense model (the
one-shot situation it is then used in), and predicts masks of seeds 1 and 2 in one shot (global
scope). Their agreement with those seeds' own oracles is compared with one-shot magnitude,
gradient, taylor and random masks at the same sparsity, and test accuracy after one-shot pruning
+ 10 fine-tune epochs with predictor vs magnitude masks. On LeNet-5: the LeNet-300-100 predictor
on the fully connected layers (the conv layers excluded: it has no conv features), and a second
predictor fitted on LeNet-5 seed 0 (conv and fc layers) tried on seeds 1 and 2; 90% only.

Run:  .venv/bin/python benchmarks/predictor_mnist.py   (about 6 minutes on 2 busy cores; --report-only
      re-renders the page from the JSON)
Writes benchmarks/results/predictor_mnist.{json,md}.
"""

from __future__ import annotations

import copy
import json
import statistics
import time

import torch
from torch import nn

from prunekit import Pruner, prune
from prunekit.callbacks import PrunerCallback
from prunekit.data import load_dataset, make_loader
from prunekit.errors import PrunekitError
from prunekit.io import atomic_write_text
from prunekit.masking import get_masks
from prunekit.predictor import MaskPredictor, mask_agreement
from prunekit.recovery import finetune_lr
from prunekit.schedules import Iterative
from prunekit.training import default_train_config, evaluate, get_baseline, train

from _common import RESULTS, add_report_only, parser_for, percent_mean_sd, table_head, write_page

DATASET = "mnist5k"
SEEDS, TRAIN_SEED = (0, 1, 2), 0
RERUN_SEED = 1  # the oracle is run a second time on this seed, with another data order
ORACLE_LEVELS, ORACLE_EVERY_EPOCHS, ORACLE_EPOCHS = 5, 2, 16
FINETUNE_EPOCHS = 10
FEATURE_BATCHES, FEATURE_BATCH_SIZE = 16, 128  # gradients for the features, gradient and taylor: 2,048 images
ONE_SHOT = ("magnitude", "gradient", "taylor", "random")
#: (case, model, exclude, sparsities): what is pruned and where the predictor comes from
CASES = (
    ("lenet300", "lenet300", (), (0.9, 0.95)),
    ("lenet5-fc", "lenet5", (nn.Conv2d,), (0.9,)),
    ("lenet5-all", "lenet5", (), (0.9,)),
)


class Context:
    """Data and recipe shared by every run on one model."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.splits = load_dataset(DATASET)
        self.recipe = default_train_config(model_name, DATASET)
        self.lr = finetune_lr(model_name, self.recipe.lr)
        self.features = make_loader(self.splits.train, FEATURE_BATCH_SIZE, shuffle=False)
        self.test = make_loader(self.splits.test, 500, shuffle=False)

    def fine_tune(self, model: nn.Module, seed: int, epochs: int, pruner: Pruner | None = None) -> None:
        """The harness's fine-tuning recipe (harness._fine_tune), driving `pruner` if given."""
        loader = make_loader(self.splits.train, self.recipe.batch_size, shuffle=True, seed=seed,
                             augment_shift=self.recipe.augment_shift)
        train(model, loader, epochs=epochs, lr=self.lr, optimizer=self.recipe.optimizer,
              weight_decay=self.recipe.weight_decay, lr_schedule=self.recipe.lr_schedule, seed=seed,
              progress=False, callbacks=[PrunerCallback(pruner)] if pruner is not None else [])

    def steps_per_epoch(self) -> int:
        return -(-len(self.splits.train) // self.recipe.batch_size)


def oracle(context: Context, dense: nn.Module, seed: int, sparsity: float, exclude: tuple,
           data_seed: int | None = None) -> dict:
    """Iterative magnitude pruning with fine-tuning from `dense` (data order and augmentation
    drawn with `data_seed`, default `seed`): its final masks and accuracy."""
    started = time.perf_counter()
    model = copy.deepcopy(dense)
    schedule = Iterative(levels=ORACLE_LEVELS, every=ORACLE_EVERY_EPOCHS * context.steps_per_epoch())
    pruner = Pruner(model, "magnitude", sparsity, scope="global", schedule=schedule, exclude=exclude)
    context.fine_tune(model, seed if data_seed is None else data_seed, ORACLE_EPOCHS, pruner)
    masks = {name: mask.clone() for name, mask in get_masks(model).items()}
    pruner.finalize()
    return {"masks": masks, "accuracy": evaluate(model, context.test), "seconds": time.perf_counter() - started}


def one_shot(context: Context, dense: nn.Module, method: str, sparsity: float, exclude: tuple,
             predictor: MaskPredictor | None = None) -> tuple[nn.Module, dict]:
    """A copy of `dense` pruned once by `method` (global scope) and its keep-masks."""
    model = copy.deepcopy(dense)
    data = context.features if method != "magnitude" else None
    result = prune(model, method, sparsity, scope="global", data=data, num_batches=FEATURE_BATCHES,
                   exclude=exclude, predictor=predictor)
    return model, {name: mask.clone() for name, mask in result.masks.items()}


def agreement_rows(context: Context, case: str, dense: nn.Module, seed: int, sparsity: float, exclude: tuple,
                   reference: dict, predictors: dict) -> list[dict]:
    """One row per method: its one-shot masks against the oracle's `reference` masks."""
    rows = []
    methods = [(name, None) for name in ONE_SHOT] + list(predictors.items())
    for method, predictor in methods:
        _, masks = one_shot(context, dense, "predictor" if predictor is not None else method, sparsity, exclude,
                            predictor)
        rows.append({"case": case, "seed": seed, "sparsity": sparsity, "method": method,
                     "training_seed": seed == TRAIN_SEED and predictor is not None and case != "lenet5-fc",
                     **mask_agreement(masks, reference)})
    # not one-shot (it reads the oracle): how far the oracle's per-layer amounts alone get magnitude
    layer_sparsity = {name: 1.0 - float(mask.float().mean()) for name, mask in reference.items()}
    model = copy.deepcopy(dense)
    result = prune(model, "magnitude", layer_sparsity=layer_sparsity, exclude=exclude)
    rows.append({"case": case, "seed": seed, "sparsity": sparsity, "method": "magnitude at the oracle's layer "
                 "sparsities (reads the oracle)", "training_seed": False, **mask_agreement(result.masks, reference)})
    return rows


def accuracy_rows(context: Context, dense: nn.Module, seed: int, sparsity: float, predictor: MaskPredictor) -> list:
    """Test accuracy after one-shot pruning + FINETUNE_EPOCHS, predictor against magnitude masks."""
    rows = []
    for method in ("magnitude", "predictor"):
        model, _ = one_shot(context, dense, method, sparsity, (), predictor if method == "predictor" else None)
        pruned = evaluate(model, context.test)
        context.fine_tune(model, seed, FINETUNE_EPOCHS)
        rows.append({"seed": seed, "sparsity": sparsity, "method": method, "accuracy_pruned": pruned,
                     "accuracy": evaluate(model, context.test)})
    return rows


def fit_predictor(context: Context, dense: nn.Module, masks: dict) -> tuple[MaskPredictor, float]:
    started = time.perf_counter()
    predictor = MaskPredictor().fit(dense, masks, context.features, num_batches=FEATURE_BATCHES)
    return predictor, time.perf_counter() - started


def run_case(case: str, model_name: str, exclude: tuple, sparsities: tuple, lenet300_predictors: dict,
             out: dict) -> None:
    """Oracles on every seed; predictors fitted on TRAIN_SEED (lenet300, lenet5-all); agreement
    rows (and accuracy rows on lenet300) appended to `out`."""
    context = Context(model_name)
    for sparsity in sparsities:
        predictors, oracles = {}, {}
        for seed in SEEDS:
            dense = get_baseline(model_name, DATASET, seed, progress=False)[0]
            oracles[seed] = oracle(context, dense, seed, sparsity, exclude)
            out["oracles"].append({"case": case, "seed": seed, "sparsity": sparsity,
                                   "accuracy": oracles[seed]["accuracy"], "seconds": oracles[seed]["seconds"]})
            print(json.dumps(out["oracles"][-1]), flush=True)
            if seed == TRAIN_SEED and case != "lenet5-fc":
                predictors["predictor"], seconds = fit_predictor(context, dense, oracles[seed]["masks"])
                out["fits"].append({"case": case, "sparsity": sparsity, "seconds": seconds})
                if case == "lenet300":
                    lenet300_predictors[sparsity] = predictors["predictor"]
            if case == "lenet5-fc":
                predictors = {"predictor (fitted on lenet300)": lenet300_predictors[sparsity]}
            if case == "lenet300" and sparsity == 0.95:
                predictors["predictor fitted at 90%"] = lenet300_predictors[0.9]
            out["agreement"] += agreement_rows(context, case, dense, seed, sparsity, exclude, oracles[seed]["masks"],
                                               predictors)
            if case == "lenet300" and seed == RERUN_SEED:  # how repeatable is the oracle itself?
                rerun = oracle(context, dense, seed, sparsity, exclude, data_seed=seed + 100)
                out["agreement"].append({"case": case, "seed": seed, "sparsity": sparsity, "training_seed": False,
                                         "method": "oracle rerun (other data order)",
                                         **mask_agreement(rerun["masks"], oracles[seed]["masks"])})
            if case == "lenet300":
                out["accuracy"] += accuracy_rows(context, dense, seed, sparsity, predictors["predictor"])
                print(json.dumps(out["accuracy"][-2:]), flush=True)


def refusal_message(lenet300_predictor: MaskPredictor) -> str:
    """The error a LeNet-300-100 predictor gives on LeNet-5's conv layers (the model untouched)."""
    model = get_baseline("lenet5", DATASET, 1, progress=False)[0]
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    try:
        prune(model, "predictor", 0.9, scope="global", data=Context("lenet5").features,
              predictor=lenet300_predictor)
    except PrunekitError as error:
        unchanged = before.keys() == model.state_dict().keys() and all(
            torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
        return f"{error} (model unchanged: {unchanged})"
    return "no error: the predictor accepted conv layers"


def main() -> None:
    parser = parser_for(__doc__)
    add_report_only(parser)
    if parser.parse_args().report_only:  # re-render the page from the results already written
        out = json.loads((RESULTS / "predictor_mnist.json").read_text())
        atomic_write_text(RESULTS / "predictor_mnist.md", render(out))
        return
    # one thread: on two cores shared with other jobs, two torch threads made an epoch 8x slower
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = {"oracles": [], "fits": [], "agreement": [], "accuracy": []}
    lenet300_predictors: dict = {}
    for case, model_name, exclude, sparsities in CASES:
        run_case(case, model_name, exclude, sparsities, lenet300_predictors, out)
    out["refusal"] = refusal_message(lenet300_predictors[0.9])
    out["seconds"] = time.perf_counter() - started
    atomic_write_text(RESULTS / "predictor_mnist.json", json.dumps(out, indent=2))
    write_page(RESULTS / "predictor_mnist.md", render(out))


def _mean(rows: list[dict], key: str) -> str:
    values = [row[key] for row in rows]
    return f"{statistics.fmean(values):.4f}" if len(values) == 1 else \
        f"{statistics.fmean(values):.4f} (± {statistics.pstdev(values):.4f})"


def agreement_table(out: dict, case: str, sparsity: float) -> list[str]:
    rows = [row for row in out["agreement"] if row["case"] == case and row["sparsity"] == sparsity]
    unseen = [row for row in rows if row["seed"] != TRAIN_SEED] if case != "lenet5-fc" else rows
    where = ("no training seed: the predictor was fitted on LeNet-300-100" if case == "lenet5-fc"
             else "the training seed's own figures in the last column")
    lines = [f"**{case}, {sparsity:.0%}** (mean ± sd over seeds {sorted({row['seed'] for row in unseen})}; "
             f"{where})", "",
             *table_head("method", "pruned precision", "pruned recall", "F1", "kept Jaccard", "seed 0 kept Jaccard")]
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in unseen if row["method"] == method]
        own = [row for row in rows if row["method"] == method and row["seed"] == TRAIN_SEED]
        own_text = f"{own[0]['jaccard_kept']:.4f}" + (" (training seed)" if own[0]["training_seed"] else "") \
            if own else "-"
        lines.append(f"| {method} | {_mean(mine, 'precision')} | {_mean(mine, 'recall')} | {_mean(mine, 'f1')} | "
                     f"{_mean(mine, 'jaccard_kept')} | {own_text} |")
    return [*lines, ""]


def verdicts(out: dict) -> list[str]:
    """Plain statements: did the predictor agree with the oracle better than magnitude on unseen seeds?"""
    lines = table_head("case", "sparsity", "predictor kept Jaccard", "magnitude kept Jaccard", "predictor better?")
    for case, _, _, sparsities in CASES:
        for sparsity in sparsities:
            rows = [row for row in out["agreement"] if row["case"] == case and row["sparsity"] == sparsity
                    and (row["seed"] != TRAIN_SEED or case == "lenet5-fc")]
            predictor = statistics.fmean(row["jaccard_kept"] for row in rows if row["method"].startswith("predictor")
                                         and "90%" not in row["method"])
            magnitude = statistics.fmean(row["jaccard_kept"] for row in rows if row["method"] == "magnitude")
            lines.append(f"| {case} | {sparsity:.0%} | {predictor:.4f} | {magnitude:.4f} | "
                         f"{'yes' if predictor > magnitude else 'NO'} |")
    return lines


def accuracy_table(out: dict) -> list[str]:
    lines = table_head("sparsity", "method", "seed", "acc. right after pruning %", "acc. after 10 epochs %")
    for row in out["accuracy"]:
        seed = f"{row['seed']}" + (" (training seed)" if row["seed"] == TRAIN_SEED and row["method"] == "predictor"
                                   else "")
        lines.append(f"| {row['sparsity']:.0%} | {row['method']} | {seed} | {100 * row['accuracy_pruned']:.2f} | "
                     f"{100 * row['accuracy']:.2f} |")
    for sparsity in sorted({row["sparsity"] for row in out["accuracy"]}):
        for method in ("magnitude", "predictor"):
            unseen = [row["accuracy"] for row in out["accuracy"] if row["sparsity"] == sparsity
                      and row["method"] == method and row["seed"] != TRAIN_SEED]
            lines.append(f"| {sparsity:.0%} | {method} | mean of unseen seeds | | {percent_mean_sd(unseen)} |")
    oracle = [f"{row['case']} {row['sparsity']:.0%} seed {row['seed']}: {100 * row['accuracy']:.2f}%"
              for row in out["oracles"]]
    return [*lines, "", f"Oracle test accuracy ({ORACLE_EPOCHS} epochs of iterative pruning and fine-tuning): "
            + "; ".join(oracle) + "."]


def _jaccards(out: dict, case: str, sparsity: float, method: str) -> dict[int, float]:
    """Kept Jaccard with the oracle per seed the predictor was not fitted on."""
    return {row["seed"]: row["jaccard_kept"] for row in out["agreement"] if row["case"] == case
            and row["sparsity"] == sparsity and row["method"] == method
            and (row["seed"] != TRAIN_SEED or case == "lenet5-fc")}


def findings(out: dict) -> list[str]:
    """The page's conclusions, worded from the numbers (so a rerun cannot leave them stale)."""
    lines = []
    for case, label in (("lenet300", "predictor"), ("lenet5-fc", "predictor (fitted on lenet300)"),
                        ("lenet5-all", "predictor")):
        for sparsity in next(entry[3] for entry in CASES if entry[0] == case):
            mine, magnitude = _jaccards(out, case, sparsity, label), _jaccards(out, case, sparsity, "magnitude")
            gaps = [mine[seed] - magnitude[seed] for seed in sorted(mine)]
            better = statistics.fmean(mine.values()) > statistics.fmean(magnitude.values())
            verdict = "agrees with the oracle better than magnitude" if better else \
                "does NOT agree with the oracle better than magnitude"
            lines.append(f"- {case} at {sparsity:.0%}, unseen seeds {sorted(mine)}: the predictor {verdict} (kept "
                         f"Jaccard {statistics.fmean(mine.values()):.4f} vs {statistics.fmean(magnitude.values()):.4f}"
                         f"; per seed {', '.join(f'{gap:+.4f}' for gap in gaps)}).")
    for sparsity in (0.9, 0.95):
        rerun = _jaccards(out, "lenet300", sparsity, "oracle rerun (other data order)")[RERUN_SEED]
        magnitude = _jaccards(out, "lenet300", sparsity, "magnitude")[RERUN_SEED]
        relation = "less" if rerun < magnitude else "more"
        lines.append(f"- The oracle is noisy: rerun on seed {RERUN_SEED} with another data order, its {sparsity:.0%} "
                     f"mask shares a kept Jaccard of {rerun:.4f} with the first run, {relation} than one-shot "
                     f"magnitude shares with that run ({magnitude:.4f}): much of the oracle's mask is decided by the "
                     "fine-tuning's data order, which the dense model's features cannot see.")
    for sparsity in sorted({row["sparsity"] for row in out["accuracy"]}):
        mean = {method: statistics.fmean(row["accuracy"] for row in out["accuracy"] if row["sparsity"] == sparsity
                                         and row["method"] == method and row["seed"] != TRAIN_SEED)
                for method in ("magnitude", "predictor")}
        lines.append(f"- Accuracy at {sparsity:.0%} after one-shot pruning and {FINETUNE_EPOCHS} epochs, unseen "
                     f"seeds: predictor {100 * mean['predictor']:.2f}% vs magnitude {100 * mean['magnitude']:.2f}% "
                     f"({100 * (mean['predictor'] - mean['magnitude']):+.2f} pt): "
                     + ("the predictor's masks recover worse than magnitude's."
                        if mean["predictor"] <= mean["magnitude"] else "the predictor's masks recover better."))
    return lines


def render(out: dict) -> str:
    tables = [line for case, _, _, sparsities in CASES for sparsity in sparsities
              for line in agreement_table(out, case, sparsity)]
    return "\n".join([
        "# Learned mask predictor on MNIST-5k (LeNet-300-100, LeNet-5)", "",
        f"Command: `.venv/bin/python benchmarks/predictor_mnist.py`; wall time {out['seconds']:.0f} s on this "
        "machine (2 cores shared with other jobs; torch on one thread), predictor fits "
        + ", ".join(f"{fit['case']} {fit['sparsity']:.0%} {fit['seconds']:.0f} s" for fit in out["fits"]) + ".",
        "", __doc__.split("\n\n")[1].replace("\n", " "), "", "## Findings", "", *findings(out), "",
        "## Does it agree with the oracle better than magnitude "
        "on seeds it was not fitted on?", "", *verdicts(out), "", "## Agreement with the oracle", "",
        "Pruned precision / recall: of the weights a method prunes, the share the oracle prunes too / of the weights "
        "the oracle prunes, the share the method prunes. At equal sparsity both equal F1, and random masks score "
        "the sparsity itself (0.90 at 90%); the Jaccard index of the kept weights (random: about "
        "(1 - s) / (1 + s)) separates methods more clearly.", "", *tables,
        "## Accuracy after one-shot pruning and fine-tuning (LeNet-300-100)", "", *accuracy_table(out), "",
        "## Refused: the LeNet-300-100 predictor on all of LeNet-5", "", f"> {out['refusal']}", "",
    ])


if __name__ == "__main__":
    main()
