"""The comparison runs that are not "prune a copy of the baseline, then fine-tune": lottery
tickets (retrained from the initialisation, beside their random-reinitialisation control) and
the sparsity search (raise sparsity while the validation drop stays within a tolerance).

``prunekit.harness`` calls these with a `record(model, result, fields)` function that measures
a finished model the way every other run is measured, so all rows of a comparison share one format.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.granularity import get_granularity
from prunekit.lottery import LotterySettings, run_lottery
from prunekit.pruner import finalize
from prunekit.search import search_sparsity
from prunekit.training import evaluate

Record = Callable[[nn.Module, object, dict], dict]

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
    if found.result is None:
        raise PrunekitError("the sparsity search accepted no level")  # search_sparsity raises first
    model = found.model
    finalize(model, spec.granularity if granularity.removable else None, needs_example)
    levels = len(found.history)
    return {**record(model, found.result, {
        "sparsity_reached": found.sparsity, "search": found.history, "tolerance": config.tolerance,
        "epochs_spent": config.finetune_epochs * levels, "accuracy_pruned": None, "prune_seconds": None,
    }), "sparsity_target": found.sparsity}
