"""Saving and resuming a ``Pruner``: what its state holds and the checks before it is loaded."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.masking import apply_masks, gated_names, get_masks, mask_owners, refuse_foreign_masks, strip_masks

FORMAT, VERSION = "prunekit-pruner", 1
_KEYS = {"format", "version", "request", "schedule", "step", "target", "achieved", "state", "model", "masks",
         "shrink_record"}


def own_masks(model: nn.Module, owner: str) -> dict[str, torch.Tensor]:
    """The masks on `model` that belong to `owner`, keyed by parameter name."""
    owners = mask_owners(model)
    return {name: mask for name, mask in get_masks(model).items() if owners.get(name) == owner}


def _first_difference(expected: Mapping, given: Mapping) -> str | None:
    for key in sorted(set(expected) | set(given)):
        if expected.get(key) != given.get(key):
            return key
    return None


def check_state(state: object, request: Mapping, schedule: Mapping, signature: Mapping) -> None:
    """Raise PrunekitError unless `state` is a Pruner state made with the same request and
    schedule on a model with these parameter shapes (what is wrong is named)."""
    if not isinstance(state, Mapping) or state.get("format") != FORMAT or not _KEYS <= set(state):
        raise PrunekitError(f"not a Pruner state: expected the dict of Pruner.state_dict() (format '{FORMAT}')")
    if state["version"] != VERSION:
        raise PrunekitError(f"Pruner state version {state['version']!r} is not supported; expected {VERSION}")
    key = _first_difference(request, state["request"])
    if key is not None:
        raise PrunekitError(
            f"the state comes from a Pruner with {key}={state['request'].get(key)!r}, this one has "
            f"{key}={request.get(key)!r}; create the Pruner with the settings of the run you resume"
        )
    if dict(state["schedule"]) != dict(schedule):
        raise PrunekitError(
            f"the state comes from a Pruner with schedule {dict(state['schedule'])}, this one has {dict(schedule)}; "
            "resume with the same schedule"
        )
    name = _first_difference(signature, state["model"])
    if name is not None:
        raise PrunekitError(
            f"the state comes from a different model: parameter '{name}' has shape {state['model'].get(name)} "
            f"there and {signature.get(name)} here; load it into a Pruner on the model it was saved from"
        )
    if state["state"] != "live":
        raise PrunekitError(
            f"the state comes from a Pruner that was {state['state']}: there is nothing left to resume; "
            "save the state before finalize() / release()"
        )
    for name, mask in state["masks"].items():
        shape = signature.get(name)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or shape is None or list(mask.shape) != shape:
            raise PrunekitError(f"the state's mask for '{name}' does not fit this model; the state is damaged")


def load_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], owner: str) -> None:
    """Make `owner`'s masks on `model` exactly `masks`: its current ones come off (stored values
    stay), the given ones go on (ANDed with masks nobody owns). A gated mask keeps its gates and
    takes the given mask as its fixed part: a gate shut when the state was saved stays shut."""
    refuse_foreign_masks(model, owner, masks)
    owners = mask_owners(model)
    gated = set(gated_names(model))  # gates stay (their logits come with the model's state_dict)
    taken = [name for name, who in owners.items() if who == owner and name not in gated]
    strip_masks(model, taken)
    apply_masks(model, {name: mask.bool() for name, mask in masks.items()}, owner)
