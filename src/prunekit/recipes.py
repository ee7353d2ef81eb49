"""Run a recipe's stages in order on one model; every stage is checked against the model and the
data before the first one changes anything.

    recipe = load_recipe("recipes/resnet20_channels.yaml")      # or Recipe([PruneStage(...), ...])
    run = run_recipe(recipe, model, train_loader, val_loader)   # in place, like prunekit.prune
    run.stages[0].layers_before, run.stages[0].layers_after, run.shrink_record

A ``prune`` stage is ``prunekit.prune`` (structured units removed at once); a ``schedule`` stage
is a ``Pruner`` driven by ``prunekit.training.train`` through a ``PrunerCallback`` and then
released, so its masks stay (pruned weights stay zero) through later stages; ``finetune``
trains with the masks kept; ``finalize`` removes the structured units the schedule stages
masked and bakes every mask in. Distillation learns from a copy of the model taken before the
first stage. ``recipe_from_spec("hybrid:l1@0.5+magnitude@0.8")`` is the two-stage recipe of
``prunekit.hybrid.prune_hybrid``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.callbacks import PrunerCallback
from prunekit.errors import PrunekitError, unknown_name
from prunekit.granularity import get_granularity
from prunekit.graph.record import ShrinkRecord
from prunekit.hybrid import default_structured_granularity
from prunekit.loop_state import check_loop_schedule
from prunekit.masking import bake, copy_model
from prunekit.methods import parse_method_spec
from prunekit.one_shot import ONE_SHOT_METHODS
from prunekit.pruner import Pruner, prune, remove_masked_units
from prunekit.pruner_goal import default_scope, pattern_goal
from prunekit.recipe_record import StageResult, layer_states
from prunekit.recipe_schema import FieldError, FinalizeStage, FinetuneStage, PruneStage, Recipe, ScheduleStage
from prunekit.recovery import Distillation, finetune_lr, schedule_for
from prunekit.request import PruneOptions, PruneRequest, validate_request
from prunekit.schedules import OneShot, Schedule
from prunekit.targets import resolve_targets
from prunekit.training import default_train_config, evaluate, train
from prunekit.types import PruneResult

_OPTIMIZERS = ("adam", "sgd")
_LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainSettings:
    """How the training stages train when a stage says nothing else (a stage's ``lr`` wins).

    >>> TrainSettings.for_zoo("lenet300", "digits").lr
    0.01
    """

    lr: float = 1e-3
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    progress: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and self.lr > 0):
            raise PrunekitError(f"lr must be a number > 0; got {self.lr!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, _OPTIMIZERS)
        if self.lr_schedule not in _LR_SCHEDULES:
            raise unknown_name("lr_schedule", self.lr_schedule, _LR_SCHEDULES)

    @classmethod
    def for_zoo(cls, model_name: str, dataset_name: str = "mnist5k", progress: bool = False) -> TrainSettings:
        """A zoo model's training recipe at its fine-tuning rate (``prunekit.recovery.finetune_lr``)."""
        config = default_train_config(model_name, dataset_name)
        return cls(finetune_lr(model_name, config.lr), config.optimizer, config.lr_schedule, config.weight_decay,
                   progress)


@dataclass
class RecipeResult:
    """What a run did: one ``StageResult`` per stage and the structural removals of all of them
    (``shrink_record``, None when no unit was removed), to save with ``save_checkpoint``."""

    stages: list[StageResult]
    shrink_record: ShrinkRecord | None = None


@dataclass
class _Run:
    """What the stages of one run share."""

    model: nn.Module
    train_loader: Iterable | None
    val_loader: Iterable | None
    example_inputs: object
    settings: TrainSettings
    seed: int
    teacher: nn.Module | None = None
    pending: list[str] = field(default_factory=list)  # granularities whose units schedule stages masked

    def data_for(self, needs: str | None) -> Iterable | None:
        """The loss when units are removed is measured on held-out data, everything else on training data."""
        if needs == "removal-loss" and self.val_loader is not None:
            return self.val_loader
        return self.train_loader


def _steps_per_epoch(loader: Iterable | None, what: str) -> int:
    try:
        steps = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise PrunekitError(f"{what} trains, so it needs a training loader with a length (a DataLoader); got "
                            f"{type(loader).__name__}") from None
    if steps < 1:
        raise PrunekitError(f"{what} trains, but the training loader yields no batches; pass a non-empty one")
    return steps


def _schedule(stage: ScheduleStage, steps_per_epoch: int) -> Schedule:
    name = "agp" if stage.schedule == "polynomial" else stage.schedule
    return schedule_for(name, stage.epochs * steps_per_epoch, stage.pruning_share, stage.rounds)


def _target_request(target: PruneStage, schedule: Schedule | None, seed: int) -> PruneRequest:
    """The request a prune / schedule stage makes, with the defaults ``Pruner`` would fill in."""
    options = PruneOptions(exclude=target.exclude, seed=seed, round_to=target.round_to,
                           num_batches=target.num_batches, pattern=target.pattern)
    method = target.method or (schedule.default_method if schedule is not None else None) or \
        get_granularity(target.granularity).default_method
    scope = target.scope or default_scope(method, target.granularity, options)
    sparsity = pattern_goal(schedule or OneShot(), target.granularity, options, target.sparsity, None)
    return PruneRequest(method, target.granularity, scope, sparsity, None, options)


def _check_stage(stage, run: _Run) -> None:
    """Everything about one stage that can be known before any stage runs."""
    if isinstance(stage, (ScheduleStage, FinetuneStage)) and stage.epochs > 0:
        steps = _steps_per_epoch(run.train_loader, f"a {stage.kind} stage")
    if not isinstance(stage, (PruneStage, ScheduleStage)):
        return
    target = stage if isinstance(stage, PruneStage) else stage.prune
    schedule = _schedule(stage, steps) if isinstance(stage, ScheduleStage) else None
    if target.method in ONE_SHOT_METHODS:
        if run.train_loader is None:
            raise PrunekitError(f"method '{target.method}' calibrates on data: pass a training loader")
        return
    request = _target_request(target, schedule, run.seed)
    granularity = get_granularity(target.granularity)
    needs = granularity.criterion(request.method).needs
    gradients = schedule is not None and schedule.accumulates_gradients
    validate_request(request, run.data_for(needs), run.example_inputs, gradients_from_loop=gradients)
    check_loop_schedule(request.method, needs, schedule)
    resolve_targets(run.model, target.exclude)  # an excluded name the model lacks


def _check_recipe(recipe: Recipe, run: _Run) -> None:
    """Refuse, before anything runs, a stage that cannot run on this model and data."""
    for index, stage in enumerate(recipe.stages, start=1):
        try:
            _check_stage(stage, run)
        except PrunekitError as error:
            where = f"{recipe.source}, " if recipe.source else ""
            raise PrunekitError(f"{where}stage {index} ({stage.label}): {error}. Nothing was run; the model is "
                                "unchanged") from error


def _distillation(stage, run: _Run) -> Distillation | None:
    if stage.distill is None:
        return None
    return Distillation(run.teacher, stage.distill.temperature, stage.distill.alpha)


def _train(run: _Run, stage, callbacks: list) -> None:
    settings = run.settings
    train(run.model, run.train_loader, stage.epochs, lr=stage.lr if stage.lr is not None else settings.lr,
          optimizer=settings.optimizer, weight_decay=settings.weight_decay, lr_schedule=settings.lr_schedule,
          seed=run.seed, progress=settings.progress, loss_fn=_distillation(stage, run), callbacks=callbacks)


def _run_prune(stage: PruneStage, run: _Run) -> PruneResult:
    needs = None if stage.method in ONE_SHOT_METHODS else \
        get_granularity(stage.granularity).criterion(_target_request(stage, None, run.seed).method).needs
    return prune(run.model, stage.method, stage.sparsity, stage.granularity, stage.scope,
                 data=run.data_for(needs), example_inputs=run.example_inputs, exclude=stage.exclude, seed=run.seed,
                 num_batches=stage.num_batches, round_to=stage.round_to, pattern=stage.pattern)


def _run_schedule(stage: ScheduleStage, run: _Run) -> PruneResult | None:
    target = stage.prune
    schedule = _schedule(stage, _steps_per_epoch(run.train_loader, "a schedule stage"))
    needs = get_granularity(target.granularity).criterion(_target_request(target, schedule, run.seed).method).needs
    pruner = Pruner(run.model, target.method, target.sparsity, granularity=target.granularity, scope=target.scope,
                    schedule=schedule, data=run.data_for(needs), example_inputs=run.example_inputs,
                    exclude=target.exclude, seed=run.seed, round_to=target.round_to, num_batches=target.num_batches)
    try:
        _train(run, stage, [PrunerCallback(pruner)])
        if not pruner.done:
            raise PrunekitError(f"schedule '{stage.schedule}' did not finish pruning within {stage.epochs} epoch(s); "
                                "give more epochs or a smaller pruning_share")
    finally:
        pruner.release()  # its masks stay, owned by nobody: later stages keep them or prune further
    if get_granularity(target.granularity).removable:
        run.pending.append(target.granularity)
    return pruner.last_result


def _run_finetune(stage: FinetuneStage, run: _Run) -> None:
    if stage.epochs > 0:
        _train(run, stage, [])


def _run_finalize(stage: FinalizeStage, run: _Run) -> ShrinkRecord | None:
    record = None
    for granularity in dict.fromkeys(run.pending):
        removed = remove_masked_units(run.model, granularity, run.example_inputs)
        record = removed if record is None else record + removed
    run.pending.clear()
    bake(run.model)
    return record


def _run_stage(stage, run: _Run) -> tuple[PruneResult | None, ShrinkRecord | None]:
    if isinstance(stage, PruneStage):
        result = _run_prune(stage, run)
        return result, result.shrink_record
    if isinstance(stage, ScheduleStage):
        return _run_schedule(stage, run), None
    if isinstance(stage, FinetuneStage):
        return _run_finetune(stage, run), None
    return None, _run_finalize(stage, run)


def _example_inputs(loaders: tuple[Iterable | None, ...]) -> object:
    """The inputs of the first batch (two examples) of the first loader given: the validation
    loader first, because drawing a batch from a shuffled loader moves its generator on."""
    for loader in loaders:
        if loader is None:
            continue
        batch = next(iter(loader), None)
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
            return batch[0][:2]
    return None


def _accuracy(run: _Run) -> float | None:
    return evaluate(run.model, run.val_loader) if run.val_loader is not None else None


def run_recipe(recipe: Recipe, model: nn.Module, train_loader: Iterable | None, val_loader: Iterable | None = None,
               *, example_inputs: object = None, settings: TrainSettings | None = None,
               on_stage: Callable[[StageResult], None] | None = None) -> RecipeResult:
    """Run `recipe` on `model` in place; returns what every stage did.

    Batches are ``(inputs, targets)``; training stages fine-tune on `train_loader` with
    cross-entropy (or distillation) as `settings` say; data-driven criteria read it too (removal
    loss reads `val_loader`). With `val_loader` each stage records top-1 accuracy before and
    after. `example_inputs` (for tracing structured pruning) default to the first two inputs of
    `val_loader`, else of `train_loader`. Every stage is checked against the model and the data
    first (methods, data and example inputs they need, excluded layer names); a
    stage that fails while it runs (e.g. training diverges) leaves the model as the stages
    before it left it. `on_stage` hears each ``StageResult`` as it completes.

    >>> from prunekit.recipe_schema import FinalizeStage, PruneStage, Recipe
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> recipe = Recipe([PruneStage("l1", "neuron", 0.5), PruneStage("magnitude", sparsity=0.5), FinalizeStage()])
    >>> run = run_recipe(recipe, model, None, example_inputs=torch.zeros(2, 8))
    >>> [stage.layers_after["0"] for stage in run.stages][:2], model[0].out_features
    ([{'units': 4, 'params': 32, 'nonzero': 32}, {'units': 4, 'params': 32, 'nonzero': 16}], 4)
    """
    if not isinstance(recipe, Recipe):
        raise PrunekitError(f"recipe must be a prunekit Recipe (load_recipe(path) or Recipe([...])); got "
                            f"{type(recipe).__name__}")
    if not isinstance(model, nn.Module):
        raise PrunekitError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if example_inputs is None:
        example_inputs = _example_inputs((val_loader, train_loader))
    run = _Run(model, train_loader, val_loader, example_inputs, settings or TrainSettings(), recipe.seed)
    _check_recipe(recipe, run)
    if any(getattr(stage, "distill", None) is not None for stage in recipe.stages):
        run.teacher = copy_model(model).eval()
    results, record = [], None
    accuracy = _accuracy(run)
    for index, stage in enumerate(recipe.stages, start=1):
        before, start = layer_states(model), time.perf_counter()
        result, removed = _run_stage(stage, run)
        if removed is not None and removed.steps:
            record = removed if record is None else record + removed
        accuracy_after = _accuracy(run)
        stage_result = StageResult(index, stage, result, accuracy, accuracy_after, before, layer_states(model),
                                   time.perf_counter() - start)
        results.append(stage_result)
        accuracy = accuracy_after
        if on_stage is not None:
            on_stage(stage_result)
    return RecipeResult(results, record)


def recipe_from_spec(spec: str, *, model: nn.Module | None = None, granularity: str | None = None,
                     scope: str | None = None) -> Recipe:
    """The recipe of a method spec: ``"channel:l1@0.5"`` is one prune stage; ``"hybrid:l1@0.5+magnitude@0.8"``
    two (units by l1, then weights by magnitude, both in `scope`, ``"global"`` by default, as
    ``prune_hybrid``). The hybrid's unit `granularity` defaults to channels for models with
    convolutions, else neurons (``prunekit.hybrid.default_structured_granularity(model)``).

    >>> [stage.label for stage in recipe_from_spec("hybrid:l1@0.5+magnitude@0.8", granularity="neuron").stages]
    ['neuron:l1 50%', 'unstructured:magnitude 80%']
    """
    parsed = parse_method_spec(spec)
    try:
        if parsed.granularity != "hybrid":
            if parsed.sparsity is None:
                raise PrunekitError(f"'{spec}' names no sparsity; write it as '{spec}@0.9'")
            stages = (PruneStage(parsed.method, parsed.granularity, parsed.sparsity, scope),)
        else:
            if parsed.weight_sparsity is None:
                raise PrunekitError(f"'{spec}' names no weight sparsity; write it as '{spec}@0.8'")
            if granularity is None and model is None:
                raise PrunekitError(f"'{spec}': pass granularity= (e.g. 'channel') or the model, whose layers decide")
            unit_granularity = granularity or default_structured_granularity(model)
            stages = (PruneStage(parsed.method, unit_granularity, parsed.sparsity, scope or "global"),
                      PruneStage(parsed.weight_method, "unstructured", parsed.weight_sparsity, scope or "global"))
    except FieldError as error:
        raise PrunekitError(f"method spec '{spec}': {error.message}") from None
    return Recipe(stages, description=f"method spec {spec}")


__all__ = ["RecipeResult", "TrainSettings", "recipe_from_spec", "run_recipe"]
