"""Find coupled structural units (neurons, channels, LSTM hidden units) and mask them.

Pipeline position: a granularity's *units* come from here; criteria score their members, select
picks units to drop, ``masks.unit_masks_to_param_masks`` turns the choice into keep-masks (the
masked equivalent of removal) and ``shrink`` removes them physically.

How a group is found: torch-pruning's DependencyGraph gives, for a root layer, every layer and
index that must change with each root output index (residual adds, concatenations, flatten,
BatchNorm, depthwise convs). ``slices.py`` / ``lstm.py`` turn each of those into parameter slices,
and slices claimed by several root indices merge those indices into one unit. Groups that reach
the model output, an excluded layer, a layer used twice, or a layer prunekit cannot shrink
consistently (LayerNorm, attention, embeddings, ...) are skipped, never half-handled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch_pruning import ops

from prunekit.errors import PrunekitError, unknown_name
from prunekit.graph.remove import removal_mismatch
from prunekit.graph.slices import (
    ProtectedUnits,
    SliceBatch,
    UnsupportedCoupling,
    assemble_members,
    layer_slices,
)
from prunekit.graph.trace import TracedGraph, trace_graph
from prunekit.graph.types import GRANULARITIES, UnitGroup
from prunekit.layers import unit_granularity
from prunekit.layers.rnn import check_rnn_supported
from prunekit.targets import excluded_module_names

logger = logging.getLogger(__name__)

_WHAT = {
    "neuron": "nn.Linear layers",
    "channel": "nn.Conv1d/2d/3d layers",
    "lstm-unit": "nn.LSTM/GRU/RNN layers",
}
_PASS_THROUGH = {
    ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.RESHAPE, ops.OPTYPE.CONCAT, ops.OPTYPE.SPLIT,
    ops.OPTYPE.SLICE, ops.OPTYPE.UNBIND, ops.OPTYPE.EXPAND,
}  # fmt: skip


def _resolve_exclude(model: nn.Module, exclude: Iterable[str | type]) -> set[nn.Module]:
    names = excluded_module_names(model, exclude)
    return {module for name, module in model.named_modules() if name in names}


def _collect(traced: TracedGraph, tp_group, excluded: set[nn.Module]) -> list[SliceBatch]:
    """Slice batches of one torch-pruning group; raises UnsupportedCoupling to skip it."""
    graph, batches = traced.graph, []
    for item in tp_group:
        node, module = item.dep.target, item.dep.target.module
        is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
        if node.type == ops.OPTYPE.OUTPUT or (is_out and node.grad_fn in traced.output_grad_fns):
            raise ProtectedUnits("its units reach the model output")
        if node.type in _PASS_THROUGH:
            continue
        name = traced.names.get(module)
        if name is None:
            raise UnsupportedCoupling(f"it reaches {node.name}, which is not a layer of the model")
        if module in traced.reused:
            raise UnsupportedCoupling(f"'{name}' runs more than once per forward pass")
        if is_out and module in excluded:
            raise ProtectedUnits(f"'{name}' is excluded")
        batches += layer_slices(name, module, is_out, item.idxs, item.root_idxs)
    return batches


def _rnn_problem(traced: TracedGraph, group: UnitGroup) -> str | None:
    """RNN outputs are read in many ways (time steps, h_n, flattened, pooled): confirm that
    removing every other hidden unit computes what masking them computes, or say why not."""
    if group.num_units < 2:
        return None
    keep = {group.name: torch.arange(group.num_units) % 2 == 0}
    problem = removal_mismatch(traced.model, traced.example_inputs, {group.name: group}, keep)
    if problem is None:
        return None
    return f"removing some would not match masking them ({problem}), so prunekit misreads their use"


@dataclass
class _Discovery:
    groups: list[UnitGroup] = field(default_factory=list)
    covered: set = field(default_factory=set)
    problems: dict[str, str] = field(default_factory=dict)  # root name -> why it was skipped


def _add_group(traced: TracedGraph, name: str, root: nn.Module, excluded: set, found: _Discovery):
    graph = traced.graph
    pruner = graph.get_pruner_of_module(root)
    width = pruner.get_out_channels(root)
    found.covered.add(root)
    try:
        tp_group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(width)))
    except Exception as error:  # noqa: BLE001 - torch-pruning gives up on some patterns
        found.problems[name] = f"torch-pruning cannot follow it ({type(error).__name__}: {error})"
        return
    is_out = graph.is_out_channel_pruning_fn
    found.covered |= {item.dep.target.module for item in tp_group if is_out(item.dep.handler)}
    try:
        batches = _collect(traced, tp_group, excluded)
    except ProtectedUnits as reason:
        logger.debug("not offering units of '%s': %s", name, reason)
        return
    except UnsupportedCoupling as reason:
        found.problems[name] = str(reason)
        return
    members, root_units = assemble_members(width, batches)
    group = UnitGroup(name, unit_granularity(root), int(root_units.max()) + 1, members, root_units)
    problem = _rnn_problem(traced, group) if isinstance(root, nn.RNNBase) else None
    if problem is not None:
        found.problems[name] = problem
        return
    found.groups.append(group)


def _discover(model: nn.Module, example_inputs: object, exclude: Iterable[str | type]) -> _Discovery:
    excluded = _resolve_exclude(model, exclude)
    traced = trace_graph(model, example_inputs)
    found = _Discovery()
    for name, module in model.named_modules():
        traced_layer = module in traced.graph.module2node  # unused layers are not traced
        if unit_granularity(module) and module not in found.covered and traced_layer:
            _add_group(traced, name, module, excluded, found)
    for name, reason in found.problems.items():
        logger.debug("skipping units of '%s': %s", name, reason)
    return found


def discover_groups(
    model: nn.Module, example_inputs: object, exclude: Iterable[str | type] = ()
) -> list[UnitGroup]:
    """Every prunable unit group of every granularity, in module order (see find_unit_groups).

    >>> model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(8, 5), nn.Linear(5, 1))
    >>> [(g.name, g.granularity) for g in discover_groups(model, torch.ones(1, 2, 4))]
    [('0', 'channel'), ('2', 'neuron')]
    """
    return _discover(model, example_inputs, exclude).groups


def find_unit_groups(
    model: nn.Module, example_inputs: object, granularity: str, exclude: Iterable[str | type] = ()
) -> list[UnitGroup]:
    """The groups of coupled units of `granularity` that can be removed from `model`.

    `granularity` is ``"neuron"`` (outputs of nn.Linear), ``"channel"`` (output channels of
    nn.Conv1d/2d/3d) or ``"lstm-unit"`` (hidden units of nn.LSTM/GRU/RNN). Units feeding the
    model output, and outputs of layers named (or typed) in `exclude`, are never offered; nor are
    units coupled to layers prunekit cannot shrink consistently (LayerNorm, attention, ...). For
    ``"lstm-unit"`` an RNN whose use cannot be followed (initial state passed in, output
    reshaped across time steps, normalised, ...) is an error that says why. `example_inputs` is
    what the model is called with (a tensor, a tuple of arguments or a dict of keyword
    arguments); the model is traced with it and left unchanged.

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> [(g.name, g.num_units) for g in find_unit_groups(model, torch.ones(1, 4), "neuron")]
    [('0', 8)]
    """
    if granularity not in GRANULARITIES:
        raise unknown_name("granularity", granularity, GRANULARITIES)
    roots = [(n, m) for n, m in model.named_modules() if unit_granularity(m) == granularity]
    if not roots:
        raise PrunekitError(
            f"granularity '{granularity}' removes units of {_WHAT[granularity]}, but the model has "
            f"none; choose one of: " + ", ".join(g for g in GRANULARITIES if g != granularity)
        )
    if granularity == "lstm-unit":
        for name, module in roots:
            check_rnn_supported(name, module)
    found = _discover(model, example_inputs, exclude)
    if granularity == "lstm-unit":  # a skipped RNN is a usage prunekit does not understand: say so
        for name, module in roots:
            if name in found.problems:
                raise PrunekitError(
                    f"cannot remove hidden units of {type(module).__name__} '{name}': "
                    f"{found.problems[name]}. Feed output[:, t], output or h_n[-1] to Linear/RNN "
                    f"layers, possibly through element-wise ops, or exclude '{name}'"
                )
    return [g for g in found.groups if g.granularity == granularity]
