"""Whole blocks (identity-shortcut residual blocks, transformer encoder layers) as units.

One group per stack of removable blocks (a ResNet stage, an encoder's layer list): global scope
(the default here) takes the stated share of all blocks, layer scope of each stack; every stack
keeps at least one of its removable blocks. Evidence from data is the loss increase when a block alone is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph.layers import block_mask_params, find_layer_candidates, layer_masks, remove_layers
from prunekit.graph.record import ShrinkRecord
from prunekit.graph.types import Member, UnitGroup
from prunekit.granularity.base import Granularity, Keep
from prunekit.masking import named_effective_parameters
from prunekit.targets import excluded_module_names
from prunekit.types import Evidence


def _members(model: nn.Module, blocks: list[str]) -> tuple[Member, ...]:
    """Per block, the parameters that mask it (blocks without a masked equivalent have none)."""
    shapes = {name: param.shape for name, param in named_effective_parameters(model)}
    members = []
    for unit, block in enumerate(blocks):
        try:
            params = block_mask_params(model, block)
        except PrunekitError:
            continue
        members += [Member(param, 0, torch.full((shapes[param][0],), unit)) for param in params]
    return tuple(members)


def _stacks(candidates: list[str]) -> dict[str, list[str]]:
    stacks: dict[str, list[str]] = {}
    for name in candidates:
        stacks.setdefault(name.rpartition(".")[0], []).append(name)
    return stacks


def _removed(groups: Sequence[UnitGroup], keep: Keep) -> list[str]:
    return [name for group in groups for name, kept in zip(group.unit_names, keep[group.name].tolist()) if not kept]


class LayerGranularity(Granularity):
    """Blocks whose removal keeps every shape (see ``prunekit.graph.layers``).

    >>> from prunekit.zoo import build_model
    >>> groups = LayerGranularity().find(build_model("resnet20", (1, 8, 8), 10), torch.zeros(1, 1, 8, 8), ())
    >>> [(g.name, g.unit_names) for g in groups][0]
    ('layer1', ('layer1.0', 'layer1.1', 'layer1.2'))
    """

    name = unit = "layer"
    provides = frozenset({"removal_cost"})
    collectors = MappingProxyType({"removal-loss": "removal-loss"})
    normalize = False
    supports_round_to = False
    default_scope = "global"

    def find(self, model: nn.Module, example_inputs: object, exclude: Sequence) -> list[UnitGroup]:
        excluded = excluded_module_names(model, exclude)
        found = find_layer_candidates(model, example_inputs)
        if not found:
            raise PrunekitError(
                f"granularity 'layer' needs removable blocks; {type(model).__name__} has none "
                "(prunekit removes identity-shortcut residual blocks, nn.TransformerEncoderLayer and "
                "Hugging Face encoder layers). Choose 'neuron' or 'channel' for this model"
            )
        candidates = [name for name in found if name not in excluded]
        stacks = _stacks(candidates)
        if all(len(blocks) < 2 for blocks in stacks.values()):
            raise PrunekitError(
                f"{type(model).__name__} has {len(candidates)} removable block(s) left after exclusions, "
                "none two in one stack; layer pruning keeps at least one block of each stack, so there "
                "is nothing to remove"
            )
        return [
            UnitGroup(stack, self.name, len(blocks), _members(model, blocks), torch.arange(len(blocks)),
                      unit_names=tuple(blocks))
            for stack, blocks in stacks.items()
        ]

    def probes(self, model: nn.Module, groups: Sequence[UnitGroup], kind: str) -> list:
        return [name for group in groups for name in group.unit_names]

    def evidence(self, model: nn.Module, groups: Sequence[UnitGroup], observed: Mapping) -> dict[str, Evidence]:
        evidence = {}
        for group in groups:
            cost = torch.tensor([observed[name] for name in group.unit_names]) if observed else None
            evidence[group.name] = Evidence((group.num_units,), removal_cost=cost)
        return evidence

    def to_masks(self, model: nn.Module, groups: Sequence[UnitGroup], keep: Keep) -> dict[str, torch.Tensor]:
        removed = _removed(groups, keep)
        return layer_masks(model, removed) if removed else {}

    def remove(self, model: nn.Module, groups: Sequence[UnitGroup], keep: Keep, example_inputs: object,
               check: bool = True) -> ShrinkRecord:
        removed = _removed(groups, keep)
        return remove_layers(model, removed) if removed else ShrinkRecord()

    def unit_magnitude(self, model: nn.Module, groups: Sequence[UnitGroup]) -> dict[str, torch.Tensor]:
        return {
            group.name: torch.tensor([
                sum(float(tensor.detach().abs().sum()) for _, tensor in named_effective_parameters(model.get_submodule(name)))
                for name in group.unit_names
            ], dtype=torch.float64)
            for group in groups
        }
