"""Command-line interface: the only module that reads argv or prints for the user."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prunekit import __version__
from prunekit.cli_args import CommandParser, count, non_negative_float, positive_float
from prunekit.errors import PrunekitError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,0.9; got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        values = (-1,)
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0 such as 0,1,2; got {text!r}")
    return values


def _round_to(text: str) -> int | str | None:
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or an integer >= 1 such as 8; got {text!r}")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _write_report(results_path) -> None:
    """report.html and report.md (plots, Pareto frontiers, the comparison in words) beside results.json."""
    from prunekit.report_html import report_from_results

    html_path, md_path = report_from_results(results_path)
    print(f"report written to {html_path} and {md_path}")


def _run_and_report(config, args: argparse.Namespace) -> None:
    from prunekit.cli_results import compare_zoo
    from prunekit.report import format_table

    def show(run: dict) -> None:
        rounded = f", kept units per layer a multiple of {run['round_to']}" if run.get("round_to") else ""
        print(f"  seed {run['seed']} {run['method']:<14} {run['sparsity_target']:.0%}: "
              f"accuracy {100 * run['accuracy']:.2f}% (dense {100 * run['accuracy_dense']:.2f}%){rounded}", flush=True)

    runs, path = compare_zoo(config, args, show)  # --out checked first; each run written as it finishes
    print()
    print(f"{config.model} on {config.dataset}, {config.scope} scope, {config.finetune_epochs} fine-tune "
          f"epoch(s), seeds {','.join(map(str, config.seeds))}; latency at batch {config.batch_size}")
    print(format_table(runs))
    print(f"\nresults written to {path}")
    _write_report(path)


def _cmd_compare(args: argparse.Namespace) -> None:
    from prunekit.harness import CompareConfig
    from prunekit.harness_transformers import TRANSFORMER_MODELS

    if args.model in TRANSFORMER_MODELS:
        _compare_transformer(args)
        return
    config = CompareConfig(
        model=args.model, dataset=args.dataset, methods=args.methods, sparsities=args.sparsity,
        scope=args.scope or "global", granularity=args.granularity, seeds=args.seeds,
        finetune_epochs=2 if args.finetune_epochs is None else args.finetune_epochs,
        finetune_lr=args.finetune_lr, batch_size=args.batch_size,
        exclude=args.exclude, train_epochs=args.train_epochs, cache_dir=args.cache_dir,
        progress=not args.no_progress, round_to=args.round_to,
        schedule=args.schedule, distill=args.distill, tolerance=args.tolerance,
        allocation=args.allocation, budget=args.budget,
    )
    _run_and_report(config, args)


def _paragraphs(path: str | None, option: str) -> tuple[str, ...] | None:
    """One paragraph per non-empty line of `path` (None when the option was not given)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return tuple(line.strip() for line in file if line.strip())
    except OSError as error:
        raise PrunekitError(f"cannot read {option} {path}: {error.strerror}; give a text file with one paragraph "
                            "per line") from None


def _compare_transformer(args: argparse.Namespace) -> None:
    from prunekit.cli_results import compare_transformer
    from prunekit.harness_transformers import TransformerCompareConfig
    from prunekit.report import format_transformer_table

    config = TransformerCompareConfig(
        model=args.model, methods=args.methods, sparsities=args.sparsity, granularity=args.granularity,
        scope=args.scope, pattern=args.pattern, reconstruct=args.reconstruct, seeds=args.seeds,
        calibration_size=128 if args.calibration_size is None else args.calibration_size,
        eval_size=256 if args.eval_size is None else args.eval_size,
        calibration_texts=_paragraphs(args.calibration_text, "--calibration-text"),
        eval_texts=_paragraphs(args.eval_text, "--eval-text"), time_unstructured=args.time_unstructured,
        progress=not args.no_progress)

    def show(run: dict) -> None:
        timed = "" if run["latency_ms"] is None else (
            f", batch {run['latency_batch_size']}: {run['latency_ms']:.1f} ms (dense {run['latency_dense_ms']:.1f})")
        label = f"{run['granularity']}:{run['method']}"
        print(f"  seed {run['seed']} {label:<24} {run['sparsity_target']:.0%}: cosine "
              f"{run['accuracy']:.4f} (dense 1.0), nn agreement {run['nn_agreement']:.3f}, pruned in "
              f"{run['prune_seconds']:.2f} s{timed}", flush=True)

    runs, path = compare_transformer(config, args, show)  # --out checked first; each run written at once
    print(f"\n{config.model}: one-shot, no fine-tuning; {runs[0]['calibration_texts']} calibration texts, "
          f"{runs[0]['eval_texts']} held-out texts ({runs[0]['dataset']}); latency at sequence length "
          f"{config.sequence_length}, structured runs only{' (and unstructured)' if config.time_unstructured else ''}")
    print(format_transformer_table(runs))
    print(f"\nresults written to {path} ('accuracy' there is the mean cosine similarity; 'accuracy_dense' 1.0)")
    _write_report(path)


def _cmd_demo(args: argparse.Namespace) -> None:
    from prunekit.cli_demo import demo_config, demo_intro  # the methods and settings, the first-run note

    print(demo_intro(args.cache_dir), flush=True)
    _run_and_report(demo_config(args.cache_dir, progress=not args.no_progress), args)


def _cmd_methods(args: argparse.Namespace) -> None:
    from prunekit.criteria import criteria_for
    from prunekit.granularity import GRANULARITIES
    from prunekit.harness_movement import MOVEMENT_METHODS
    from prunekit.one_shot import ONE_SHOT_METHODS
    from prunekit.regularizers import PENALTY_METHODS
    from prunekit.stats import LOOP_ONLY

    for name, granularity in GRANULARITIES.items():
        removal = "" if not granularity.removable else ", physically removed"
        print(f"granularity '{name}' (unit: {granularity.unit}{removal}):")
        for criterion in criteria_for(granularity.provides).values():
            needs = f"  [needs data: {criterion.needs}]" if criterion.needs else ""
            needs = "  [needs training steps: a Pruner in your loop]" if criterion.needs in LOOP_ONLY else needs
            print(f"  {criterion.name:<20} {criterion.description}{needs}")
        print()
    print("hybrid: 'hybrid:<unit method>@<unit sparsity>+<weight method>' in 'prunekit compare --methods'")
    print("trained with a penalty, then pruned (prunekit compare): " + ", ".join(
        f"{' / '.join(method.granularities)}:{name} (then {method.criterion})"
        for name, method in PENALTY_METHODS.items()))
    print("pruned while fine-tuning (prunekit compare): " + "; ".join(
        f"{name} ({description})" for name, description in MOVEMENT_METHODS.items()))
    print("rebuilding the weights they keep (prunekit.prune, needs data): " + "; ".join(
        f"{name} ({description})" for name, description in ONE_SHOT_METHODS.items()))


def _cmd_info(args: argparse.Namespace) -> None:
    from prunekit.cli_info import cmd_info  # checkpoints and cached baselines; readable errors for the rest

    cmd_info(args)


def _cmd_list(args: argparse.Namespace) -> None:
    from prunekit.data import list_datasets
    from prunekit.harness_transformers import TRANSFORMER_MODELS
    from prunekit.zoo import list_models

    for title, entries in (("models", list_models()), ("datasets", list_datasets()),
                           ("pretrained models (prunekit compare --model NAME, no --dataset)", TRANSFORMER_MODELS)):
        print(f"{title}:")
        for name, description in entries.items():
            print(f"  {name:<18} {description}")


def _cmd_sensitivity(args: argparse.Namespace) -> None:
    from prunekit.sensitivity import write_sensitivity
    from prunekit.zoo_sensitivity import SensitivityConfig, run_sensitivity

    config = SensitivityConfig(
        model=args.model, dataset=args.dataset, granularity=args.granularity, method=args.method,
        sparsities=args.sparsities, seed=args.seed, train_epochs=args.train_epochs, cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )
    result = run_sensitivity(config)
    json_path, png_path = write_sensitivity(result, args.out)
    print(f"{config.model} on {config.dataset}: each {result.granularity} layer pruned alone by {result.method}, "
          f"no fine-tuning; {result.metric_name} on the {result.split} split (dense {100 * result.dense_metric:.2f}%)")
    width = max(len(name) for name in result.layers)
    print(f"{'layer':<{width}}  units   " + "  ".join(f"{sparsity:>6.0%}" for sparsity in result.sparsities))
    for name, curve in result.layers.items():
        print(f"{name:<{width}}  {curve.num_units:>6,}  " + "  ".join(f"{100 * value:6.2f}" for value in curve.metric))
    print(f"\nwritten: {json_path} and {png_path}")


def _add_compare_arguments(compare: argparse.ArgumentParser) -> None:
    """The options of ``prunekit compare``."""
    from prunekit.granularity import GRANULARITIES
    from prunekit.recovery import SCHEDULE_NAMES

    compare.add_argument("--model", required=True, help="zoo model name, or minilm (pretrained), see 'prunekit list'")
    compare.add_argument("--dataset", default=None,
                         help="bundled dataset name, see 'prunekit list' (zoo models; minilm needs none)")
    compare.add_argument("--methods", type=_names, required=True, help="comma-separated, see 'prunekit methods'")
    compare.add_argument("--sparsity", type=_floats, default=(),
                         help="comma-separated targets in [0, 1) (or a --budget, or '@sparsity' in --methods)")
    compare.add_argument("--scope", default=None, choices=("global", "layer", "lamp", "row"),
                         help="default: global for zoo models, each method's own for minilm (row: minilm only)")
    compare.add_argument("--allocation", default=None, choices=("uniform", "global", "lamp", "sensitivity"),
                         help="per-layer amounts meeting each sparsity or the --budget (default: as --scope); "
                              "sensitivity measures each layer's curve on the validation split first")
    compare.add_argument("--budget", default=None,
                         help="KIND=VALUE instead of --sparsity, e.g. macs=0.25, params=0.1, sparsity=0.9, "
                              "latency=0.4 (share of the dense model's, measured on the deployed model)")
    compare.add_argument("--granularity", default="unstructured", choices=tuple(GRANULARITIES),
                         help="for method specs without a 'granularity:' prefix")
    compare.add_argument("--seeds", type=_ints, default=(0,), help="comma-separated seeds, one baseline each")
    compare.add_argument("--finetune-epochs", type=count(0), default=None, help="zoo models (default: 2)")
    compare.add_argument("--finetune-lr", type=positive_float, default=None,
                         help="(default: the model's recipe rate restarted, prunekit.recovery.finetune_lr)")
    compare.add_argument("--train-epochs", type=count(1), default=None, help="baseline epochs (default: per model)")
    compare.add_argument("--batch-size", type=count(1), default=64, help="batch size for latency")
    compare.add_argument("--exclude", type=_names, default=(), help="comma-separated layer names to keep dense")
    compare.add_argument("--round-to", type=_round_to, default="auto",
                         help="kept channels per layer a multiple of N; 'auto' times this model's "
                              "kernels to pick N for channel pruning; 'none' leaves counts as selected")
    compare.add_argument("--schedule", default="oneshot", choices=SCHEDULE_NAMES,
                         help="when pruning happens: oneshot (before fine-tuning), iterative (3 rounds) or agp "
                              "(gradual, cubic) or gradient (|grad| summed while training; methods gradient/taylor) "
                              "inside the first quarter of the fine-tuning budget; lottery (retrains from the "
                              "initialisation with rewinding, beside a random-reinitialisation control)")
    compare.add_argument("--tolerance", type=non_negative_float, default=None,
                         help="with --schedule iterative: keep raising sparsity while the validation accuracy "
                              "drop stays within this many points; reports the sparsity reached")
    compare.add_argument("--distill", action="store_true",
                         help="fine-tune with distillation from the dense model (soft targets + labels)")
    compare.add_argument("--out", default="runs/compare", help="folder for results.json")
    minilm = compare.add_argument_group("pretrained transformers (--model minilm): one-shot, no fine-tuning")
    minilm.add_argument("--pattern", default=None, help="N:M pattern for unstructured methods, e.g. 2:4")
    minilm.add_argument("--reconstruct", action="store_true",
                        help="neuron/head: refit the projection that reads removed units (least squares)")
    minilm.add_argument("--calibration-size", type=count(1), default=None, help="calibration paragraphs (default: 128)")
    minilm.add_argument("--eval-size", type=count(1), default=None, help="held-out paragraphs (default: 256)")
    minilm.add_argument("--calibration-text", default=None, metavar="FILE",
                        help="your calibration text, one paragraph per non-empty line")
    minilm.add_argument("--eval-text", default=None, metavar="FILE",
                        help="your held-out text, one paragraph per line (must not overlap the calibration)")
    minilm.add_argument("--time-unstructured", action="store_true",
                        help="also time unstructured runs (zeros do not speed up dense kernels)")


#: compare options only zoo models (trained, then fine-tuned) or only pretrained transformers use
_ZOO_ONLY = ("dataset", "finetune_epochs", "finetune_lr", "train_epochs", "batch_size", "exclude", "round_to",
             "schedule", "tolerance", "distill", "allocation", "budget", "cache_dir")
_TRANSFORMER_ONLY = ("pattern", "reconstruct", "calibration_size", "eval_size", "calibration_text", "eval_text",
                     "time_unstructured")


def _check_compare_args(compare: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options that do not apply to the model are refused (argparse exits 2), not ignored."""
    from prunekit.harness_transformers import TRANSFORMER_MODELS

    def given(dests: tuple[str, ...]) -> list[str]:
        return ["--" + dest.replace("_", "-") for dest in dests if getattr(args, dest) != compare.get_default(dest)]

    if args.model in TRANSFORMER_MODELS:
        if given(_ZOO_ONLY):
            compare.error(f"{', '.join(given(_ZOO_ONLY))}: not for --model {args.model}, which is pretrained and "
                          "pruned one-shot (no dataset, training or fine-tuning)")
        return
    if args.dataset is None:
        compare.error(f"--dataset is required for zoo model '{args.model}' (see 'prunekit list'); pretrained "
                      f"models that need none: {', '.join(TRANSFORMER_MODELS)}")
    if given(_TRANSFORMER_ONLY) or args.scope == "row":
        compare.error(f"{', '.join(given(_TRANSFORMER_ONLY)) or '--scope row'}: only for --model "
                      f"{' / '.join(TRANSFORMER_MODELS)}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for the ``prunekit`` command."""
    from prunekit.cli_results import add_merge_command, add_results_options  # --resume / --force / --shard, merge
    parser = CommandParser(prog="prunekit", description="Prune trained PyTorch models and measure the result.")
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    compare = commands.add_parser("compare", help="compare pruning methods on one model and dataset")
    _add_compare_arguments(compare)
    add_results_options(compare)
    compare.set_defaults(handler=_cmd_compare, check=lambda args: _check_compare_args(compare, args))

    demo = commands.add_parser("demo", help="a 2-minute comparison of the pruning families on bundled data")
    demo.add_argument("--out", default="runs/demo", help="folder for results.json")
    add_results_options(demo, shards=False)
    demo.set_defaults(handler=_cmd_demo)

    sensitivity = commands.add_parser("sensitivity", help="accuracy when each layer alone is pruned (no fine-tuning)")
    sensitivity.add_argument("--model", required=True, help="zoo model name, see 'prunekit list'")
    sensitivity.add_argument("--dataset", required=True, help="bundled dataset name, see 'prunekit list'")
    sensitivity.add_argument("--granularity", default="unstructured", choices=("unstructured", "channel", "neuron"),
                             help="what one layer loses")
    sensitivity.add_argument("--method", default=None, help="default: the granularity's usual criterion")
    sensitivity.add_argument("--sparsities", type=_floats, default=(0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
                             help="comma-separated sparsities in [0, 1) for each layer (0 is always added)")
    sensitivity.add_argument("--seed", type=count(0), default=0, help="which cached baseline")
    sensitivity.add_argument("--train-epochs", type=count(1), default=None, help="baseline epochs (default: per model)")
    sensitivity.add_argument("--out", default="runs/sensitivity", help="folder for sensitivity.json and .png")
    sensitivity.set_defaults(handler=_cmd_sensitivity)

    for sub in (compare, demo, sensitivity):
        sub.add_argument("--cache-dir", default=None, help="where trained baselines are cached")
        sub.add_argument("--no-progress", action="store_true", help="hide progress bars")

    commands.add_parser("methods", help="list pruning methods").set_defaults(handler=_cmd_methods)
    commands.add_parser("list", help="list bundled models and datasets").set_defaults(handler=_cmd_list)
    info = commands.add_parser("info", help="summarise a saved checkpoint")
    info.add_argument("checkpoint", help="a file saved by prunekit.save_checkpoint, or a cached baseline")
    info.add_argument("--trust-factory", action="store_true",
                      help="allow a checkpoint whose model is built by a factory function (not an nn.Module class)")
    info.set_defaults(handler=_cmd_info)
    __import__("prunekit.cli_deploy").cli_deploy.add_deploy_commands(commands)  # export, compress
    add_merge_command(commands)
    __import__("prunekit.cli_prune").cli_prune.add_prune_command(commands)  # prune: recipes, your own model
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunekit`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if getattr(args, "no_progress", True) is False and not sys.stderr.isatty():
        args.no_progress = True  # output captured to a file or pipe: no progress-bar noise in the log
    if getattr(args, "check", None) is not None:
        args.check(args)
    try:
        args.handler(args)
    except PrunekitError as error:
        print(f"prunekit: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
