"""Physically remove units: smaller layers, same function as the masked model.

``shrink`` validates everything, removes the units from a copy first, checks that the copy
computes what the masked model computes, and only then removes them from the caller's model,
so a failed call leaves the model exactly as it was. It returns a ``ShrinkRecord`` (record.py):
plain JSON that ``prunekit.graph.replay`` applies to a freshly built, unpruned model of the same
architecture. A pruned model is therefore saved as (architecture, record, state_dict).

Removal runs on torch-pruning (see ``remove.py``); RNN hidden units are removed by
``lstm.RnnUnitPruner``.

Masks: ``shrink`` works on plain weights and refuses a model with masks attached (removing the
parametrizations silently would drop their zeros). ``prunekit.prune``, ``Pruner`` and
``prunekit.remove_masked_units`` carry masks through the removal (``mask_carry.remove_carrying_masks``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph.masks import validate_keep_units
from prunekit.graph.record import ShrinkRecord, refuse_masked, step_keep_mask
from prunekit.graph.remove import Groups, Keep, removal_mismatch, remove_units, removed_units
from prunekit.graph.types import UnitGroup
from prunekit.graph.units import discover_groups
from prunekit.layers import handler_for


def _check_groups_fit(model: nn.Module, groups: Iterable[UnitGroup]) -> None:
    """Groups found on another version of the model would remove the wrong indices."""
    modules = dict(model.named_modules())
    for group in groups:
        root = modules.get(group.name)
        handler = handler_for(root) if root is not None else None
        width = handler.out_width(root) if handler is not None and handler.unit_granularity else None
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
        "or softmax over them, or an addition with the model input). Exclude those layers (calling "
        "prunekit.graph.shrink directly, check=False removes them anyway). The model was not changed"
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
    attached is refused (``prunekit.prune`` and ``remove_masked_units`` carry masks through the
    removal). Rebuild optimisers afterwards: the shrunk layers
    hold new parameter tensors.

    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> record = shrink(model, torch.ones(1, 4), {"0": torch.tensor([True, False, True])})
    >>> model[0].out_features, model[2].in_features, record.steps[0]["removed"]
    (2, 2, [1])
    """
    refuse_masked(model, "shrink removes units")
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


def replay_unit_round(model: nn.Module, example_inputs: object, steps: list[dict], check: bool = True) -> None:
    """Replay one round of unit steps (neurons, channels, LSTM units) of a ``ShrinkRecord``."""
    groups = {group.name: group for group in discover_groups(model, example_inputs)}
    keep_units = {}
    for step in steps:
        group = groups.get(step["group"])
        same_kind = group is not None and group.granularity == step["granularity"]
        keep_units[step["group"]] = step_keep_mask(step, group.num_units if same_kind else None)
    shrink(model, example_inputs, keep_units, list(groups.values()), check=check)
