"""Apply, read and bake keep-masks through torch.nn.utils.parametrize.

A mask is a bool tensor shaped like its parameter (True = keep), keyed by the parameter's dotted
name as it appears in the *unpruned* model (``"fc1.weight"``), so masks serialise and replay.
While a mask is attached the module computes ``weight = original * keep_mask`` on every access:
pruned entries are exactly zero in the forward pass and their gradients are zero, whatever the
optimiser does (momentum, Adam, weight decay), and the original values stay available (for
relative sparsity and for lottery-ticket rewinding). ``bake`` turns the model back into plain
parameters holding the zeros, so its state_dict loads into the unpruned architecture.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import PrunekitError

Masks = dict[str, torch.Tensor]


class KeepMask(nn.Module):
    """Parametrization that multiplies a parameter by a fixed bool keep-mask."""

    def __init__(self, keep_mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("keep_mask", keep_mask.detach().clone().to(torch.bool))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.keep_mask


def split_name(fqn: str) -> tuple[str, str]:
    """Split ``"block.0.weight"`` into ``("block.0", "weight")``.

    >>> split_name("fc1.weight")
    ('fc1', 'weight')
    """
    module_name, _, param_name = fqn.rpartition(".")
    return module_name, param_name


def named_effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every parameter as the forward pass sees it.

    Parametrized parameters are reported under their plain name (``fc1.weight``, not
    ``fc1.parametrizations.weight.original``) with the mask applied.

    >>> model = nn.Linear(2, 2)
    >>> [name for name, _ in named_effective_parameters(model)]
    ['weight', 'bias']
    """
    for module_name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # its `original` is reported through the owning module below
        prefix = f"{module_name}." if module_name else ""
        for param_name, param in module._parameters.items():
            if param is not None:
                yield prefix + param_name, param
        if parametrize.is_parametrized(module):
            for param_name in module.parametrizations:
                yield prefix + param_name, getattr(module, param_name)


def original_parameter(model: nn.Module, fqn: str) -> torch.Tensor:
    """The stored (unmasked) values of parameter `fqn`; the parameter itself if unmasked."""
    module = model.get_submodule(split_name(fqn)[0])
    param_name = split_name(fqn)[1]
    if parametrize.is_parametrized(module, param_name):
        return module.parametrizations[param_name].original
    return getattr(module, param_name)


def _mask_parametrization(module: nn.Module, param_name: str) -> KeepMask | None:
    if not parametrize.is_parametrized(module, param_name):
        return None
    for item in module.parametrizations[param_name]:
        if isinstance(item, KeepMask):
            return item
    return None


def validate_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Raise PrunekitError if any mask names a missing parameter or has the wrong shape."""
    known = dict(named_effective_parameters(model))
    for fqn, keep_mask in masks.items():
        if fqn not in known:
            raise PrunekitError(
                f"mask for '{fqn}' names no parameter of the model; "
                f"masks must be keyed by parameter names such as '{next(iter(known), 'weight')}'"
            )
        if tuple(keep_mask.shape) != tuple(known[fqn].shape):
            raise PrunekitError(
                f"mask for '{fqn}' has shape {tuple(keep_mask.shape)} but the parameter has shape "
                f"{tuple(known[fqn].shape)}; build masks from this model's parameters"
            )


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach keep-masks to `model` in place; a second mask on a parameter is ANDed in.

    All masks are validated before the model is touched.

    >>> model = nn.Linear(2, 2)
    >>> _ = apply_masks(model, {"weight": torch.tensor([[True, False], [False, True]])})
    >>> int((model.weight == 0).sum())
    2
    """
    validate_masks(model, masks)
    for fqn, keep_mask in masks.items():
        module_name, param_name = split_name(fqn)
        module = model.get_submodule(module_name)
        existing = _mask_parametrization(module, param_name)
        device = original_parameter(model, fqn).device
        if existing is not None:
            existing.keep_mask.logical_and_(keep_mask.to(device=device, dtype=torch.bool))
        else:
            parametrize.register_parametrization(
                module, param_name, KeepMask(keep_mask.to(device)), unsafe=True
            )
    return model


def get_masks(model: nn.Module) -> Masks:
    """Return a copy of every keep-mask attached to `model`, keyed by parameter name."""
    masks: Masks = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        prefix = f"{module_name}." if module_name else ""
        for param_name in module.parametrizations:
            keep = _mask_parametrization(module, param_name)
            if keep is not None:
                masks[prefix + param_name] = keep.keep_mask.detach().clone()
    return masks


def _bake_module(module: nn.Module) -> None:
    """Replace every KeepMask-only parametrization of `module` by a plain parameter.

    torch's ``remove_parametrizations`` deletes the property from the module's class, and
    ``copy.deepcopy`` of a parametrized module shares that class with the original: baking a copy
    would break the original. Swapping the instance's class back leaves the shared class alone.
    """
    names = list(module.parametrizations)
    mask_only = all(
        len(module.parametrizations[name]) == 1 and _mask_parametrization(module, name) is not None
        for name in names
    )
    if not mask_only:
        for name in names:
            if _mask_parametrization(module, name) is not None:
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        return
    baked = {}
    for name in names:
        original = module.parametrizations[name].original
        value = getattr(module, name).detach().clone()
        baked[name] = nn.Parameter(value, requires_grad=original.requires_grad)
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for name, param in baked.items():
        module._parameters[name] = param
    if isinstance(module, nn.RNNBase):
        module._init_flat_weights()


def bake(model: nn.Module) -> nn.Module:
    """Make the masks permanent: plain parameters holding zeros, no parametrizations left.

    The resulting state_dict loads into a fresh, unpruned instance of the same architecture.
    Safe on a ``copy.deepcopy`` of a masked model (the original keeps its masks).

    >>> model = apply_masks(nn.Linear(2, 2), {"weight": torch.zeros(2, 2, dtype=torch.bool)})
    >>> sorted(bake(model).state_dict())
    ['bias', 'weight']
    """
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            _bake_module(module)
    return model
