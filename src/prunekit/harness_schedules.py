"""The comparison runs that are not "prune a copy of the baseline, then fine-tune": lottery
tickets (retrained from the initialisation, beside their random-reinitialisation control), the
sparsity search (raise sparsity while the validation drop stays within a tolerance) and pruning
at initialisation (SNIP, SynFlow: prune the untrained model, then train it).

``prunekit.harness`` calls these with a `record(model, result, fields)` function that measures
a finished model the way every other run is measured, so all rows of a comparison share one format.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

from torch import nn

from prunekit.data import load_dataset, make_loader
from prunekit.errors import PrunekitError, unknown_name
from prunekit.granularity import get_granularity
from prunekit.harness_movement import check_movement
from prunekit.layers.init_bounds import AT_INITIALISATION
from prunekit.lottery import LotterySettings, run_lottery
from prunekit.recovery import SCHEDULE_NAMES
from prunekit.regularizers import PENALTY_METHODS
from prunekit.pruner import Pruner, finalize
from prunekit.schedules import Iterative, OneShot
from prunekit.search import search_sparsity
from prunekit.state import seeded_rng
from prunekit.training import default_train_config, evaluate, train
from prunekit.zoo import build_model

Record = Callable[[nn.Module, object, dict], dict]


def check_schedule(config, specs) -> None:
    """Refuse, before any training, a schedule the methods or the budget cannot run."""
    if config.schedule not in SCHEDULE_NAMES:
        raise unknown_name("schedule", config.schedule, SCHEDULE_NAMES)
    check_movement(config, specs)
    if config.tolerance is not None and (config.schedule != "iterative" or not config.tolerance >= 0):
        raise PrunekitError(f"--tolerance {config.tolerance} asks for the sparsity search: use it with --schedule "
                            "iterative and a tolerance >= 0 (points of accuracy)")
    penalised = [spec.label for spec in specs if spec.method in PENALTY_METHODS]
    if penalised and (config.budget is not None or config.allocation is not None or config.finetune_epochs < 2):
        raise PrunekitError(f"{penalised[0]} trains with its penalty for half the fine-tuning budget, then prunes to "
                            "--sparsity: give --finetune-epochs >= 2, and no --budget or --allocation")
    at_init = [spec.label for spec in specs if spec.method in AT_INITIALISATION]
    if at_init and config.distill:
        raise PrunekitError(f"{at_init[0]} prunes the untrained model and trains it from scratch, with no dense "
                            "teacher to distill from; drop --distill")
    if config.schedule == "oneshot":
        return
    _check_schedule_options(config)
    if config.schedule != "lottery" and config.tolerance is None and config.finetune_epochs < 1:
        raise PrunekitError(f"schedule '{config.schedule}' prunes during fine-tuning; give --finetune-epochs >= 1")
    for spec in specs:
        if spec.method in PENALTY_METHODS:
            raise PrunekitError(f"'{spec.label}' trains with its penalty and prunes half way through the fine-tuning "
                                "budget; it runs with --schedule oneshot only")
        if spec.method in AT_INITIALISATION:
            raise PrunekitError(f"'{spec.label}' prunes at initialisation and then trains for the baseline's "
                                f"epochs plus the fine-tuning budget; it runs with --schedule oneshot only")
        if spec.granularity == "hybrid":
            raise PrunekitError(f"'{spec.label}' is a two-stage recipe pruned once; run hybrid methods with "
                                "--schedule oneshot")
        if config.schedule == "gradient" and (spec.granularity != "unstructured"
                                              or spec.method not in ("gradient", "taylor")):
            raise PrunekitError(f"schedule 'gradient' prunes weights by the |gradient| summed while training: use "
                                f"--methods gradient (or taylor), unstructured; got '{spec.label}'")


def _check_schedule_options(config) -> None:
    """Settings a lottery run, the sparsity search or the gradient schedule would silently ignore."""
    kind = ("--schedule lottery" if config.schedule == "lottery" else "--tolerance (the sparsity search)"
            if config.tolerance is not None else f"--schedule {config.schedule}")
    if (config.schedule == "lottery" or config.tolerance is not None or config.schedule == "gradient") and (
            config.budget is not None or config.allocation is not None):
        raise PrunekitError(f"{kind} chooses its own sparsities; it does not take --budget or --allocation")
    if config.schedule == "lottery" and config.distill:
        raise PrunekitError("--schedule lottery trains from the initialisation, with no dense teacher to distill "
                            "from; drop --distill")
    if config.tolerance is not None and not all(0.0 < sparsity < 1.0 for sparsity in config.sparsities):
        raise PrunekitError(f"with --tolerance, --sparsity is where the search starts: a value in (0, 1); got "
                            f"{config.sparsities}")


#: each level of the harness's sparsity search removes this share of the weights left
SEARCH_RATE = 0.3


def lottery_runs(config, spec, sparsity: float, seed: int, example, record: Record) -> list[dict]:
    """The ticket found by iterative magnitude pruning with rewinding to the initialisation, and
    its control: the same masks on freshly drawn weights, trained for one round."""
    # each round is the original training: the baseline's epochs (`train_epochs`, else the recipe's)
    outcome = run_lottery(LotterySettings(config.model, config.dataset, spec.method, spec.granularity, config.scope,
                                          sparsity, seed, epochs_per_round=config.train_epochs,
                                          progress=config.progress), example)
    ticket = record(outcome.ticket, outcome.result, {
        "accuracy_pruned": outcome.watch.measured, "prune_seconds": outcome.watch.seconds,
        "epochs_spent": outcome.epochs_spent, "lottery_rounds": outcome.rounds,
    })
    control = record(outcome.control, outcome.result, {
        "schedule": "lottery-reinit", "accuracy_pruned": None, "prune_seconds": 0.0,
        "epochs_spent": outcome.epochs_per_round,
    })
    return [ticket, control]


def search_run(config, spec, start: float, seed: int, dense_model: nn.Module, loaders,
               fine_tune: Callable[[nn.Module, object], None], example, record: Record) -> dict:
    """Raise sparsity from `start` while the validation drop stays within ``config.tolerance``
    points, fine-tuning ``config.finetune_epochs`` after each level; the run at the last level
    that did (``sparsity_target`` is that level; ``search`` lists every level tried)."""
    train_loader, val_loader = loaders
    granularity = get_granularity(spec.granularity)
    needs = granularity.criterion(spec.method).needs  # removal loss on held-out data, as in every run
    needs_example = example if granularity.needs_example_inputs else None
    found = search_sparsity(copy.deepcopy(dense_model), lambda model: evaluate(model, val_loader),
                            method=spec.method, granularity=spec.granularity, scope=config.scope,
                            tolerance=config.tolerance, fine_tune=fine_tune, start=start, rate=SEARCH_RATE,
                            data=val_loader if needs == "removal-loss" else train_loader,
                            example_inputs=needs_example, exclude=config.exclude, seed=seed)
    model = found.model
    finalize(model, spec.granularity if granularity.removable else None, needs_example)
    levels = len(found.history)
    return {**record(model, found.result, {
        "sparsity_reached": found.sparsity, "search": found.history, "tolerance": config.tolerance,
        "epochs_spent": config.finetune_epochs * levels, "accuracy_pruned": None, "prune_seconds": None,
    }), "sparsity_target": found.sparsity}


#: SynFlow's pruning rounds at initialisation (Tanaka et al. 2020 use 100)
SYNFLOW_ROUNDS = 100


def at_init_run(config, spec, sparsity: float, seed: int, example, record: Record) -> dict:
    """Prune the seed's *untrained* model (the baseline's own initial weights) with an
    at-initialisation method, then train it for the baseline's epochs plus the fine-tuning
    budget: the same total training a prune-the-trained-model run gets. ``synflow`` prunes in
    ``SYNFLOW_ROUNDS`` rounds without data; ``snip`` once, on one training batch."""
    splits = load_dataset(config.dataset)
    recipe = default_train_config(config.model, config.dataset)
    loader = make_loader(splits.train, recipe.batch_size, shuffle=True, seed=seed, augment_shift=recipe.augment_shift)
    with seeded_rng(seed):  # the initial weights of the seed's cached baseline
        model = build_model(config.model, splits.input_shape, splits.num_classes)
    rounds = SYNFLOW_ROUNDS if spec.method == "synflow" else 1
    schedule = Iterative(levels=rounds, every=1) if rounds > 1 else OneShot()
    pruner = Pruner(model, spec.method, sparsity, granularity=spec.granularity, scope=config.scope,
                    schedule=schedule, data=loader, example_inputs=example, exclude=config.exclude, seed=seed,
                    num_batches=1)
    started = time.perf_counter()
    for _ in range(rounds):
        result = pruner.step()
    seconds = time.perf_counter() - started
    test_loader = make_loader(splits.test, batch_size=256, shuffle=False)
    accuracy_pruned = evaluate(model, test_loader)
    epochs = (config.train_epochs or recipe.epochs) + config.finetune_epochs
    train(model, loader, epochs, lr=recipe.lr, optimizer=recipe.optimizer, weight_decay=recipe.weight_decay,
          lr_schedule=recipe.lr_schedule, seed=seed, progress=config.progress)
    pruner.finalize()
    return record(model, result, {"accuracy_pruned": accuracy_pruned, "prune_seconds": seconds,
                                  "epochs_spent": epochs, "schedule": "at-initialisation", "finetune_lr": recipe.lr})
