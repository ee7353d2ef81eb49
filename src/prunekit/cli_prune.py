"""``prunekit prune``: run a recipe on a model from the command line and save the result as data.

    prunekit prune --model resnet20 --data mnist5k --recipe recipes/resnet20_channels.yaml --out pruned.pt
    prunekit prune --model mymodels:build --model-args '{"width": 8}' --weights trained.pt \\
        --data mydata:loaders --recipe hybrid:l1@0.5+magnitude@0.8 --out pruned.pt
    prunekit info pruned.pt            # what each stage did, per layer

Part of the command line (``prunekit.cli`` registers it with ``add_prune_command``): it reads
arguments and prints; the work is ``prunekit.model_sources``, ``prunekit.recipe_yaml`` and
``prunekit.recipes``.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from pathlib import Path
from typing import Any

from prunekit.errors import PrunekitError


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise PrunekitError(f"--model-args is not valid JSON ({error.msg} at character {error.pos}); give an object "
                            """such as '{"width": 8}'""") from None
    if not isinstance(value, dict):
        raise PrunekitError(f"--model-args must be a JSON object of keyword arguments such as '{{\"width\": 8}}'; "
                            f"got a {type(value).__name__}")
    return value


def _recipe_arg(text: str):
    """A Recipe from a YAML file, or the method spec text (built once the model is known)."""
    from prunekit.methods import parse_method_spec
    from prunekit.recipe_yaml import load_recipe

    if Path(text).suffix in (".yaml", ".yml") or Path(text).exists():
        return load_recipe(text)
    try:
        parse_method_spec(text)
    except PrunekitError as error:
        raise PrunekitError(f"--recipe '{text}' is neither a YAML recipe file (.yaml) nor a method spec such as "
                            f"hybrid:l1@0.5+magnitude@0.8 ({error})") from None
    return text


def _check_out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if out.is_dir():
        raise PrunekitError(f"--out '{out}' is a folder; give the path of the checkpoint file to write")
    for option, source in (("--model", args.model), ("--weights", getattr(args, "weights", None))):
        if source and out.exists() and Path(source).is_file() and os.path.samefile(out, source):
            raise PrunekitError(f"--out '{out}' is the {option} file being read; write the result to another file")
    if out.exists() and not args.overwrite:
        raise PrunekitError(f"--out '{out}' exists; pass --overwrite to replace it (it is replaced only once the new "
                            "checkpoint is complete)")
    return out


def _settings(args: argparse.Namespace, source, data):
    from dataclasses import replace

    from prunekit.recipes import TrainSettings

    progress = not args.no_progress
    if source.zoo_name is not None and data.bundled:
        settings = TrainSettings.for_zoo(source.zoo_name, data.name, progress=progress)
    else:
        settings = TrainSettings(progress=progress)
    return settings if args.lr is None else replace(settings, lr=args.lr)


def _show_stage(stage, total: int) -> None:
    accuracy = ""
    if stage.accuracy_after is not None:
        accuracy = f": val accuracy {100 * stage.accuracy_before:.2f}% -> {100 * stage.accuracy_after:.2f}%"
    print(f"  stage {stage.index}/{total} {stage.stage.label}{accuracy} ({stage.seconds:.1f} s)", flush=True)


def _meta(recipe, recipe_text: str, source, data, run, model) -> dict[str, Any]:
    from prunekit.training import evaluate

    stages = [stage.to_dict() for stage in run.stages]
    return {"model_source": source.description, "data": data.name,
            "accuracy_val": stages[-1]["accuracy_after"],
            "accuracy_test": evaluate(model, data.test) if data.test is not None else None,
            "recipe": {**recipe.to_dict(), "source": recipe.source or recipe_text}, "stages": stages}


def _cmd_prune(args: argparse.Namespace) -> None:
    from prunekit.checkpoint import save_checkpoint
    from prunekit.data import list_datasets
    from prunekit.model_sources import ModelOptions, import_callable, load_data, load_model
    from prunekit.recipe_record import format_stages
    from prunekit.recipes import recipe_from_spec, run_recipe
    from prunekit.training import default_train_config
    from prunekit.zoo import list_models

    out = _check_out(args)
    recipe = _recipe_arg(args.recipe)  # the whole recipe is checked before any model is loaded or trained
    options = ModelOptions(model_args=_json_object(args.model_args), weights=args.weights,
                           trust_pickle=args.trust_pickle, trust_factory=args.trust_factory, seed=args.seed,
                           train_epochs=args.train_epochs, cache_dir=args.cache_dir, progress=not args.no_progress)
    shift = 0
    if args.model in list_models() and args.data in list_datasets():
        shift = default_train_config(args.model, args.data).augment_shift  # the baseline's own augmentation
    data = load_data(args.data, seed=args.seed, augment_shift=shift)
    source = load_model(args.model, data, options)
    if isinstance(recipe, str):
        recipe = recipe_from_spec(recipe, model=source.model)
    if args.max_epochs is not None:
        recipe = recipe.capped(args.max_epochs)
    print(f"{source.description}; data {data.name}")
    print(f"recipe {recipe.source or args.recipe}: {len(recipe.stages)} stage(s){': ' if recipe.description else ''}"
          f"{recipe.description}", flush=True)
    run = run_recipe(recipe, source.model, data.train, data.val, settings=_settings(args, source, data),
                     on_stage=lambda stage: _show_stage(stage, len(recipe.stages)))
    record = source.record if run.shrink_record is None else (
        run.shrink_record if source.record is None else source.record + run.shrink_record)
    meta = _meta(recipe, args.recipe, source, data, run, source.model)
    path = save_checkpoint(out, source.model, source.arch, meta=meta, record=record, trust_factory=source.trust_factory)
    print()
    print(format_stages(meta["stages"]))
    if meta["accuracy_test"] is not None:
        print(f"test accuracy {100 * meta['accuracy_test']:.2f}%")
    names_function = ":" in source.arch.model and not isinstance(import_callable(source.arch.model, "model"), type)
    trust = " --trust-factory" if names_function else ""
    print(f"\nwritten {path} (prunekit info {path}{trust}; prunekit.load_checkpoint reads it without pickle)")


def print_recipe_meta(meta: dict[str, Any]) -> None:
    """``prunekit info``'s lines for a checkpoint's meta: plain entries as ``key: value``, a
    recipe's stages (``prunekit prune``) as what each stage did, per layer.

    >>> print_recipe_meta({"method": "magnitude", "recipe": {"source": "r.yaml", "stages": [{}]}})
      method: magnitude
      recipe: r.yaml, 1 stage(s)
    """
    from prunekit.recipe_record import format_stages

    for key, value in meta.items():
        if key not in ("recipe", "stages"):
            print(f"  {key}: {value}")
    recipe, stages = meta.get("recipe"), meta.get("stages")
    if isinstance(recipe, dict):
        about = f": {recipe['description']}" if recipe.get("description") else ""
        print(f"  recipe: {recipe.get('source')}, {len(recipe.get('stages', []))} stage(s){about}")
    if isinstance(stages, list) and stages:
        print(textwrap.indent(format_stages(stages), "  "))


def add_prune_command(commands) -> None:
    """Register ``prunekit prune`` on the ``prunekit`` parser's subcommands.

    >>> parser = argparse.ArgumentParser(prog="prunekit")
    >>> add_prune_command(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["prune", "--model", "lenet5", "--data", "digits", "--recipe", "r.yaml",
    ...                           "--out", "o.pt"])
    >>> args.model, args.trust_pickle
    ('lenet5', False)
    """
    from prunekit.cli_args import count, positive_float

    prune = commands.add_parser("prune", help="run a recipe on a model; save the result as a checkpoint",
                                description="Run a recipe (YAML stages, or a method spec) on a model and save the "
                                            "pruned model as a prunekit checkpoint (data, no pickle).")
    prune.add_argument("--model", required=True,
                       help="zoo name (its cached trained baseline), a prunekit checkpoint, 'package.module:factory' "
                            "(with --model-args), or a torch.save(model) file (needs --trust-pickle)")
    prune.add_argument("--recipe", required=True,
                       help="a YAML recipe (see recipes/), or a method spec such as hybrid:l1@0.5+magnitude@0.8")
    prune.add_argument("--data", required=True,
                       help="bundled dataset name, or 'module:function' returning (train_loader, val_loader"
                            "[, test_loader])")
    prune.add_argument("--out", required=True, help="the checkpoint file to write")
    prune.add_argument("--model-args", default=None, metavar="JSON", help="keyword arguments of the factory, e.g. "
                       """'{"width": 8}'""")
    prune.add_argument("--weights", default=None, metavar="FILE",
                       help="a state_dict (torch.save(model.state_dict(), FILE)) for a factory model; read "
                            "without pickle")
    prune.add_argument("--trust-pickle", action="store_true",
                       help="allow --model to be a pickled torch.save(model) file: unpickling runs any code the file "
                            "names, so only for files you trust")
    prune.add_argument("--trust-factory", action="store_true",
                       help="allow a checkpoint whose architecture is built by a factory function")
    prune.add_argument("--seed", type=count(0), default=0, help="zoo baseline seed and training-data order")
    prune.add_argument("--train-epochs", type=count(1), default=None, help="zoo baseline epochs (default: per model)")
    prune.add_argument("--max-epochs", type=count(1), default=None, help="cap every stage's epochs (a quick trial run)")
    prune.add_argument("--lr", type=positive_float, default=None,
                       help="fine-tuning learning rate of stages without their own lr (default: a zoo model's "
                            "fine-tuning rate, else 1e-3)")
    prune.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    prune.add_argument("--cache-dir", default=None, help="where trained baselines are cached")
    prune.add_argument("--no-progress", action="store_true", help="hide progress bars")
    prune.set_defaults(handler=_cmd_prune)


__all__ = ["add_prune_command", "print_recipe_meta"]
