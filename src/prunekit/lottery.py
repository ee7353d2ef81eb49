"""Lottery tickets on a zoo model: iterative magnitude pruning with rewinding from the original
training, and the random-reinitialisation control beside it (Frankle & Carbin 2019).

One run trains the *untrained* model (the same initial weights as its cached baseline) for
``rounds + 1`` rounds of the model's training recipe; a ``Lottery`` schedule prunes at the end of
each of the first `rounds` rounds and puts the survivors back to their values after
`rewind_step` optimiser steps, and every round starts a fresh optimiser (and learning-rate
schedule), as the method prescribes. The control takes the ticket's final masks onto freshly drawn
weights and trains them for one round: if the ticket beats it, the initial weights mattered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.callbacks import PrunerCallback, TrainCallback
from prunekit.data import load_dataset, make_loader
from prunekit.errors import PrunekitError
from prunekit.masking import apply_masks, get_masks
from prunekit.pruner import Pruner, finalize
from prunekit.recovery import PruningWatch
from prunekit.schedules import Lottery
from prunekit.state import seeded_rng
from prunekit.training import default_train_config, evaluate, train
from prunekit.types import PruneResult
from prunekit.zoo import build_model

#: Frankle & Carbin prune 20% of the remaining weights per round
RATE_PER_ROUND = 0.2
#: the control's weights are drawn with the run's seed plus this offset
CONTROL_SEED_OFFSET = 1000


@dataclass
class LotterySettings:
    """One lottery run: what to prune, how far, and how long each round trains."""

    model: str
    dataset: str
    method: str = "magnitude"
    granularity: str = "unstructured"
    scope: str = "global"
    sparsity: float = 0.8
    seed: int = 0
    rounds: int | None = None  # None: enough rounds of RATE_PER_ROUND to reach `sparsity`
    epochs_per_round: int | None = None  # None: the model's training recipe
    rewind_step: int = 0  # optimiser steps into the original training (0: the initialisation)
    controls_at: tuple[float, ...] = ()  # also train controls with the masks of these (reached) sparsities
    progress: bool = False


@dataclass
class LotteryOutcome:
    """The ticket and the control (both finalised), and the ticket's accuracy after each round."""

    ticket: nn.Module
    control: nn.Module
    result: PruneResult
    watch: PruningWatch
    rounds: list[dict] = field(default_factory=list)  # {"sparsity", "accuracy"} after each round's training
    control_accuracy: float = 0.0
    epochs_spent: int = 0
    epochs_per_round: int = 0
    controls: list[dict] = field(default_factory=list)  # {"sparsity", "ticket", "control"} for `controls_at`


def rounds_for(sparsity: float, rate: float = RATE_PER_ROUND) -> int:
    """Rounds of pruning `rate` of what is left needed to reach `sparsity`.

    >>> rounds_for(0.8), rounds_for(0.93)
    (8, 12)
    """
    return max(1, math.ceil(math.log(1.0 - sparsity) / math.log(1.0 - rate) - 1e-9))


class _BeforePruning(TrainCallback):
    """Evaluates just before each pruning (after that round's training): the ticket at the
    sparsity the round trained at."""

    def __init__(self, pruner: Pruner, measure) -> None:
        self.pruner, self.measure, self.seen = pruner, measure, []

    def on_step(self, step: int) -> None:
        if self.pruner.schedule.prunes_at(self.pruner.step_count):
            self.seen.append({"sparsity": self.pruner.sparsity.achieved, "accuracy": self.measure(),
                              "masks": {name: mask.clone() for name, mask in get_masks(self.pruner.model).items()}})


def run_lottery(settings: LotterySettings, example_inputs: torch.Tensor | None = None) -> LotteryOutcome:
    """Find a ticket as `settings` say and train its random-reinitialisation control.

    >>> outcome = run_lottery(LotterySettings("lenet300", "digits", sparsity=0.5, rounds=1,
    ...                                       epochs_per_round=1))  # doctest: +SKIP
    """
    if not 0.0 < settings.sparsity < 1.0:
        raise PrunekitError(f"a lottery run needs a sparsity in (0, 1); got {settings.sparsity}")
    splits = load_dataset(settings.dataset)
    recipe = default_train_config(settings.model, settings.dataset)
    epochs = recipe.epochs if settings.epochs_per_round is None else settings.epochs_per_round
    rounds = rounds_for(settings.sparsity) if settings.rounds is None else settings.rounds
    loader = make_loader(splits.train, recipe.batch_size, shuffle=True, seed=settings.seed,
                         augment_shift=recipe.augment_shift)
    test_loader = make_loader(splits.test, batch_size=256, shuffle=False)
    with seeded_rng(settings.seed):  # the initial weights of the seed's cached baseline
        model = build_model(settings.model, splits.input_shape, splits.num_classes)
    schedule = Lottery(levels=rounds, every=epochs * len(loader), rewind_step=settings.rewind_step)
    pruner = Pruner(model, settings.method, settings.sparsity, granularity=settings.granularity,
                    scope=settings.scope, schedule=schedule, example_inputs=example_inputs, data=loader,
                    seed=settings.seed)
    before = _BeforePruning(pruner, lambda: evaluate(model, test_loader))
    watch = PruningWatch([pruner], lambda: evaluate(model, test_loader))

    def one_round(target: nn.Module, callbacks: list, round_seed: int) -> None:
        # a fresh optimiser and learning-rate schedule each round: a rewound ticket starts over
        train(target, loader, epochs, lr=recipe.lr, optimizer=recipe.optimizer, weight_decay=recipe.weight_decay,
              lr_schedule=recipe.lr_schedule, seed=round_seed, progress=settings.progress, callbacks=callbacks)

    for round_index in range(rounds + 1):
        one_round(model, [before, PrunerCallback(pruner), watch], settings.seed + round_index)
    final_masks = {name: mask.clone() for name, mask in get_masks(model).items()}
    result = pruner.last_result
    pruner.finalize()
    seen = [*before.seen[1:], {"sparsity": result.sparsity_achieved, "accuracy": evaluate(model, test_loader),
                               "masks": final_masks}]  # the ticket after training at each pruned sparsity

    def control_with(masks: dict) -> tuple[nn.Module, float]:
        with seeded_rng(settings.seed + CONTROL_SEED_OFFSET):  # fresh weights, the ticket's masks
            control = build_model(settings.model, splits.input_shape, splits.num_classes)
        apply_masks(control, masks)
        one_round(control, [], settings.seed + rounds)
        structured = settings.granularity != "unstructured"
        finalize(control, settings.granularity if structured else None, example_inputs)
        return control, evaluate(control, test_loader)

    controls = []
    for wanted in settings.controls_at:
        level = next((entry for entry in seen if entry["sparsity"] >= wanted - 1e-9), seen[-1])
        controls.append({"sparsity": level["sparsity"], "ticket": level["accuracy"],
                         "control": control_with(level["masks"])[1]})
    control, control_accuracy = control_with(final_masks)
    return LotteryOutcome(
        ticket=model, control=control, result=result, watch=watch,
        rounds=[{key: entry[key] for key in ("sparsity", "accuracy")} for entry in [before.seen[0], *seen]],
        control_accuracy=control_accuracy, epochs_spent=epochs * (rounds + 1), epochs_per_round=epochs,
        controls=controls,
    )
