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
from collections.abc import Iterable, Mapping
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
from prunekit.graph.walk import walk_group
from prunekit.layers import unit_granularity
from prunekit.layers.base import slice_batch
from prunekit.layers.attention import attention_projections
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


def _check_reached(traced: TracedGraph, dep, excluded: set[nn.Module], attention: Mapping) -> bool:
    """Raise UnsupportedCoupling / ProtectedUnits when a group may not reach `dep`'s layer;
    False for torch-pruning's placeholder ops (add, cat, reshape, ...), which own no slices."""
    node, module = dep.target, dep.target.module
    is_out = traced.graph.is_out_channel_pruning_fn(dep.handler)
    if node.type == ops.OPTYPE.OUTPUT or (is_out and node.grad_fn in traced.output_grad_fns):
        raise ProtectedUnits("its units reach the model output")
    if node.type == ops.OPTYPE.SPLIT:
        return _check_split(traced, node)
    if node.type in _PASS_THROUGH:
        return False
    if node.type == ops.OPTYPE.PARAMETER:  # an nn.Parameter used directly (a layer scale, ...)
        if traced.graph._param_to_name.get(module) is None:
            raise UnsupportedCoupling(f"it reaches {node.name}, which is not a parameter of the model")
        return True
    name = traced.names.get(module)
    if name is None:
        raise UnsupportedCoupling(f"it reaches {node.name}, which is not a layer of the model")
    if is_out and module in excluded:
        raise ProtectedUnits(f"'{name}' is excluded")
    if module in attention:
        raise ProtectedUnits(
            f"'{name}' is a projection of attention '{attention[module]}', whose outputs are "
            "reshaped into heads (prune those with granularity 'head')"
        )
    return True


def _check_split(traced: TracedGraph, node) -> bool:
    """Splits along the units: a chunk keeps equal pieces if each loses the same units (True: the
    caller adds the slices that tie them); fixed sizes or unreadable pieces cannot shrink."""
    if node in traced.graph.unmapped_splits:
        raise UnsupportedCoupling("a split of them has a piece that is unused or read twice by one op")
    kind, widths = traced.graph.recorded.cuts[node.grad_fn]  # unmapped_splits covers unrecorded ones
    if kind == "split":
        raise UnsupportedCoupling(
            "they are split into pieces of fixed sizes (tensor.split): removing any would move the "
            "cut; torch.chunk adapts to the width and can be pruned"
        )
    if len(set(widths)) > 1:
        raise UnsupportedCoupling(f"they are chunked into unequal pieces ({widths} wide)")
    return True


def _chunk_batch(traced: TracedGraph, node, item) -> SliceBatch:
    """Ties unit j of every chunk together, so every chunk loses the same units and stays equal."""
    width = traced.graph.recorded.cuts[node.grad_fn][1][0]  # _check_split: all pieces this wide
    local = [idx % width for idx in item.idxs]
    return slice_batch(f"#chunk:{node.name}", 0, width, local, item.root_idxs)


def _collect(traced: TracedGraph, tp_group, excluded: set[nn.Module], attention: Mapping) -> list[SliceBatch]:
    """Slice batches of one torch-pruning group; raises UnsupportedCoupling to skip it."""
    batches = []
    for item in tp_group:
        if not _check_reached(traced, item.dep, excluded, attention):
            continue
        node = item.dep.target
        if node.type == ops.OPTYPE.SPLIT:
            batches.append(_chunk_batch(traced, node, item))
            continue
        if node.type == ops.OPTYPE.PARAMETER:
            param_name = traced.graph._param_to_name[node.module]
            size = node.module.shape[node.pruning_dim]
            batches.append(slice_batch(param_name, node.pruning_dim % node.module.dim(), size, item.idxs, item.root_idxs))
            continue
        is_out = traced.graph.is_out_channel_pruning_fn(item.dep.handler)
        batches += layer_slices(traced.names[node.module], node.module, is_out, item.idxs, item.root_idxs)
    return batches


def _trial_problem(traced: TracedGraph, group: UnitGroup) -> str | None:
    """RNN outputs are read in many ways (time steps, h_n, flattened, pooled), and parameters used
    outside any layer (layer scales, position tables) in ways the graph does not show: confirm
    that removing every other unit computes what masking them computes, or say why not."""
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
    protected: dict[str, str] = field(default_factory=dict)  # root name -> why never offered


def _add_group(traced: TracedGraph, name: str, root: nn.Module, excluded: set, found: _Discovery,
               attention: Mapping) -> None:  # fmt: skip
    graph = traced.graph
    width = graph.get_pruner_of_module(root).get_out_channels(root)
    found.covered.add(root)
    if root in excluded or root in attention:  # decided before any graph work
        found.protected[name] = "excluded" if root in excluded else f"a projection of attention '{attention[root]}'"
        return

    def visit(dep, idxs) -> None:
        _check_reached(traced, dep, excluded, attention)

    try:
        tp_group = walk_group(graph, root, list(range(width)), visit)
        batches = _collect(traced, tp_group, excluded, attention)
    except ProtectedUnits as reason:
        found.protected[name] = str(reason)
        return
    except UnsupportedCoupling as reason:
        found.problems[name] = str(reason)
        return
    except Exception as error:  # noqa: BLE001 - torch-pruning gives up on some patterns
        found.problems[name] = f"torch-pruning cannot follow it ({type(error).__name__}: {error})"
        return
    is_out = graph.is_out_channel_pruning_fn
    found.covered |= {item.dep.target.module for item in tp_group if is_out(item.dep.handler)}
    members, root_units = assemble_members(width, batches)
    group = UnitGroup(name, unit_granularity(root), int(root_units.max()) + 1, members, root_units)
    # parameters used outside layers, and layers run more than once (ALBERT shares one layer across
    # its depth), are used in ways the graph may not show in full: a trial removal confirms them
    unsure = any(item.dep.target.type == ops.OPTYPE.PARAMETER or item.dep.target.module in traced.reused
                 for item in tp_group)  # fmt: skip
    problem = _trial_problem(traced, group) if unsure or isinstance(root, nn.RNNBase) else None
    if problem is not None:
        found.problems[name] = problem
        return
    found.groups.append(group)


def _discover(model: nn.Module, example_inputs: object, exclude: Iterable[str | type]) -> _Discovery:
    excluded = _resolve_exclude(model, exclude)
    attention = attention_projections(model)
    traced = trace_graph(model, example_inputs)
    found = _Discovery()
    for name, module in model.named_modules():
        traced_layer = module in traced.graph.module2node  # unused layers are not traced
        if unit_granularity(module) and module not in found.covered and traced_layer:
            _add_group(traced, name, module, excluded, found, attention)
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
    model: nn.Module, example_inputs: object, granularity: str, exclude: Iterable[str | type] = (),
    *, refuse_empty: bool = False,
) -> list[UnitGroup]:
    """The groups of coupled units of `granularity` that can be removed from `model`.

    `granularity` is ``"neuron"`` (outputs of nn.Linear), ``"channel"`` (output channels of
    nn.Conv1d/2d/3d) or ``"lstm-unit"`` (hidden units of nn.LSTM/GRU/RNN). Units feeding the
    model output, and outputs of layers named (or typed) in `exclude`, are never offered; nor are
    units coupled to layers prunekit cannot shrink consistently (LayerNorm, attention, ...). For
    ``"lstm-unit"`` an RNN whose use cannot be followed (initial state passed in, output
    reshaped across time steps, normalised, ...) is an error that says why. `example_inputs` is
    what the model is called with (a tensor, a tuple of arguments or a dict of keyword
    arguments); the model is traced with it and left unchanged. With `refuse_empty`, finding no
    group is an error that names each layer of the granularity and why it was not offered.

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
    groups = [g for g in found.groups if g.granularity == granularity]
    if not groups and refuse_empty:
        raise _nothing_found(model, granularity, roots, found)
    return groups


def _nothing_found(model: nn.Module, granularity: str, roots: list, found: _Discovery) -> PrunekitError:
    """The refusal when no root of `granularity` gave a group: each layer and why."""
    reasons = {**found.protected, **found.problems}
    listed = [f"'{name}': {reasons[name]}" for name, _ in roots if name in reasons]
    shown = "; ".join(listed[:6]) + (f"; and {len(listed) - 6} more" if len(listed) > 6 else "")
    return PrunekitError(
        f"found no removable {granularity} units in {type(model).__name__}: {shown or 'none is traced'}. "
        "Units feeding the model output are never removed; exclude the layers named here, or use "
        "another granularity ('unstructured' works on every model)"
    )
