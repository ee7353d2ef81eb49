"""Physically remove units: smaller layers, same function as the masked model.

``shrink`` validates everything, removes the units from a copy first, checks that the copy
computes what the masked model computes, and only then removes them from the caller's model,
so a failed call leaves the model exactly as it was. It returns a ``ShrinkRecord``: plain JSON
that ``replay`` applies to a freshly built, unpruned model of the same architecture. A pruned
model is therefore saved as (architecture name, record, state_dict) and rebuilt without pickle.

Removal runs on torch-pruning (see ``remove.py``); RNN hidden units are removed by
``lstm.RnnUnitPruner``.

Masks: ``shrink`` refuses a model with masks attached. Call ``prunekit.masking.bake`` first so the
zeros inside kept units stay (removing the parametrizations silently would drop them).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import PrunekitError
from prunekit.graph.masks import validate_keep_units
from prunekit.graph.remove import Groups, Keep, removal_mismatch, remove_units, removed_units
from prunekit.graph.types import UnitGroup
from prunekit.graph.units import discover_groups

FORMAT = "prunekit-shrink-record"
VERSION = 1
_STEP_KEYS = {"round", "group", "granularity", "num_units", "removed"}


@dataclass
class ShrinkRecord:
    """What ``shrink`` removed, as JSON-ready steps (one per group, grouped in rounds).

    Each step is ``{"round": r, "group": name, "granularity": g, "num_units": n,
    "removed": [unit, ...]}``; unit numbers refer to the model as it was when round ``r`` ran.

    >>> record = ShrinkRecord([{"round": 0, "group": "0", "granularity": "neuron",
    ...                         "num_units": 4, "removed": [1]}])
    >>> ShrinkRecord.from_dict(record.to_dict()) == record
    True
    """

    steps: list[dict] = field(default_factory=list)

    @property
    def rounds(self) -> list[list[dict]]:
        """Steps grouped by round, in order."""
        by_round: dict[int, list[dict]] = {}
        for step in self.steps:
            by_round.setdefault(step["round"], []).append(step)
        return [by_round[key] for key in sorted(by_round)]

    def __add__(self, later: ShrinkRecord) -> ShrinkRecord:
        """This record followed by `later` (e.g. a second ``shrink`` call)."""
        offset = 1 + max((step["round"] for step in self.steps), default=-1)
        shifted = [{**step, "round": step["round"] + offset} for step in later.steps]
        return ShrinkRecord(copy.deepcopy(self.steps) + shifted)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable form."""
        return {"format": FORMAT, "version": VERSION, "steps": copy.deepcopy(self.steps)}

    @classmethod
    def from_dict(cls, data: Mapping) -> ShrinkRecord:
        """Inverse of ``to_dict``; raises PrunekitError for anything that is not a record."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise PrunekitError(f"not a shrink record: expected a dict with format '{FORMAT}'")
        if data.get("version") != VERSION:
            version = data.get("version")
            raise PrunekitError(f"shrink record version {version!r} is unsupported; expected {VERSION}")
        steps = list(data.get("steps", []))
        for step in steps:
            if not isinstance(step, Mapping) or set(step) != _STEP_KEYS:
                raise PrunekitError(
                    f"malformed shrink record step {step!r}; expected keys {sorted(_STEP_KEYS)}"
                )
        return cls([dict(step) for step in steps])


def _refuse_masked(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            param = next(iter(module.parametrizations))
            raise PrunekitError(
                f"'{f'{name}.' if name else ''}{param}' has a mask (parametrization) attached; "
                "shrink removes units from plain models only. Call prunekit.masking.bake(model) "
                "first to make the masks permanent, then shrink"
            )


def _check_groups_fit(model: nn.Module, groups: Iterable[UnitGroup]) -> None:
    """Groups found on another version of the model would remove the wrong indices."""
    modules = dict(model.named_modules())
    for group in groups:
        root = modules.get(group.name)
        width = None
        if isinstance(root, nn.Linear):
            width = root.out_features
        elif isinstance(root, nn.modules.conv._ConvNd):
            width = root.out_channels
        elif isinstance(root, nn.RNNBase):
            width = root.hidden_size * (2 if root.bidirectional else 1)
        if width != len(group.root_unit_index):
            raise PrunekitError(
                f"group '{group.name}' was found on a different version of this model (its root "
                f"layer has {width} outputs, the group expects {len(group.root_unit_index)}); "
                "call find_unit_groups on the model you shrink"
            )


def _verify(model: nn.Module, example_inputs: object, groups: Groups, keep_units: Keep) -> None:
    problem = removal_mismatch(model, example_inputs, groups, keep_units)
    if problem is None:
        return
    culprits = [
        name
        for name, keep in keep_units.items()
        if removal_mismatch(model, example_inputs, groups, {name: keep})
    ]
    raise PrunekitError(
        f"removing units of group(s) {', '.join(repr(n) for n in culprits or list(keep_units))} "
        f"would not match masking them ({problem}); the model combines these units in a way "
        "the dependency graph does not capture (e.g. a reshape across channels, a normalisation "
        "or softmax over them, or an addition with the model input). Exclude those layers, or "
        "pass check=False to remove them anyway. The model was not changed"
    )


def shrink(
    model: nn.Module,
    example_inputs: object,
    keep_units: Mapping[str, torch.Tensor],
    groups: Iterable[UnitGroup] | None = None,
    *,
    check: bool = True,
) -> ShrinkRecord:
    """Remove the units with ``keep_units[group] == False`` from `model`, in place.

    `groups` default to every group of every granularity (``find_unit_groups``); pass the groups
    you scored to skip that search. With `check` the result is compared with the masked model on
    `example_inputs` before the caller's model is touched (``check=False`` skips that rehearsal,
    and with it the guarantee that a failure leaves the model unchanged). A model with masks
    attached is refused: ``bake`` it first. Rebuild optimisers afterwards: the shrunk layers
    hold new parameter tensors.

    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> record = shrink(model, torch.ones(1, 4), {"0": torch.tensor([True, False, True])})
    >>> model[0].out_features, model[2].in_features, record.steps[0]["removed"]
    (2, 2, [1])
    """
    _refuse_masked(model)
    groups = list(groups) if groups is not None else discover_groups(model, example_inputs)
    validate_keep_units(groups, keep_units)
    by_name = {group.name: group for group in groups}
    keep_units = {name: keep.cpu() for name, keep in keep_units.items() if not bool(keep.all())}
    _check_groups_fit(model, [by_name[name] for name in keep_units])
    if not keep_units:
        return ShrinkRecord()
    if check:
        _verify(model, example_inputs, by_name, keep_units)
    removals = removed_units(keep_units)
    remove_units(model, example_inputs, by_name, keep_units)
    return ShrinkRecord(
        [
            {"round": 0, "group": name, "granularity": by_name[name].granularity,
             "num_units": by_name[name].num_units, "removed": removed}
            for name, removed in removals.items()
        ]
    )  # fmt: skip


def _replay_round(model: nn.Module, example_inputs: object, steps: list[dict], check: bool) -> None:
    groups = {group.name: group for group in discover_groups(model, example_inputs)}
    keep_units = {}
    for step in steps:
        group = groups.get(step["group"])
        same = group is not None and (group.num_units, group.granularity) == (
            step["num_units"],
            step["granularity"],
        )
        if not same:
            found = f"{group.num_units} {group.granularity} units" if group else "no such group"
            raise PrunekitError(
                f"the record removes {step['granularity']} units from group '{step['group']}' "
                f"({step['num_units']} units) but this model has {found}; replay needs a fresh "
                "model of the architecture the record was made on"
            )
        removed = step["removed"]
        if not all(isinstance(unit, int) and 0 <= unit < group.num_units for unit in removed):
            raise PrunekitError(
                f"the record removes units {removed!r} from group '{group.name}', which has units "
                f"0..{group.num_units - 1}; the record is damaged"
            )
        keep = torch.ones(group.num_units, dtype=torch.bool)
        keep[torch.tensor(removed, dtype=torch.long)] = False
        keep_units[group.name] = keep
    shrink(model, example_inputs, keep_units, list(groups.values()), check=check)


def replay(
    model: nn.Module, example_inputs: object, record: ShrinkRecord | Mapping, *, check: bool = True
) -> nn.Module:
    """Apply a ``ShrinkRecord`` (or its ``to_dict()`` form) to a fresh model; returns the model.

    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> record = shrink(model, torch.ones(1, 4), {"0": torch.tensor([True, False, True])})
    >>> fresh = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> replay(fresh, torch.ones(1, 4), record).load_state_dict(model.state_dict())
    <All keys matched successfully>
    """
    if not isinstance(record, ShrinkRecord):
        record = ShrinkRecord.from_dict(record)
    rounds = record.rounds
    if len(rounds) > 1:  # later rounds can only be validated after earlier ones: rehearse
        rehearsal = copy.deepcopy(model)
        for steps in rounds:
            _replay_round(rehearsal, example_inputs, steps, check)
        check = False
    for steps in rounds:
        _replay_round(model, example_inputs, steps, check)
    return model
