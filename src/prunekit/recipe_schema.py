"""What a recipe may say: its stages as frozen dataclasses, each checked completely when built.

    PruneStage      prune once, as ``prunekit.prune`` does: method, granularity, sparsity, scope, ...
    ScheduleStage   a Pruner driven through fine-tuning epochs: what to prune (a PruneStage) +
                    schedule, epochs, lr, distill
    FinetuneStage   train with the masks kept: epochs, lr, distill
    FinalizeStage   remove the units that masks removed, bake every mask in
    Recipe          the stages in order, a description and the seed

A value that does not fit raises ``FieldError`` naming its key, so a recipe built in Python gets
exactly the checks a YAML file gets; ``prunekit.recipe_yaml`` adds the file and the line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from prunekit.errors import PrunekitError, unknown_name
from prunekit.granularity import GRANULARITIES, get_granularity
from prunekit.one_shot import ONE_SHOT_METHODS
from prunekit.recovery import PRUNING_SHARE, ROUNDS
from prunekit.select import SCOPES
from prunekit.select_rows import parse_pattern

#: ``schedule:`` names of a schedule stage ("polynomial" is "agp": Zhu & Gupta's cubic ramp)
RECIPE_SCHEDULES = ("oneshot", "iterative", "agp", "polynomial", "gradient")


class FieldError(PrunekitError):
    """A value of a stage (or of the recipe) that does not fit; `key` names it (``"distill.alpha"``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"key '{key}': {message}")
        self.key = key
        self.message = message


def _shown(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise FieldError(key, message)


def _int_at_least(key: str, value: object, minimum: int, example: str) -> None:
    _check(_is_int(value) and value >= minimum, key,
           f"must be an integer >= {minimum} ({example}); got {_shown(value)}")


def _optional_lr(lr: object) -> None:
    _check(lr is None or (_is_number(lr) and lr > 0), "lr",
           f"must be a learning rate > 0 such as 1e-3 (or left out for the model's default); got {_shown(lr)}")


def _names(key: str, value: object) -> tuple[str, ...]:
    """A tuple of layer names from a list (or one name)."""
    items = (value,) if isinstance(value, str) else value
    _check(isinstance(items, (list, tuple)) and all(isinstance(item, str) for item in items), key,
           f"must be a list of layer names such as [classifier]; got {_shown(value)}")
    return tuple(items)


@dataclass(frozen=True)
class Distill:
    """Distillation from the model as it was before the recipe's first stage (the dense teacher):
    ``alpha`` x softened KL at `temperature` + ``(1 - alpha)`` x cross-entropy (``prunekit.recovery``)."""

    temperature: float = 4.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        _check(_is_number(self.temperature) and self.temperature > 0, "distill.temperature",
               f"must be a number > 0 (1 = plain softmax; 2 to 8 are usual); got {_shown(self.temperature)}")
        _check(_is_number(self.alpha) and 0.0 <= self.alpha <= 1.0, "distill.alpha",
               f"is the weight of the teacher's soft targets: a number in [0, 1]; got {_shown(self.alpha)}")


def _distill(value: object) -> Distill | None:
    """``true`` / ``false`` / ``{temperature: .., alpha: ..}`` -> Distill or None."""
    if value is None or value is False:
        return None
    if value is True:
        return Distill()
    if isinstance(value, Distill):
        return value
    _check(isinstance(value, Mapping), "distill",
           f"must be true, false or a mapping such as {{temperature: 4, alpha: 0.5}}; got {_shown(value)}")
    known = [item.name for item in fields(Distill)]
    for key in value:
        if key not in known:
            raise FieldError(f"distill.{key}", str(unknown_name("distill setting", str(key), known)))
    return Distill(**value)


def _check_method(method: object, granularity: str) -> None:
    _check(method is None or isinstance(method, str), "method",
           f"must be a method name such as magnitude (see 'prunekit methods'); got {_shown(method)}")
    if method is None or method in ONE_SHOT_METHODS:
        return
    try:
        get_granularity(granularity).criterion(method)
    except PrunekitError as error:
        raise FieldError("method", str(error)) from None


def _check_pattern(stage: PruneStage) -> None:
    try:
        n, m = parse_pattern(stage.pattern)
    except PrunekitError as error:
        raise FieldError("pattern", str(error)) from None
    _check(stage.granularity == "unstructured", "pattern",
           f"N:M keeps single weights; it needs granularity unstructured, not {stage.granularity}")
    implied = 1.0 - n / m
    _check(stage.sparsity is None or math.isclose(stage.sparsity, implied, abs_tol=1e-9), "pattern",
           f"{stage.pattern} is {implied:.0%} sparsity, but sparsity says {stage.sparsity!r}: leave sparsity out")


@dataclass(frozen=True)
class PruneStage:
    """Prune once (``prunekit.prune``): structured units are removed at once, weights are masked.

    `method` defaults to the granularity's usual criterion; `sparsity` is the share of the
    granularity's units to remove (or give an N:M `pattern`); `scope` defaults as in ``prune``.

    >>> PruneStage("taylor", "channel", 0.3).label
    'channel:taylor 30%'
    >>> PruneStage("magnitude", sparsity=1.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunekit.recipe_schema.FieldError: key 'sparsity': must be a number in [0, 1) (0.3 removes 30% of the ...
    """

    kind: ClassVar[str] = "prune"
    method: str | None = None
    granularity: str = "unstructured"
    sparsity: float | None = None
    scope: str | None = None
    exclude: tuple[str, ...] = ()
    round_to: int | None = None
    num_batches: int = 8
    pattern: str | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.granularity, str), "granularity", f"must be a name; got {_shown(self.granularity)}")
        if self.granularity not in GRANULARITIES:
            raise FieldError("granularity", str(unknown_name("granularity", self.granularity, GRANULARITIES)))
        _check_method(self.method, self.granularity)
        unit = get_granularity(self.granularity).unit
        _check(self.sparsity is None or (_is_number(self.sparsity) and 0.0 <= self.sparsity < 1.0), "sparsity",
               f"must be a number in [0, 1) (0.3 removes 30% of the {unit}s); got {_shown(self.sparsity)}")
        _check(self.sparsity is not None or self.pattern is not None, "sparsity",
               f"is missing: the share of {unit}s to remove, e.g. sparsity: 0.5")
        if self.scope is not None and self.scope not in SCOPES:
            raise FieldError("scope", str(unknown_name("scope", str(self.scope), SCOPES)))
        object.__setattr__(self, "exclude", _names("exclude", self.exclude))
        if self.round_to is not None:
            _int_at_least("round_to", self.round_to, 1, "kept units per layer a multiple of it, e.g. 8")
            _check(get_granularity(self.granularity).supports_round_to, "round_to",
                   f"rounds unit counts inside a layer; granularity {self.granularity} has none")
        _int_at_least("num_batches", self.num_batches, 1, "batches of data for data-driven methods")
        if self.pattern is not None:
            _check_pattern(self)

    @property
    def label(self) -> str:
        """``granularity:method sparsity`` as people write it."""
        method = self.method or get_granularity(self.granularity).default_method
        amount = self.pattern if self.pattern is not None else f"{self.sparsity:.0%}"
        return f"{self.granularity}:{method} {amount}"

    def to_dict(self) -> dict[str, Any]:
        """The stage as a recipe file writes it (every key, plain values)."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        return {"type": self.kind, **values, "exclude": list(self.exclude)}


@dataclass(frozen=True)
class ScheduleStage:
    """Prune while fine-tuning: a Pruner of `prune`'s target driven by ``train`` for `epochs`.

    `schedule` is ``oneshot``, ``iterative`` (`rounds` prunings), ``agp`` / ``polynomial`` (cubic
    ramp) or ``gradient``; gradual ones prune during the first `pruning_share` of the steps and
    recover during the rest (``prunekit.recovery.schedule_for``). Structured units stay masked
    until a ``finalize`` stage removes them. `lr` defaults to the run's fine-tuning rate.

    >>> ScheduleStage(PruneStage("magnitude", sparsity=0.8), epochs=3, distill=True).label
    'schedule agp to unstructured:magnitude 80% over 3 epoch(s), distilled'
    """

    kind: ClassVar[str] = "schedule"
    prune: PruneStage
    schedule: str = "agp"
    epochs: int = 1
    lr: float | None = None
    distill: Distill | bool | None = None
    pruning_share: float = PRUNING_SHARE
    rounds: int = ROUNDS

    def __post_init__(self) -> None:
        _check(isinstance(self.prune, PruneStage), "prune", f"must be a PruneStage (what to prune); got "
                                                            f"{_shown(self.prune)}")
        _check(self.prune.pattern is None, "pattern", "an N:M pattern prunes once, to exactly its pattern: "
                                                      "use a prune stage")
        _check(isinstance(self.schedule, str), "schedule", f"must be a name; got {_shown(self.schedule)}")
        if self.schedule not in RECIPE_SCHEDULES:
            raise FieldError("schedule", str(unknown_name("schedule", self.schedule, RECIPE_SCHEDULES)))
        _int_at_least("epochs", self.epochs, 1, "the fine-tuning epochs the schedule prunes within")
        _optional_lr(self.lr)
        object.__setattr__(self, "distill", _distill(self.distill))
        _check(_is_number(self.pruning_share) and 0.0 < self.pruning_share <= 1.0, "pruning_share",
               f"is the share of the steps gradual schedules prune in: a number in (0, 1]; "
               f"got {_shown(self.pruning_share)}")
        _int_at_least("rounds", self.rounds, 1, "prunings of the iterative schedule")

    @property
    def label(self) -> str:
        distilled = ", distilled" if self.distill is not None else ""
        return f"schedule {self.schedule} to {self.prune.label} over {self.epochs} epoch(s){distilled}"

    def to_dict(self) -> dict[str, Any]:
        values = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "prune"}
        prune = {key: value for key, value in self.prune.to_dict().items() if key not in ("type", "pattern")}
        return {"type": self.kind, **prune, **values, "distill": _distill_dict(self.distill)}


@dataclass(frozen=True)
class FinetuneStage:
    """Train for `epochs` with every mask kept (pruned weights stay zero).

    >>> FinetuneStage(2, distill={"temperature": 2}).distill
    Distill(temperature=2, alpha=0.5)
    """

    kind: ClassVar[str] = "finetune"
    epochs: int = 1
    lr: float | None = None
    distill: Distill | bool | None = None

    def __post_init__(self) -> None:
        _int_at_least("epochs", self.epochs, 0, "training epochs")
        _optional_lr(self.lr)
        object.__setattr__(self, "distill", _distill(self.distill))

    @property
    def label(self) -> str:
        return f"finetune {self.epochs} epoch(s){', distilled' if self.distill is not None else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "epochs": self.epochs, "lr": self.lr, "distill": _distill_dict(self.distill)}


@dataclass(frozen=True)
class FinalizeStage:
    """Remove the structured units masks removed (schedule stages), then bake every mask in.

    >>> FinalizeStage().label
    'finalize'
    """

    kind: ClassVar[str] = "finalize"

    @property
    def label(self) -> str:
        return "finalize"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind}


def _distill_dict(distill: Distill | None) -> dict | None:
    return None if distill is None else {"temperature": distill.temperature, "alpha": distill.alpha}


Stage = PruneStage | ScheduleStage | FinetuneStage | FinalizeStage
STAGE_TYPES: dict[str, type] = {stage.kind: stage for stage in (PruneStage, ScheduleStage, FinetuneStage,
                                                                   FinalizeStage)}
_PRUNE_KEYS = tuple(item.name for item in fields(PruneStage))


def stage_keys(kind: str) -> tuple[str, ...]:
    """The keys a stage of type `kind` takes in a recipe file (besides ``type``).

    >>> stage_keys("finetune")
    ('epochs', 'lr', 'distill')
    """
    if kind == "schedule":
        own = tuple(item.name for item in fields(ScheduleStage) if item.name != "prune")
        return (*(key for key in _PRUNE_KEYS if key != "pattern"), *own)
    return tuple(item.name for item in fields(STAGE_TYPES[kind]))


def stage_from_mapping(values: Mapping[str, Any]) -> Stage:
    """A stage from the flat mapping a recipe file holds (``type`` plus the stage's keys).

    >>> stage = stage_from_mapping({"type": "schedule", "method": "magnitude", "sparsity": 0.8, "epochs": 2})
    >>> stage == ScheduleStage(PruneStage("magnitude", sparsity=0.8), epochs=2)
    True
    """
    kind = values.get("type")
    _check("type" in values, "type", f"is missing: every stage names its type, one of {', '.join(STAGE_TYPES)}")
    _check(isinstance(kind, str), "type", f"must be one of {', '.join(STAGE_TYPES)}; got {_shown(kind)}")
    if kind not in STAGE_TYPES:
        raise FieldError("type", str(unknown_name("stage type", kind, STAGE_TYPES)))
    known = stage_keys(kind)
    for key in values:
        if key != "type" and key not in known:
            choices = known or ("(none: a finalize stage takes no keys)",)
            raise FieldError(str(key), str(unknown_name(f"{kind} stage key", str(key), choices)))
    given = {key: value for key, value in values.items() if key != "type"}
    if kind != "schedule":
        return STAGE_TYPES[kind](**given)
    prune = PruneStage(**{key: value for key, value in given.items() if key in _PRUNE_KEYS})
    return ScheduleStage(prune, **{key: value for key, value in given.items() if key not in _PRUNE_KEYS})


@dataclass(frozen=True)
class Recipe:
    """Stages run in order on one model (``prunekit.recipes.run_recipe``); `seed` seeds pruning
    and training. Build it in Python or load it from YAML (``prunekit.recipe_yaml.load_recipe``).

    >>> recipe = Recipe([PruneStage("l1", "channel", 0.3), FinetuneStage(epochs=2), FinalizeStage()])
    >>> [stage.kind for stage in recipe.stages], recipe.capped(1).stages[1].epochs
    (['prune', 'finetune', 'finalize'], 1)
    """

    stages: tuple[Stage, ...]
    description: str = ""
    seed: int = 0
    source: str | None = field(default=None, compare=False)  # the file it was read from

    def __post_init__(self) -> None:
        _check(isinstance(self.stages, (list, tuple)) and len(self.stages) > 0, "stages",
               f"must be a non-empty list of stages; got {_shown(self.stages)}")
        object.__setattr__(self, "stages", tuple(self.stages))
        for index, stage in enumerate(self.stages):
            _check(isinstance(stage, tuple(STAGE_TYPES.values())), f"stages[{index}]",
                   f"must be a PruneStage, ScheduleStage, FinetuneStage or FinalizeStage; got {_shown(stage)}")
        _check(isinstance(self.description, str), "description", f"must be text; got {_shown(self.description)}")
        _int_at_least("seed", self.seed, 0, "seeds pruning and training")

    def capped(self, epochs: int) -> Recipe:
        """A copy whose training stages run at most `epochs` epochs (>= 1), for quick trial runs."""
        _int_at_least("epochs", epochs, 1, "the most epochs any stage may train")
        stages = [replace(stage, epochs=min(stage.epochs, epochs)) if hasattr(stage, "epochs") else stage
                  for stage in self.stages]
        return replace(self, stages=tuple(stages))

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a YAML file holds it (plain values)."""
        return {"description": self.description, "seed": self.seed,
                "stages": [stage.to_dict() for stage in self.stages]}


RECIPE_KEYS = ("description", "seed", "stages")

__all__ = ["Distill", "FieldError", "FinalizeStage", "FinetuneStage", "PruneStage", "RECIPE_KEYS",
           "RECIPE_SCHEDULES", "Recipe", "STAGE_TYPES", "ScheduleStage", "Stage", "stage_from_mapping",
           "stage_keys"]
