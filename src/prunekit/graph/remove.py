"""Remove units in place on torch-pruning, and compare the result with the masked model.

For every group, torch-pruning's DependencyGraph (built on the model *before* anything is
removed) expands the root indices to drop into every coupled layer. The layer operations of all
groups are then merged, so each layer's pruning function runs exactly once with the union of its
indices, all numbered in the original layout: indices of one group never go stale because
another group was removed first (which would happen with a concatenation feeding one consumer).
"""

from __future__ import annotations


from collections.abc import Mapping

import torch
from torch import nn
from torch_pruning import ops

from prunekit.errors import PrunekitError
from prunekit.graph.masks import unit_masks_to_param_masks
from prunekit.graph.trace import trace_graph
from prunekit.inputs import as_call, model_outputs
from prunekit.graph.types import UnitGroup
from prunekit.graph.walk import walk_group
from prunekit.masking import apply_masks, bake, copy_model

Groups = Mapping[str, UnitGroup]
Keep = Mapping[str, torch.Tensor]


def removed_units(keep_units: Keep) -> dict[str, list[int]]:
    """Unit numbers to remove per group (the ``False`` entries), as plain lists.

    >>> removed_units({"fc1": torch.tensor([True, False, False, True])})
    {'fc1': [1, 2]}
    """
    return {name: (~keep).nonzero().flatten().tolist() for name, keep in keep_units.items()}


def remove_units(model: nn.Module, example_inputs: object, groups: Groups, keep_units: Keep) -> None:
    """Physically remove the units with ``keep_units[name] == False``; no validation here.

    >>> from prunekit.graph import find_unit_groups
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> groups = {g.name: g for g in find_unit_groups(model, torch.ones(1, 4), "neuron")}
    >>> remove_units(model, torch.ones(1, 4), groups, {"0": torch.tensor([True, False, True])})
    >>> model[0].out_features, model[2].in_features
    (2, 2)
    """
    traced = trace_graph(model, example_inputs)
    graph = traced.graph
    requires_grad = {name: param.requires_grad for name, param in model.named_parameters()}
    pending: dict[tuple, list] = {}  # (layer, pruning function) -> [dependency, indices]
    for name, removed in removed_units(keep_units).items():
        removed_set, root = set(removed), model.get_submodule(name)
        unit_of_root = groups[name].root_unit_index.tolist()
        root_idxs = [index for index, unit in enumerate(unit_of_root) if unit in removed_set]
        for item in walk_group(graph, root, root_idxs):
            target = item.dep.target
            unwrapped = target.type == ops.OPTYPE.PARAMETER
            if not unwrapped and target.module not in traced.names:
                continue  # torch-pruning's placeholder ops (add, cat, output, ...) hold no weights
            entry = pending.setdefault((target.module, item.dep.handler), [item.dep, set()])
            entry[1].update(item.idxs)
    for dependency, idxs in pending.values():
        if dependency.target.type == ops.OPTYPE.PARAMETER:  # a new tensor: put it where the old one was
            owner, _, attr = graph._param_to_name[dependency.target.module].rpartition(".")
            setattr(model.get_submodule(owner), attr, dependency(sorted(idxs)))
        else:
            dependency(sorted(idxs))
    for name, param in model.named_parameters():  # torch-pruning makes every new tensor trainable
        param.requires_grad_(requires_grad.get(name, param.requires_grad))


def _eval_outputs(model: nn.Module, example_inputs: object) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model_outputs(as_call(example_inputs)(model))


def _compare(got: list[torch.Tensor], expected: list[torch.Tensor]) -> str | None:
    for got_tensor, expected_tensor in zip(got, expected, strict=False):
        if got_tensor.shape != expected_tensor.shape:
            shapes = f"{tuple(expected_tensor.shape)} to {tuple(got_tensor.shape)}"
            return f"an output changed shape from {shapes}"
        if got_tensor.is_floating_point() and got_tensor.numel():
            scale = max(1.0, float(expected_tensor.abs().max()))
            difference = float((got_tensor - expected_tensor).abs().max())
            if difference > 1e-3 * scale:  # wrong slices differ by O(1); rounding by ~1e-6
                return f"outputs differ from the masked model by up to {difference:.3g}"
    return None


def removal_mismatch(
    model: nn.Module, example_inputs: object, groups: Groups, keep_units: Keep
) -> str | None:
    """None if removing units (on a copy) computes what masking them computes; else the problem.

    Both copies run in eval mode on `example_inputs`; `model` itself is not touched. Masks already
    on `model` are baked into both copies first.

    >>> from prunekit.graph import find_unit_groups
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> groups = {g.name: g for g in find_unit_groups(model, torch.ones(1, 4), "neuron")}
    >>> keep = {"0": torch.tensor([True, False, True])}
    >>> print(removal_mismatch(model, torch.ones(1, 4), groups, keep))
    None
    """
    plain = bake(copy_model(model))  # masks baked in: the same function, and removal needs plain weights
    trial, masked = copy_model(plain), copy_model(plain)
    try:
        remove_units(trial, example_inputs, groups, keep_units)
        got = _eval_outputs(trial, example_inputs)
    except PrunekitError:
        raise
    except Exception as error:  # noqa: BLE001 - the caller names the groups involved
        return f"the shrunk model fails: {type(error).__name__}: {error}"
    apply_masks(masked, unit_masks_to_param_masks(masked, groups.values(), keep_units))
    return _compare(got, _eval_outputs(masked, example_inputs))
