"""Walk torch-pruning's dependency graph from one root layer, with a bound and early stops.

torch-pruning's own ``get_pruning_group`` follows dependencies until no new (layer, indices)
pair appears. Through some patterns the indices never settle (grouped-query attention repeats
key/value heads with expand + reshape, and each lap maps the indices somewhere new), so the walk
never returns. This walk follows the same rules, but

* stops after a fixed number of steps (``MAX_STEPS``; real groups need a few hundred) and says so;
* calls ``visit(dependency, indices)`` for every layer it reaches, so the caller can stop at the
  first excluded, protected or unsupported layer instead of exploring the whole model first.

The result is torch-pruning's ``Group`` (merged, with ``root_idxs`` per item), as
``get_pruning_group`` returns it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn
from torch_pruning import _helpers, ops
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.group import Group
from torch_pruning.pruner import function

from prunekit.layers.base import UnsupportedCoupling

#: Steps after which a walk is abandoned; a ResNet-50 stage's residual group takes ~200.
MAX_STEPS = 5000

Visit = Callable[[Dependency, list], None]


class WalkDidNotSettle(UnsupportedCoupling):
    """The walk kept finding new index sets (see module docstring)."""


def _expand(group: Group, start: tuple, visit: Visit | None, max_steps: int) -> None:
    stack, visited, steps = [start], set(), 0
    while stack:
        steps += 1
        if steps > max_steps:
            raise WalkDidNotSettle(
                f"the dependency graph walk did not settle after {max_steps} steps (its indices keep "
                "changing, as through grouped-query attention's repeated key/value heads)"
            )
        dep, idxs = stack.pop()
        node, fn = dep.target, dep.handler
        visited.add(node)
        for new_dep in node.dependencies:
            if not new_dep.is_triggered_by(fn):
                continue
            new_idxs = idxs
            for mapping in new_dep.index_mapping:
                if mapping is not None:
                    new_idxs = mapping(new_idxs)
            if len(new_idxs) == 0:
                continue
            if new_dep.target in visited and group.has_pruning_op(new_dep, new_idxs):
                continue
            if visit is not None:
                visit(new_dep, new_idxs)
            group.add_dep(new_dep, new_idxs)
            stack.append((new_dep, new_idxs))


def walk_group(graph, module: nn.Module, idxs: Sequence[int], visit: Visit | None = None,
               max_steps: int = MAX_STEPS) -> Group:  # fmt: skip
    """The group of everything that changes with output indices `idxs` of `module`.

    `graph` is a built ``torch_pruning.DependencyGraph``; `visit` may raise to stop the walk.
    Raises ``WalkDidNotSettle`` after `max_steps`.

    >>> import torch, torch_pruning as tp
    >>> model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    >>> graph = tp.DependencyGraph().build_dependency(model, torch.ones(1, 2), verbose=False)
    >>> group = walk_group(graph, model[0], [1])
    >>> [(item.dep.target.module is model[1], item.idxs) for item in group if item.dep.target.module in model]
    [(False, [1]), (True, [1])]
    """
    pruning_fn = graph.get_pruner_of_module(module).prune_out_channels
    depthwise = isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels > 1
    if depthwise:
        pruning_fn = function.prune_depthwise_conv_out_channels
    hybrid = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
    index_mapping.update_index_mapping(graph)
    group = Group()
    root = graph.module2node[module]
    group.add_dep(Dependency(pruning_fn, pruning_fn, source=root, target=root), hybrid)
    _expand(group, group[0], visit, max_steps)
    merged = Group()
    for dep, item_idxs in group.items:
        ignored = isinstance(dep.target.module, nn.Parameter) and any(
            dep.target.module is param for param in graph.ignored_params
        )
        if not ignored:
            merged.add_and_merge(dep, item_idxs)
    merged._DG = graph
    for position, item in enumerate(merged):
        plain = _helpers.GroupItem(item.dep, _helpers.to_plain_idxs(item.idxs))
        plain.root_idxs = _helpers.to_root_idxs(item.idxs)
        merged[position] = plain
    return merged
