"""Physical removal on a model that carries masks: the masks come off, ride through the removal
as values of a carrier copy (sliced exactly like the weights they mask), and go back on."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunekit.masking import Masks, apply_masks, copy_model, mask_owners, refuse_foreign_masks, strip_masks


_NO_MASK, _KEPT, _PRUNED = 2.0, 1.0, 0.0


def _mask_carrier(model: nn.Module) -> nn.Module:
    """A copy of `model` without masks whose parameters encode them: 1 kept, 0 pruned, 2 unmasked."""
    carrier = copy_model(model)
    masks = strip_masks(carrier)
    with torch.no_grad():
        for name, param in carrier.named_parameters():
            if param.is_floating_point():
                mask = masks.get(name)
                if mask is None:
                    param.fill_(_NO_MASK)
                else:
                    param.copy_(torch.where(mask.to(param.device), _KEPT, _PRUNED))
    return carrier


def _carried_masks(carrier: nn.Module) -> Masks:
    """The masks a carrier encodes after the same removal as the model (all-True ones dropped)."""
    masks = {}
    for name, param in carrier.named_parameters():
        if param.is_floating_point() and not bool((param == _NO_MASK).all()):
            keep = (param != _PRUNED).detach().cpu()
            if not bool(keep.all()):
                masks[name] = keep
    return masks


def remove_carrying_masks(model: nn.Module, remove: Callable[[nn.Module, bool], object],
                          owner: str | None = None) -> object:
    """Run a physical removal ``remove(model, check)`` on a model that may carry masks; returns
    what `remove` returns.

    Removal needs plain weights, so the masks come off first and go back on afterwards, sliced
    exactly like the weights they mask (a removed unit takes its part of each mask with it; the
    rest stays), so unstructured and structured pruning combine in any order. The removal is
    rehearsed on a copy that carries the masks as values first, and a failed removal puts the
    masks back, so on error the model is as it was. Masks a live Pruner other than `owner`
    manages are refused; re-attached masks belong to nobody.
    """
    refuse_foreign_masks(model, owner)
    owners = mask_owners(model)
    if not owners:
        return remove(model, True)
    carrier = _mask_carrier(model)
    remove(carrier, False)  # validates the request before the model is touched
    masks = strip_masks(model)
    try:
        result = remove(model, True)
    except BaseException:
        for name, mask in masks.items():
            apply_masks(model, {name: mask}, owners[name])
        raise
    apply_masks(model, _carried_masks(carrier))
    return result
