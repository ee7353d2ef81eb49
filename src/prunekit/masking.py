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

import copy
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import PrunekitError
from prunekit.layers import handler_for
from prunekit.ties import spread_to_ties, tied_names

Masks = dict[str, torch.Tensor]


class KeepMask(nn.Module):
    """Parametrization that multiplies a parameter by a fixed bool keep-mask.

    `owner` is the token of the ``prunekit.Pruner`` that manages the mask while it lives (None:
    nobody; the mask just stays). `param_order` remembers the module's parameter names in their
    original order, so unmasking puts them back in it (optimiser state is matched by position).
    Neither is part of the state_dict.
    """

    def __init__(self, keep_mask: torch.Tensor, owner: str | None = None, param_order: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.register_buffer("keep_mask", keep_mask.detach().clone().to(torch.bool))
        self.owner = owner
        self.param_order = param_order

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.keep_mask

    # The interface masks and gates share (``prunekit.gates.GatedMask`` overrides both): what
    # the parameter is multiplied by once training is over, and which entries that leaves.

    def factor(self) -> torch.Tensor:
        """What ``bake`` multiplies the stored values by: the keep-mask (0 / 1)."""
        return self.keep_mask

    def effective_keep(self) -> torch.Tensor:
        """True where the baked parameter is not forced to zero (reported by ``get_masks``)."""
        return self.keep_mask


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
    inside = set()  # parametrizations and what they hold (a gate's logits are not model parameters)
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList):
            inside.update(id(part) for part in module.modules())
    for module_name, module in model.named_modules():
        if id(module) in inside:
            continue  # a parametrized `original` is reported through the owning module below
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


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own before another parametrization is added.

    torch adds one property per parametrized tensor to the module's class, and
    ``copy.deepcopy`` of a parametrized module shares that class with the original: a mask
    added to the copy would otherwise appear (broken) on the original too.
    """
    if parametrize.is_parametrized(module):
        cls = type(module)
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], owner: str | None = None) -> nn.Module:
    """Attach keep-masks to `model` in place; a second mask on a parameter is ANDed in.

    All masks are validated before the model is touched. With an `owner`, every mask touched
    becomes that owner's (see :class:`KeepMask`); a mask another owner manages is refused. The
    parameter object itself moves into the
    parametrization (``<module>.parametrizations.<name>.original``), so an optimiser built before
    keeps updating it.

    >>> model = nn.Linear(2, 2)
    >>> _ = apply_masks(model, {"weight": torch.tensor([[True, False], [False, True]])})
    >>> int((model.weight == 0).sum())
    2
    """
    validate_masks(model, masks)
    masks = spread_to_ties(model, masks)
    if owner is not None:
        refuse_foreign_masks(model, owner, masks)
    shared: dict[int, torch.Tensor] = {}  # tied names share one mask tensor, seen by every use
    for fqn, keep_mask in masks.items():
        module_name, param_name = split_name(fqn)
        module = model.get_submodule(module_name)
        existing = _mask_parametrization(module, param_name)
        device = original_parameter(model, fqn).device
        if existing is not None:
            existing.keep_mask.logical_and_(keep_mask.to(device=device, dtype=torch.bool))
            existing.owner = owner if owner is not None else existing.owner
        else:
            tensor = original_parameter(model, fqn)
            keep = KeepMask(keep_mask.to(device), owner, _param_order(module))
            keep.keep_mask = shared.setdefault(id(tensor), keep.keep_mask)
            _own_class(module)
            parametrize.register_parametrization(module, param_name, keep, unsafe=True)
    return model


def _param_order(module: nn.Module) -> tuple[str, ...]:
    """The module's parameter names in their original order (before any was parametrized)."""
    if parametrize.is_parametrized(module):
        for name in module.parametrizations:
            keep = _mask_parametrization(module, name)
            if keep is not None and keep.param_order:
                return keep.param_order
    return tuple(module._parameters)


def _keep_masks(model: nn.Module) -> Iterator[tuple[str, KeepMask]]:
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        prefix = f"{module_name}." if module_name else ""
        for param_name in module.parametrizations:
            keep = _mask_parametrization(module, param_name)
            if keep is not None:
                yield prefix + param_name, keep


def mask_owners(model: nn.Module) -> dict[str, str | None]:
    """``{parameter name: owner token or None}`` for every mask attached to `model`.

    >>> mask_owners(apply_masks(nn.Linear(2, 2), {"weight": torch.ones(2, 2, dtype=torch.bool)}, "p1"))
    {'weight': 'p1'}
    """
    return {name: keep.owner for name, keep in _keep_masks(model)}


def refuse_foreign_masks(model: nn.Module, owner: str | None, names: Iterable[str] | None = None) -> None:
    """Raise PrunekitError if a mask on `model` (of `names`, or any) is managed by a Pruner other
    than `owner` (None: by any Pruner).

    >>> model = apply_masks(nn.Linear(2, 2), {"weight": torch.ones(2, 2, dtype=torch.bool)}, "p1")
    >>> refuse_foreign_masks(model, "p1")
    """
    wanted = None if names is None else set(names)
    foreign = [name for name, who in mask_owners(model).items()
               if who is not None and who != owner and (wanted is None or name in wanted)]
    if foreign:
        raise PrunekitError(
            f"'{foreign[0]}' carries a mask managed by another live Pruner; call finalize() or release() "
            "on that Pruner first (or prunekit.masking.release_masks(model)). The model was not changed"
        )


def release_masks(model: nn.Module, owner: str | None = None) -> None:
    """Make the masks of `owner` (every mask when None) nobody's: they stay attached, and any
    ``Pruner`` may prune the model further.

    >>> model = apply_masks(nn.Linear(2, 2), {"weight": torch.ones(2, 2, dtype=torch.bool)}, "p1")
    >>> release_masks(model); mask_owners(model)
    {'weight': None}
    """
    for _, keep in _keep_masks(model):
        if owner is None or keep.owner == owner:
            keep.owner = None


def get_masks(model: nn.Module) -> Masks:
    """Return a copy of every keep-mask attached to `model`, keyed by parameter name."""
    return {name: keep.effective_keep().detach().clone() for name, keep in _keep_masks(model)}


def gated_names(model: nn.Module) -> list[str]:
    """The parameters whose mask also holds learned gates (see :func:`fold_gates`).

    >>> gated_names(nn.Linear(2, 2))
    []
    """
    return [fqn for fqn, keep in _keep_masks(model) if type(keep) is not KeepMask]


def fold_gates(model: nn.Module) -> list[str]:
    """Turn every learned gate on `model` into a plain keep-mask: the stored values of kept
    entries are multiplied by their gate's deterministic value (so the model in eval mode
    computes exactly what it did), entries whose gate is zero are masked. Returns the names.

    >>> fold_gates(nn.Linear(2, 2))
    []
    """
    folded = []
    for fqn, keep in list(_keep_masks(model)):
        if type(keep) is KeepMask:
            continue
        module_name, param_name = split_name(fqn)
        module = model.get_submodule(module_name)
        with torch.no_grad():
            original = module.parametrizations[param_name].original
            original.mul_(keep.factor().to(original.dtype))
        plain = KeepMask(keep.effective_keep(), keep.owner, keep.param_order)
        items = module.parametrizations[param_name]
        items[list(items).index(keep)] = plain
        folded.append(fqn)
    return folded


def _unmask_module(module: nn.Module, names: list[str], bake_zeros: bool) -> None:
    """Replace the KeepMask-only parametrizations `names` of `module` by plain parameters: the
    same parameter objects, holding the masked values (`bake_zeros`) or the stored originals.

    torch's ``remove_parametrizations`` deletes the property from the module's class, and
    ``copy.deepcopy`` of a parametrized module shares that class with the original: unmasking a
    copy would break the original. Swapping the instance's class back leaves the shared class alone.
    """
    other = [name for name in module.parametrizations if name not in names]
    mask_only = all(len(module.parametrizations[name]) == 1 for name in names)
    if other or not mask_only:
        for name in names:
            parametrize.remove_parametrizations(module, name, leave_parametrized=bake_zeros)
        return
    order = _param_order(module)
    plain = {}
    for name in names:
        original = module.parametrizations[name].original
        if bake_zeros:
            with torch.no_grad():
                original.mul_(_mask_parametrization(module, name).factor().to(original.dtype))
        plain[name] = original
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for name, param in plain.items():
        module._parameters[name] = param
    rank = {name: index for index, name in enumerate(order)}
    ordered = sorted(module._parameters.items(), key=lambda item: rank.get(item[0], len(rank)))
    module._parameters.clear()
    module._parameters.update(ordered)
    handler = handler_for(module)
    if handler is not None:
        handler.refresh(module)


def _unmask(model: nn.Module, bake_zeros: bool, names: Iterable[str] | None = None) -> None:
    ties = tied_names(model)
    wanted = None if names is None else {alias for name in names for alias in ties.get(name, [name])}
    by_module: dict[str, list[str]] = {}
    for fqn, _ in _keep_masks(model):
        if wanted is None or fqn in wanted:
            module_name, param_name = split_name(fqn)
            by_module.setdefault(module_name, []).append(param_name)
    for module_name, param_names in by_module.items():
        _unmask_module(model.get_submodule(module_name), param_names, bake_zeros)


def strip_masks(model: nn.Module, names: Iterable[str] | None = None) -> Masks:
    """Detach the masks of `names` (all when None), leaving plain parameters that hold the stored
    original values (pruned entries come back); returns the masks that were removed.

    >>> model = apply_masks(nn.Linear(2, 2), {"weight": torch.zeros(2, 2, dtype=torch.bool)})
    >>> sorted(strip_masks(model)), bool((model.weight != 0).all())
    (['weight'], True)
    """
    wanted = None if names is None else set(names)
    masks = {name: mask for name, mask in get_masks(model).items() if wanted is None or name in wanted}
    _unmask(model, bake_zeros=False, names=masks)
    return masks


def bake(model: nn.Module) -> nn.Module:
    """Make the masks permanent: plain parameters holding zeros, no masks left.

    The resulting state_dict loads into a fresh, unpruned instance of the same architecture.
    The parameters are the same objects as before (an optimiser keeps them), now holding the
    zeros. Safe on a ``copy.deepcopy`` of a masked model (the original keeps its masks).

    >>> model = apply_masks(nn.Linear(2, 2), {"weight": torch.zeros(2, 2, dtype=torch.bool)})
    >>> sorted(bake(model).state_dict())
    ['bias', 'weight']
    """
    _unmask(model, bake_zeros=True)
    return model


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` that also works on masked recurrent layers.

    After a forward pass with gradients, a masked ``nn.LSTM`` caches its masked weights (computed,
    non-leaf tensors) for its fused kernel, and torch refuses to deepcopy those; they are
    recomputed without gradient first (the next forward recomputes them anyway).

    >>> lstm = apply_masks(nn.LSTM(2, 2), {"weight_hh_l0": torch.ones(8, 2, dtype=torch.bool)})
    >>> _ = lstm(torch.ones(3, 1, 2))
    >>> type(copy_model(lstm)).__name__
    'ParametrizedLSTM'
    """
    with torch.no_grad():
        for module in model.modules():
            handler = handler_for(module) if parametrize.is_parametrized(module) else None
            if handler is not None:
                handler.refresh(module)
    return copy.deepcopy(model)
