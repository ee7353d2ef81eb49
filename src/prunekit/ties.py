"""Tied parameters: one tensor held by several modules (an LM head sharing the input embedding).

Masks must treat every name of such a tensor alike, or the uses would disagree (the head pruned,
the embedding not); ``masking.apply_masks`` spreads each mask to all names with ``spread_to_ties``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import reduce

import torch
from torch import nn
from torch.nn.utils import parametrize


def tied_names(model: nn.Module) -> dict[str, list[str]]:
    """For every parameter held by more than one module (tied weights, e.g. an LM head sharing the
    input embedding), its name -> all names of that one tensor, in module order.

    >>> embed, head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
    >>> head.weight = embed.weight
    >>> tied_names(nn.ModuleDict({"embed": embed, "head": head}))["head.weight"]
    ['embed.weight', 'head.weight']
    """
    holders: dict[int, list[str]] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue
        prefix = f"{module_name}." if module_name else ""
        params = dict(module._parameters)
        if parametrize.is_parametrized(module):
            params |= {name: module.parametrizations[name].original for name in module.parametrizations}
        for param_name, param in params.items():
            if param is not None:
                holders.setdefault(id(param), []).append(prefix + param_name)
    return {name: names for names in holders.values() if len(names) > 1 for name in names}


def spread_to_ties(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`masks` with every name of a tied tensor masked by the AND of the masks given for its names.

    >>> embed, head = nn.Embedding(2, 1), nn.Linear(1, 2, bias=False)
    >>> head.weight = embed.weight
    >>> model = nn.ModuleDict({"embed": embed, "head": head})
    >>> spread = spread_to_ties(model, {"head.weight": torch.tensor([[True], [False]])})
    >>> sorted(spread), spread["embed.weight"].flatten().tolist()
    (['embed.weight', 'head.weight'], [True, False])
    """
    ties = tied_names(model)
    spread = dict(masks)
    for fqn in masks:
        aliases = ties.get(fqn, ())
        given = [masks[alias] for alias in aliases if alias in masks]
        if given:
            spread.update(dict.fromkeys(aliases, reduce(torch.logical_and, given)))
    return spread
