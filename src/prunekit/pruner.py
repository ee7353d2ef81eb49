"""``Pruner``: pruning shaped like an optimiser, living in the user's own training loop.

    pruner = prunekit.Pruner(model, method="magnitude", sparsity=0.9, scope="global")
    for inputs, targets in loader:                      # the user's loop and optimiser
        loss = loss_fn(model(inputs), targets) + pruner.penalty()
        loss.backward(); optimizer.step(); optimizer.zero_grad()
        pruner.step()                                   # prunes when its schedule says so
    pruner.finalize()          # plain module: masks baked; structured masks removed physically

It never wraps or patches the optimiser, the model's methods or the loop. Masks are attached
through parametrizations, which keep the parameter objects the optimiser holds. ``prune()`` is a
Pruner stepped once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from prunekit.distributed import in_process_group, refuse_wrapper
from prunekit.errors import PrunekitError
from prunekit.graph.record import ShrinkRecord
from prunekit.graph.types import UnitGroup
from prunekit.granularity import Granularity, get_granularity
from prunekit.layers.init_bounds import warn_if_trained
from prunekit.loop_state import LoopState, check_loop_schedule
from prunekit.masking import bake, fold_gates, refuse_foreign_masks, release_masks
from prunekit.one_shot import ONE_SHOT_METHODS, prune_one_shot
from prunekit.pipeline import Pass, attach_full_masks, prune_pass, remove_units, with_floor
from prunekit.predictor import MaskPredictor
from prunekit.pruner_goal import (check_groups, check_regularizer, default_scope, goal, layer_targets, options_from,
                                  pattern_goal)
from prunekit.pruner_state import check_state, load_masks, own_masks
from prunekit.reconstruct import prune_reconstructing
from prunekit.request import (PruneRequest, check_layer_names, model_signature, require_example_inputs,
                               validate_request)
from prunekit.schedules import OneShot, Schedule
from prunekit.state import preserved_state
from prunekit.stats import LossFn
from prunekit.targets import ExcludeItem
from prunekit.types import PruneResult, SparsityReport


class Pruner:
    """Prunes `model` by `method` towards `sparsity` (or below `threshold`) as `schedule` says.

    Arguments mirror :func:`prune` (but ``remove`` defaults to False: units are masked while
    training and removed by ``finalize()``); `scope` is ``"layer"`` (each layer, or each stack of
    blocks, loses the share), ``"global"`` (all units compete), ``"lamp"`` (all compete by LAMP
    score) or ``"row"`` (each output row of each weight loses the share; Wanda's default), by default
    ``"layer"`` except for granularity ``"layer"`` (``"global"``). `method` defaults to the granularity's usual
    criterion: ``"magnitude"`` for unstructured, ``"l1"`` for neurons, channels, LSTM units and
    heads, ``"removal-cost"`` (needs `data`) for layers. `schedule` (default ``OneShot()``: prune at the first
    ``step()``) decides when. Less common settings are keyword `options` (``loss_fn``,
    ``exclude``, ``seed``, ``round_to``, ``num_batches``, ``remove``, ``layer_sparsity``: each
    layer's own amount, which it reaches following the schedule; see ``PruneOptions``), or
    one ``options=PruneOptions(...)``.
    Structured granularities mask units while training, so the optimiser's parameters stay
    valid; ``finalize()`` removes them physically. Everything is validated here, before the model
    is touched.

    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> pruner = Pruner(model, "magnitude", 0.5, scope="global")
    >>> pruner.step().sparsity_achieved, pruner.step(), pruner.sparsity
    (0.5, None, SparsityReport(target=0.5, achieved=0.5))
    >>> pruner.finalize() is model, int((model[0].weight == 0).sum()) > 0
    (True, True)
    """

    def __init__(self, model: nn.Module, method: str | None = None, sparsity: float | None = None, *,
                 threshold: float | None = None, granularity: str = "unstructured", scope: str | None = None,
                 schedule: Schedule | None = None, data: Iterable | None = None, example_inputs: object = None,
                 **options) -> None:
        self.schedule = OneShot() if schedule is None else schedule
        if not isinstance(self.schedule, Schedule):
            raise PrunekitError(f"schedule must be a prunekit.schedules.Schedule (e.g. OneShot()), got {schedule!r}")
        prune_options = options_from(options)
        if method in ONE_SHOT_METHODS:
            raise PrunekitError(f"method '{method}' rebuilds the kept weights from calibration data in one shot, block "
                                f"by block, with no schedule: call prunekit.prune(model, '{method}', sparsity, data=...)")
        if method is None:
            method = self.schedule.default_method or get_granularity(granularity).default_method
        scope = default_scope(method, granularity, prune_options) if scope is None else scope
        if method == "l0" and sparsity is None and threshold is None and prune_options.layer_sparsity is None:
            threshold = 0.0  # L0 decides how much: units whose deterministic gate is shut go
        sparsity = pattern_goal(self.schedule, granularity, prune_options, sparsity, threshold)  # N:M: 1 - N/M
        sparsity, threshold = goal(self.schedule, sparsity, threshold)
        self.request = PruneRequest(method, granularity, scope, sparsity, threshold, prune_options)
        granularity_, criterion = validate_request(self.request, data, example_inputs,
                                                   gradients_from_loop=self.schedule.accumulates_gradients)
        check_loop_schedule(method, criterion.needs, schedule)  # movement: no default schedule fits its loop
        if self.request.options.remove and granularity_.removable and not isinstance(self.schedule, OneShot):
            raise PrunekitError(
                "remove=True removes units physically when the Pruner prunes, which suits a schedule that "
                "prunes once (OneShot); with this schedule leave remove=False: units are masked while "
                "training and finalize() removes them"
            )
        refuse_wrapper(model)
        refuse_foreign_masks(model, None)
        self.model = model
        self._pass = Pass(self.request, granularity_, criterion, data, example_inputs)
        self._token = uuid.uuid4().hex
        self._groups_signature: dict | None = None
        self._groups: list[UnitGroup] = self._find_groups()  # validates `exclude` and that something is prunable
        check_layer_names(prune_options.layer_sparsity, self._groups)
        check_groups(self._groups, scope, prune_options.pattern)  # row scope / N:M fit every weight
        check_regularizer(model, self.request, self._groups, granularity_, criterion.reads)
        if prune_options.predictor is not None:  # every targeted layer must be of a kind it was fitted on
            prune_options.predictor.check_model(model, [group.name for group in self._groups])
        warn_if_trained(model, criterion.name)
        self._attach_masks_for_ddp()
        if prune_options.regularizer is not None:
            prune_options.regularizer.attach(model, self._groups, self._token)
        self._step = 0
        self._target: float | None = 0.0 if sparsity is not None or prune_options.layer_sparsity is not None else None
        self._achieved = 0.0
        self._state = "live"  # -> "finalized" | "released"
        self.shrink_record: ShrinkRecord | None = None
        self.last_result: PruneResult | None = None
        self._loop = LoopState.start(model, self.schedule, [group.name for group in self._groups], criterion.needs)

    # ------------------------------------------------------------------ the optimiser-like API

    def step(self) -> PruneResult | None:
        """Advance the schedule by one step; prune if it says so. Returns what that pruning did
        (None when this step does not prune)."""
        self._check_live("step()")
        step = self._step
        result = None
        regularizer = self.request.options.regularizer
        if regularizer is not None and not self.done:
            regularizer.advance(self.model)
        self._loop.before_step(self.model, step)
        if self.schedule.prunes_at(step):
            sparsity = self.request.sparsity
            target = self.schedule.sparsity_at(step, sparsity) if sparsity is not None else None
            target, per_layer = layer_targets(self.schedule, step, self._find_groups(), self.request, target)
            step_pass = self._loop.evidence_for(self._pass)
            result = prune_pass(self.model, step_pass, self._find_groups(), target, self._token,
                                self.schedule.threshold_at(step), layer_sparsity=per_layer)
            result = self._loop.after_pruning(self.model, step, result)
            self._target, self._achieved, self.last_result = target, result.sparsity_achieved, result
            self._add_record(result.shrink_record)
            if self.schedule.finished(step + 1):
                fold_gates(self.model)  # learned gates become masks (kept weights keep their gate's value)
        self._step = step + 1  # only once the step went through: a failed step can be retried
        if self.schedule.finished(self._step):
            self._loop.close()  # no pruning left: stop summing gradients on every backward pass
        return result

    def penalty(self) -> torch.Tensor:
        """The sparsity-inducing term to add to the loss: the `regularizer` option's term on the
        weights as they are now, until the schedule's last pruning (recovery then trains without
        it); zero without a regularizer."""
        regularizer = self.request.options.regularizer
        if regularizer is not None and self._state == "live" and not self.done:
            return regularizer.term(self.model, self._find_groups())
        parameter = next(self.model.parameters(), None)
        return torch.zeros((), device=parameter.device if parameter is not None else None)

    @property
    def sparsity(self) -> SparsityReport:
        """The target the schedule has reached so far and the share of targeted units now gone."""
        if self._state == "live" and self._step and not self.removes:
            groups = self._find_groups()
            present = self._pass.granularity.present(self.model, groups)
            total = sum(group.num_units for group in groups)
            self._achieved = 1.0 - sum(int(mask.sum()) for mask in present.values()) / max(total, 1)
        return SparsityReport(self._target, self._achieved)

    @property
    def removes(self) -> bool:
        """True when pruning removes units physically at once (``remove=True``, structured)."""
        return self.request.options.remove and self._pass.granularity.removable

    @property
    def step_count(self) -> int:
        """How many ``step()`` calls went through (the index the next one has)."""
        return self._step

    @property
    def done(self) -> bool:
        """True once the schedule will not prune again."""
        return self.schedule.finished(self._step)

    @property
    def finalized(self) -> bool:
        """True after ``finalize()``."""
        return self._state == "finalized"

    def finalize(self, example_inputs: object = None) -> nn.Module:
        """End pruning: structured units whose masks removed them go physically (other masks
        are carried along), then every mask is baked in. Returns the model, now plain; the
        removal record is ``pruner.shrink_record``. Rebuild the optimiser afterwards when units
        were removed. `example_inputs` default to the constructor's."""
        self._check_live("finalize()")
        granularity = self._pass.granularity
        inputs = self._pass.example_inputs if example_inputs is None else example_inputs
        fold_gates(self.model)  # gates that are shut mask their units, which then go like masked ones
        if granularity.removable and own_masks(self.model, self._token):
            self._add_record(_remove_masked_units(self.model, granularity, inputs, self._find_groups(), self._token))
        bake(self.model)
        self._loop.close()
        self._state = "finalized"
        return self.model

    def release(self) -> None:
        """Stop managing the model: its masks stay attached (pruned weights stay zero) but belong
        to nobody, so another Pruner may prune it further."""
        self._check_live("release()")
        fold_gates(self.model)
        release_masks(self.model, self._token)
        self._loop.close()
        self._state = "released"

    # ------------------------------------------------------------------ resuming

    def state_dict(self) -> dict:
        """Everything needed to resume: settings, schedule position and this Pruner's masks."""
        return {
            "format": "prunekit-pruner", "version": 1, "request": self.request.describe(),
            "schedule": self.schedule.to_dict(), "step": self._step, "target": self._target,
            "achieved": self._achieved, "state": self._state,
            "model": model_signature(self.model), "masks": own_masks(self.model, self._token),
            "shrink_record": self.shrink_record.to_dict() if self.shrink_record is not None else None,
            "loop": self._loop.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``: same masks, same schedule position. A state from another
        model, method, granularity or schedule is refused before anything changes."""
        self._check_live("load_state_dict()")
        check_state(state, self.request.describe(), self.schedule.to_dict(), model_signature(self.model))
        load_masks(self.model, state["masks"], self._token)
        self._attach_masks_for_ddp()
        self._step, self._target, self._achieved = int(state["step"]), state["target"], float(state["achieved"])
        record = state["shrink_record"]
        self.shrink_record = ShrinkRecord.from_dict(record) if record is not None else None
        self._loop.load_state_dict(state.get("loop") or {})

    # ------------------------------------------------------------------ internals

    def _check_live(self, action: str) -> None:
        if self._state != "live":
            raise PrunekitError(
                f"{action} after this Pruner was {self._state}: it no longer manages the model; create a new "
                "Pruner to prune further"
            )

    def _attach_masks_for_ddp(self) -> None:
        """Under torch.distributed, give every parameter this Pruner may mask an all-True mask
        now, before the user wraps the model in DistributedDataParallel (see
        ``pipeline.attach_full_masks``); pruning then only changes mask values."""
        if in_process_group() and not self.removes:
            attach_full_masks(self.model, self._find_groups(), self._token)

    def _add_record(self, record: ShrinkRecord | None) -> None:
        if record is not None:
            self.shrink_record = record if self.shrink_record is None else self.shrink_record + record

    def _find_groups(self) -> list[UnitGroup]:
        """The groups of the model as it is now (found again only when its shapes changed)."""
        signature = model_signature(self.model)
        if self._groups_signature != signature:
            with preserved_state(self.model):
                self.model.eval()
                self._groups = self._pass.granularity.find(self.model, self._pass.example_inputs,
                                                           self.request.options.exclude)
            self._groups_signature = signature
        return self._groups


def remove_masked_units(model: nn.Module, granularity: str, example_inputs: object = None,
                        exclude: Iterable[ExcludeItem] = ()) -> ShrinkRecord:
    """Physically remove the `granularity` units that masks have removed (after
    ``prune(..., remove=False)``); other masks are carried along. Every group keeps at least one
    unit. Masks a live Pruner manages are refused: that Pruner's ``finalize()`` removes them.

    >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> x = torch.ones(2, 4)
    >>> _ = prune(model, "l1", 0.5, granularity="neuron", example_inputs=x, remove=False)
    >>> record = remove_masked_units(model, "neuron", x)
    >>> model[0].out_features, [step["removed"] for step in record.steps] != []
    (3, True)
    """
    unit_granularity = get_granularity(granularity)
    if not unit_granularity.removable:
        raise PrunekitError(f"granularity '{granularity}' has no units to remove physically; bake the masks instead")
    require_example_inputs(unit_granularity, example_inputs, f"removing {unit_granularity.unit} units")
    refuse_foreign_masks(model, None)
    with preserved_state(model):
        model.eval()
        groups = unit_granularity.find(model, example_inputs, tuple(exclude))
    return _remove_masked_units(model, unit_granularity, example_inputs, groups, None)


def _remove_masked_units(model: nn.Module, granularity: Granularity, example_inputs: object,
                         groups: list[UnitGroup], owner: str | None) -> ShrinkRecord:
    """Remove the units of `groups` (found on `model` as it is) that the masks removed."""
    keep = with_floor(granularity, groups, granularity.kept(model, groups))
    return remove_units(model, granularity, groups, keep, example_inputs, owner)


def finalize(model: nn.Module, granularity: str | None = None, example_inputs: object = None,
             exclude: Iterable[ExcludeItem] = ()) -> nn.Module:
    """Make a pruned model plain: with a structured `granularity`, first remove the units its masks
    removed (:func:`remove_masked_units`), then bake every mask in. Returns the model.

    >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> _ = prune(model, "l1", 0.5, granularity="neuron", example_inputs=torch.ones(2, 4), remove=False)
    >>> finalize(model, "neuron", torch.ones(2, 4))[0].out_features
    3
    """
    if granularity is not None:
        remove_masked_units(model, granularity, example_inputs, exclude)
    refuse_foreign_masks(model, None)
    return bake(model)


def prune(
    model: nn.Module,
    method: str | None = None,
    sparsity: float | None = None,
    granularity: str = "unstructured",
    scope: str | None = None,
    threshold: float | None = None,
    data: Iterable | None = None,
    loss_fn: LossFn | None = None,
    example_inputs: torch.Tensor | None = None,
    exclude: Iterable[ExcludeItem] = (),
    seed: int = 0,
    num_batches: int = 8,
    round_to: int | None = None,
    remove: bool = True,
    layer_sparsity: Mapping[str, float] | None = None,
    predictor: MaskPredictor | None = None,
    pattern: str | None = None,
    reconstruct: bool = False,
) -> PruneResult:
    """Prune `model` in place once and report what changed (a :class:`Pruner` stepped once).

    Unstructured: masks are attached through parametrizations and stay through fine-tuning; call
    :func:`prunekit.bake` for a plain model. A second call prunes further (sparsity is the total).

    Structured (``granularity="neuron" | "channel" | "lstm-unit" | "head" | "layer"``):
    `sparsity` is the fraction of units removed (neurons, channels, LSTM hidden units, attention
    heads, or whole blocks); with ``remove=True`` (default) they are removed physically, so the
    model really gets smaller and faster (``result.shrink_record`` replays the removal on a fresh
    model, see :func:`prunekit.graph.replay`), carrying any masks along; with ``remove=False``
    they are masked to zero instead (:func:`remove_masked_units` removes them later).
    neuron/channel/lstm-unit trace the model and need `example_inputs`; ``"layer"`` removes the
    identity-shortcut residual blocks / transformer layers whose removal costs least
    (``method="removal-cost"`` measures that on `data`) and keeps one block of every stack.
    `scope` defaults to ``"layer"`` (``"global"`` for granularity ``"layer"``); ``"lamp"`` ranks
    globally by LAMP scores; see :class:`Pruner`. `layer_sparsity` (``{group name: fraction}``,
    e.g. from :func:`prunekit.allocate`) prunes each named layer to its own amount instead.
    `predictor` is the fitted :class:`prunekit.predictor.MaskPredictor` method ``"predictor"`` reads.
    `pattern` ``"N:M"`` (``"2:4"``) keeps the N best of every M consecutive weights along each
    layer's inputs (sparsity 1 - N/M). ``method="wanda"`` (|w|·‖X‖ on `data`) compares within rows.
    ``method="sparsegpt"`` (needs `data`) rebuilds the kept weights of a transformer's blocks, block
    by block (:func:`prunekit.one_shot.sparsegpt_prune`; scope ``"row"`` or ``"layer"``).
    ``reconstruct=True`` (granularity ``"neuron"`` or ``"head"``, needs `data`) removes FFN neurons /
    attention heads of a transformer's blocks, block by block, and refits the projection that reads
    them by least squares (:func:`prunekit.reconstruct.reconstruct_prune`; method default ``"wanda"``).

    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> result = prune(model, method="magnitude", sparsity=0.5, scope="global")
    >>> round(result.sparsity_achieved, 2)
    0.5
    >>> prune(nn.Linear(4, 4), layer_sparsity={"weight": 0.25}).layer_sparsity
    {'weight': 0.25}
    """
    if reconstruct:  # one-shot, block by block, refitting what reads the removed units: its own driver
        return prune_reconstructing(model, method, sparsity, data, granularity=granularity, exclude=exclude,
                                    num_batches=num_batches, remove=remove, example_inputs=example_inputs,
                                    round_to=round_to, seed=seed, scope=scope, threshold=threshold,
                                    layer_sparsity=layer_sparsity, predictor=predictor, pattern=pattern,
                                    loss_fn=loss_fn)
    if method in ONE_SHOT_METHODS:  # rebuilds the kept weights: its own driver, not a score-then-select pass
        return prune_one_shot(model, method, sparsity, data, scope=scope, pattern=pattern, exclude=exclude,
                              num_batches=num_batches, granularity=granularity, threshold=threshold,
                              layer_sparsity=layer_sparsity, round_to=round_to, predictor=predictor, loss_fn=loss_fn)
    pruner = Pruner(model, method, sparsity, threshold=threshold, granularity=granularity, scope=scope, data=data,
                    example_inputs=example_inputs, loss_fn=loss_fn, exclude=exclude, seed=seed,
                    num_batches=num_batches, round_to=round_to, remove=remove, layer_sparsity=layer_sparsity,
                    predictor=predictor, pattern=pattern)
    result = pruner.step()
    pruner.release()
    return result
