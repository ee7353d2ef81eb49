"""Save and reload pruned models as data (architecture spec + tensors), never as pickled modules.

A checkpoint is a dict of plain types and tensors, loadable with ``torch.load(weights_only=True)``:

    {"format": "prunekit-checkpoint", "version": 1,
     "arch": {"model": "lenet300", "input_shape": [1, 28, 28], "num_classes": 10},
     "state_dict": {...},   # plain parameter names; masked weights hold their stored values
     "masks": {...},        # keep-masks of a masked model ({} once baked)
     "meta": {...}}         # free-form JSON-like information (accuracy, method, ...)

Reloading builds the architecture from the zoo, loads the tensors and re-attaches the masks,
so outputs are bit-identical to the saved model's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import atomic_save
from prunekit.masking import apply_masks, get_masks, named_effective_parameters, original_parameter

FORMAT = "prunekit-checkpoint"
VERSION = 1


@dataclass(frozen=True)
class ArchSpec:
    """How to rebuild a model from the zoo: registry name, input shape, number of classes."""

    model: str
    input_shape: tuple[int, int, int]
    num_classes: int

    def build(self) -> nn.Module:
        """A fresh, unpruned instance of the architecture."""
        from prunekit.zoo import build_model

        return build_model(self.model, tuple(self.input_shape), self.num_classes)


def _stored_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    masks = get_masks(model)
    state = {}
    for name, tensor in named_effective_parameters(model):
        stored = original_parameter(model, name) if name in masks else tensor
        state[name] = stored.detach().clone()
    for name, buffer in model.named_buffers():
        if ".parametrizations." not in name:
            state[name] = buffer.detach().clone()
    return state


def save_checkpoint(path: str | Path, model: nn.Module, arch: ArchSpec, meta: dict[str, Any] | None = None) -> Path:
    """Write `model` (masked or baked) to `path` atomically; returns the path.

    >>> import tempfile, os
    >>> from prunekit.zoo import build_model
    >>> model = build_model("lenet300", (1, 8, 8), 10)
    >>> path = save_checkpoint(os.path.join(tempfile.mkdtemp(), "m.pt"), model, ArchSpec("lenet300", (1, 8, 8), 10))
    >>> load_checkpoint(path)[0].fc1.weight.shape
    torch.Size([300, 64])
    """
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": {**asdict(arch), "input_shape": list(arch.input_shape)},
        "state_dict": _stored_state_dict(model),
        "masks": get_masks(model),
        "meta": dict(meta or {}),
    }
    return atomic_save(payload, Path(path))


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the saved model; returns ``(model, checkpoint_without_tensors)``."""
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"checkpoint '{path}' does not exist; pass the path of a file saved by prunekit")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise PrunekitError(f"'{path}' is not a readable torch checkpoint ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PrunekitError(
            f"'{path}' is not a prunekit checkpoint (no 'format': '{FORMAT}' entry); "
            "save models with prunekit.save_checkpoint"
        )
    arch = ArchSpec(payload["arch"]["model"], tuple(payload["arch"]["input_shape"]), payload["arch"]["num_classes"])
    model = arch.build()
    model.load_state_dict(payload["state_dict"], strict=True)
    if payload["masks"]:
        apply_masks(model, payload["masks"])
    info = {key: value for key, value in payload.items() if key not in ("state_dict", "masks")}
    info["masked"] = bool(payload["masks"])
    return model, info
