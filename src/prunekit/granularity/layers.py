"""Whole blocks (residual blocks f(x) + x, transformer layers) as units (see ``prunekit.graph.blocks``).

One group per list of removable blocks (a ResNet stage, an encoder's layer list), and one shared
group for the layers of config-counted lists that keep a layer they cannot lose (T5's first block,
Swin's and Hugging Face ResNet's first block of a stage), so a stage with a single removable layer
can still lose it. Every group keeps at least one block, so no list is ever emptied. Global scope
(the default here) takes the stated share of all blocks, layer scope of each group. Evidence from
data is the loss increase when a block alone is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph.block_masks import check_masked_together
from prunekit.graph.layers import block_mask_params, masked_equivalent, no_blocks_error, remove_layers, search_blocks
from prunekit.graph.record import ShrinkRecord
from prunekit.graph.types import Member, UnitGroup
from prunekit.granularity.base import Granularity, Keep
from prunekit.masking import named_effective_parameters
from prunekit.targets import excluded_module_names
from prunekit.types import Evidence

_OTHER_GRANULARITY = ". Choose 'neuron' or 'channel' for this model"


def _members(model: nn.Module, blocks: list) -> tuple[Member, ...]:
    """Per block, the parameters that mask it (blocks without a masked equivalent have none)."""
    shapes = {name: param.shape for name, param in named_effective_parameters(model)}
    members = []
    for unit, block in enumerate(blocks):
        params, _ = masked_equivalent(model, block)
        members += [Member(param, 0, torch.full((shapes[param][0],), unit)) for param in params]
    return tuple(members)


SHARED_GROUP = "(layers of config-counted lists that keep others)"  # not a module name: no clash


def _stacks(model: nn.Module, search, candidates: list[str]) -> dict[str, list[str]]:
    """Candidates by the list they sit in; the layers of config-counted lists that keep a layer
    they cannot lose share one group (such a list is never emptied, whatever goes)."""
    chosen, stacks = set(candidates), {}
    for name in candidates:
        parent = name.rpartition(".")[0]
        siblings = [f"{parent}.{child}" if parent else child for child, _ in model.get_submodule(parent).named_children()]
        shared = search.blocks[name].kind == "counted" and not all(sibling in chosen for sibling in siblings)
        stacks.setdefault(SHARED_GROUP if shared else parent, []).append(name)
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
    default_method = "removal-cost"

    def find(self, model: nn.Module, example_inputs: object, exclude: Sequence) -> list[UnitGroup]:
        excluded = excluded_module_names(model, exclude)
        search = search_blocks(model, example_inputs)
        if not search.blocks:
            raise no_blocks_error(model, search, _OTHER_GRANULARITY)
        candidates = [name for name in search.blocks if name not in excluded]
        stacks = _stacks(model, search, candidates)
        if all(len(blocks) < 2 for blocks in stacks.values()):
            refused = "".join(f"; '{name}' is not removable: {why}" for name, why in list(search.refused.items())[:2])
            raise PrunekitError(
                f"{type(model).__name__} has {len(candidates)} removable block(s) left after exclusions, "
                "none two in one stack; layer pruning keeps at least one block of each stack, so there is "
                f"nothing to remove{refused}"
            )
        return [
            UnitGroup(stack, self.name, len(blocks), _members(model, [search.blocks[name] for name in blocks]),
                      torch.arange(len(blocks)), unit_names=tuple(blocks))
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
        for group in groups:
            covered = {int(unit) for member in group.members for unit in member.unit_index.tolist()}
            for unit, (name, kept) in enumerate(zip(group.unit_names, keep[group.name].tolist())):
                if not kept and unit not in covered:
                    block_mask_params(model, name)  # raises why it has no masked equivalent
                    raise PrunekitError(f"'{name}' has no masked equivalent here; prune with remove=True")
        removed = _removed(groups, keep)
        check_masked_together(model, removed)
        return super().to_masks(model, groups, keep) if removed else {}

    def remove(self, model: nn.Module, groups: Sequence[UnitGroup], keep: Keep, example_inputs: object,
               check: bool = True) -> ShrinkRecord:
        removed = _removed(groups, keep)
        return remove_layers(model, removed, example_inputs, check) if removed else ShrinkRecord()

    def unit_magnitude(self, model: nn.Module, groups: Sequence[UnitGroup]) -> dict[str, torch.Tensor]:
        return {
            group.name: torch.tensor([
                sum(float(tensor.detach().abs().sum()) for _, tensor in named_effective_parameters(model.get_submodule(name)))
                for name in group.unit_names
            ], dtype=torch.float64)
            for group in groups
        }
