"""The masked equivalent of removing a block: which parameters to zero so the block computes
exactly what its removal leaves (where such parameters exist).

* zoo / torchvision residual block: the residual branch's last BatchNorm (weight and bias), so the
  block returns ``relu(0 + x) = x`` for the non-negative (post-ReLU) inputs it gets in a ResNet;
* pre-norm ``nn.TransformerEncoderLayer``: the attention output projection and the second
  feed-forward linear, so both residual branches add exactly zero;
* a block found by running the model, or a config-counted layer that returned its input with all
  its parameters zero on the example inputs (pre-norm transformer layers, inverted residuals):
  all its parameters (a config-counted layer is only removable when the layers that move up
  compute as before, see :mod:`prunekit.graph.stacks`).

Post-norm layers (BERT's, ``nn.TransformerEncoderLayer`` by default) have none: a norm after the
residual sum cannot be made the identity by zeroing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph.blocks import SHORTCUT_ATTRS, Block, resolve_blocks, search_blocks
from prunekit.graph.stacks import INDEX_ONLY_ATTRIBUTES, counted_changes, counted_stacks
from prunekit.masking import named_effective_parameters


def _residual_branch_norm(name: str, block: nn.Module) -> str | None:
    skip = tuple(f"{attr}." for attr in SHORTCUT_ATTRS)
    norms = [
        sub_name
        for sub_name, module in block.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine
        and not any(sub_name.startswith(prefix) or sub_name == prefix[:-1] for prefix in skip)
    ]  # fmt: skip
    return f"{name}.{norms[-1]}" if norms else None


def _all_params(model: nn.Module, name: str) -> list[str]:
    params = dict(named_effective_parameters(model.get_submodule(name)))
    scalars = [param for param, tensor in params.items() if tensor.dim() == 0]
    if scalars:
        raise PrunekitError(f"'{name}' has scalar parameters ({', '.join(scalars)}), which keep-masks do not "
                            "cover; remove it physically (remove=True / remove_layers)")
    return [f"{name}.{param}" for param in params]


def _counted_refusal(block: Block) -> str | None:
    stack = block.counted
    if not block.zeroed_identity:
        return ("zeroing all its parameters did not make it return its input on the example inputs (a norm "
                "after the residual sum, as in post-norm layers like BERT's, or no example_inputs given)")
    if not stack.fresh:
        return "the model could not be rebuilt from its config to check what moves when it goes"
    return None


def _params(model: nn.Module, block: Block) -> list[str]:
    module = model.get_submodule(block.name)
    if block.kind == "residual":
        norm = _residual_branch_norm(block.name, module)
        if norm is not None:
            return [f"{norm}.weight", f"{norm}.bias"]
        if block.zeroed_identity:
            return _all_params(model, block.name)
        raise PrunekitError(
            f"block '{block.name}' has no affine BatchNorm in its residual branch, so it has no masked "
            "equivalent; remove it with remove_layers instead")
    if block.kind == "transformer":
        if not module.norm_first:
            raise PrunekitError(
                f"'{block.name}' is a post-norm transformer layer: masking cannot turn it into the identity, "
                "so it has no masked equivalent; use remove_layers")
        params = []
        for linear in ("self_attn.out_proj", "linear2"):
            kinds = ["weight"] + ["bias"] * (module.get_submodule(linear).bias is not None)
            params += [f"{block.name}.{linear}.{kind}" for kind in kinds]
        return params
    refusal = _counted_refusal(block) if block.kind == "counted" else None
    if refusal:
        raise PrunekitError(f"'{block.name}' has no masked equivalent: {refusal}; remove it physically "
                            "(remove=True / remove_layers)")
    return _all_params(model, block.name)


def check_masked_together(model: nn.Module, names: Iterable[str]) -> None:
    """Masking several layers of a config-counted list stands for removing them together, which
    moves the others further than removing any one alone: refuse when that changes what a moved
    layer computes (its window shift, say), which masking cannot reproduce.

    >>> from prunekit.zoo import build_model
    >>> check_masked_together(build_model("resnet20", (3, 8, 8), 10), ["layer1.1"])  # no config: nothing to check
    """
    names, stacks, removals = list(names), counted_stacks(model), {}
    for name in names:
        stack_name, _, index = name.rpartition(".")
        if stack_name in stacks:
            removals.setdefault(stack_name, (stacks[stack_name], []))[1].append(int(index))
    if not removals:
        return
    for target, attr, _ in counted_changes(model, removals):
        if isinstance(target, nn.Module) and attr not in INDEX_ONLY_ATTRIBUTES:
            raise PrunekitError(
                f"removing {', '.join(names)} together moves later layers to places that give their "
                f"{type(target).__name__} another {attr}, so masking them does not compute what removing "
                "them does; remove them physically (remove=True / remove_layers)")


def block_mask_params(model: nn.Module, name: str, example_inputs: object = None) -> list[str]:
    """The parameters whose masking makes block `name` compute what removing it computes (see the
    module docstring); `example_inputs` are needed for blocks found by running the model.

    >>> from prunekit.zoo import build_model
    >>> block_mask_params(build_model("resnet20", (3, 8, 8), 10), "layer1.1")
    ['layer1.1.bn2.weight', 'layer1.1.bn2.bias']
    """
    if not isinstance(name, str):
        raise PrunekitError(f"block_mask_params takes one block name, got {type(name).__name__}")
    search = search_blocks(model, example_inputs)  # with inputs: seen returning its input when zeroed
    (block,) = resolve_blocks(model, [name], leaves_some=False, search=search)
    return _params(model, block)


def layer_masks(model: nn.Module, names: Iterable[str], example_inputs: object = None) -> dict[str, torch.Tensor]:
    """Keep-masks that make the named blocks compute what removing them computes (see
    :func:`block_mask_params`); an error names a block without a masked equivalent.

    >>> from prunekit.zoo import build_model
    >>> sorted(layer_masks(build_model("resnet20", (3, 8, 8), 10), ["layer1.1"]))
    ['layer1.1.bn2.bias', 'layer1.1.bn2.weight']
    """
    blocks = resolve_blocks(model, names, search=search_blocks(model, example_inputs))
    params = [param for block in blocks for param in _params(model, block)]
    check_masked_together(model, [block.name for block in blocks])
    shapes = {name: param.shape for name, param in named_effective_parameters(model)}
    return {param: torch.zeros(shapes[param], dtype=torch.bool) for param in params}


def masked_equivalent(model: nn.Module, block: Block) -> tuple[list[str], str | None]:
    """``(parameters, None)`` when `block` has a masked equivalent, else ``([], why not)``."""
    try:
        return _params(model, block), None
    except PrunekitError as error:
        return [], str(error)
