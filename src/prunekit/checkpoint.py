"""Save and reload pruned models as data (architecture spec + tensors), never as pickled modules.

A checkpoint is a dict of plain types and tensors, loadable with ``torch.load(weights_only=True)``:

    {"format": "prunekit-checkpoint", "version": 3,
     "arch": {"model": "lenet300", "input_shape": [1, 28, 28], "num_classes": 10,
              "kwargs": {}, "input_dtype": "float32"},
     "structure": {...} or None,  # ShrinkRecord.to_dict(): units / heads / layers removed
     "state_dict": {...},   # plain parameter names; masked weights hold their stored values
     "masks": {...},        # keep-masks of a masked model ({} once baked)
     "meta": {...}}         # free-form JSON-like information (accuracy, method, ...)

With ``storage="sparse"`` (or ``"sparse-fp16"``) the file is of version 4: it adds
``"storage"``, each "state_dict" entry is a ``prunekit.deploy.codec`` dict (bitmask or CSR
indices + the nonzero values, or the values as they are, whichever is smallest; fp16 values for
``"sparse-fp16"``) and "masks" is the list of masked weights, whose keep-mask is the set of entries
their entry stores. Only the values a mask hides are dropped (they load as zeros), so the outputs
are bit-identical (fp16: each stored value rounded to float16). Dense files stay version 3.

The architecture is an ``ArchSpec`` (``prunekit.arch``): a zoo name or an importable
``"package.module:ClassName"`` with keyword arguments. Reloading builds the architecture,
replays the structural record (so the layers have the pruned shapes again), loads the tensors
and re-attaches the masks, so outputs are bit-identical to the saved model's. Files of version 1
(no "structure") and 2 (zoo arch without "kwargs" and "input_dtype") still load.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.arch import ArchSpec
from prunekit.deploy.codec import decode_state, encode_state
from prunekit.errors import PrunekitError
from prunekit.graph import ShrinkRecord
from prunekit.io import atomic_save
from prunekit.masking import apply_masks, gated_names, get_masks, named_effective_parameters, original_parameter
from prunekit.state import preserved_state
from prunekit.torch_files import load_data_file

FORMAT = "prunekit-checkpoint"
VERSION = 3
SPARSE_VERSION = 4
_READABLE_VERSIONS = (1, 2, 3, 4)
STORAGES = ("dense", "sparse", "sparse-fp16")

__all__ = ["ArchSpec", "load_checkpoint", "save_checkpoint"]


def _stored_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors: a masked parameter's stored values (its mask is saved beside them), a
    gated one's values with the deterministic gates folded in (what ``fold_gates`` would leave)."""
    masks = get_masks(model)
    gated = set(gated_names(model))
    state = {}
    with preserved_state(model):
        model.eval()  # gates deterministic
        for name, tensor in named_effective_parameters(model):
            stored = original_parameter(model, name) if name in masks and name not in gated else tensor
            state[name] = stored.detach().clone()
    for name, buffer in model.named_buffers():
        if ".parametrizations." not in name:
            state[name] = buffer.detach().clone()
    return state


def _shape_mismatch(expected: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    reference = {name: tuple(t.shape) for name, t in _stored_state_dict(expected).items()}
    given = {name: tuple(t.shape) for name, t in state.items()}
    if reference == given:
        return None
    name = next(n for n in sorted(set(reference) | set(given)) if reference.get(n) != given.get(n))
    return f"'{name}' is {given.get(name, 'absent')} in the model but {reference.get(name, 'absent')} in the rebuilt one"


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    arch: ArchSpec,
    meta: dict[str, Any] | None = None,
    record: ShrinkRecord | Mapping | None = None,
    *,
    trust_factory: bool = False,
    storage: str = "dense",
) -> Path:
    """Write `model` (masked, baked and/or structurally pruned) to `path` atomically.

    `record` is the structural removal applied to the `arch` model (``result.shrink_record`` of
    ``prunekit.prune`` with a structured granularity; add records of several calls with ``+``).
    Before anything is written the architecture is rebuilt from `arch` and `record` and its
    shapes compared with `model`'s, so a checkpoint that would not reload is refused. An `arch`
    naming a factory function needs `trust_factory`, here and in ``load_checkpoint``.
    `storage` ``"sparse"`` stores each mostly-zero tensor by its nonzeros (``"sparse-fp16"``: as
    float16 too); ``load_checkpoint`` reads every storage (see the module docstring).

    >>> import tempfile, os
    >>> from prunekit import prune
    >>> from prunekit.zoo import build_model
    >>> model = build_model("lenet300", (1, 8, 8), 10)
    >>> result = prune(model, "l1", 0.5, granularity="neuron", example_inputs=torch.zeros(2, 1, 8, 8))
    >>> path = save_checkpoint(os.path.join(tempfile.mkdtemp(), "m.pt"), model,
    ...                        ArchSpec("lenet300", (1, 8, 8), 10), record=result.shrink_record)
    >>> load_checkpoint(path)[0].fc1.weight.shape
    torch.Size([150, 64])
    """
    if not isinstance(arch, ArchSpec):
        raise PrunekitError(
            f"arch must be an ArchSpec (e.g. ArchSpec.of(model, input_shape)); got a {type(arch).__name__}"
        )
    if storage not in STORAGES:
        raise PrunekitError(f"storage must be one of {', '.join(STORAGES)}; got {storage!r}")
    structure = ShrinkRecord.from_dict(record).to_dict() if record is not None else None
    state = _stored_state_dict(model)
    problem = _shape_mismatch(arch.rebuild(structure, trust_factory=trust_factory), state)
    if problem is not None:
        hint = ("pass record=<the PruneResult.shrink_record of the structured pruning>" if record is None
                else "the record does not describe how this model was pruned")
        raise PrunekitError(f"the model does not match architecture '{arch.model}' ({problem}); {hint}. Nothing was written")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch.to_dict(),
        "structure": structure,
        "state_dict": state,
        "masks": get_masks(model),
        "meta": dict(meta or {}),
    }
    if storage != "dense":
        entries, masked = encode_state(state, payload["masks"], fp16=storage == "sparse-fp16")
        payload.update(version=SPARSE_VERSION, storage=storage, state_dict=entries, masks=masked)
    return atomic_save(payload, Path(path))


def _read_payload(path: Path) -> dict[str, Any]:
    # says what the file is instead (directory, truncated, text, ...), never torch's weights_only advice
    payload = load_data_file(path, "prunekit checkpoint", "save models with prunekit.save_checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PrunekitError(
            f"'{path}' is not a prunekit checkpoint (no 'format': '{FORMAT}' entry); "
            "save models with prunekit.save_checkpoint"
        )
    if payload.get("storage", "dense") not in STORAGES:
        raise PrunekitError(f"'{path}' names storage {payload.get('storage')!r}; this prunekit reads "
                            f"{', '.join(STORAGES)}. Upgrade prunekit")
    if payload.get("version") not in _READABLE_VERSIONS:
        raise PrunekitError(
            f"'{path}' is a prunekit checkpoint of version {payload.get('version')!r}; this prunekit reads "
            f"versions {', '.join(map(str, _READABLE_VERSIONS))}. Upgrade prunekit"
        )
    return payload


def load_checkpoint(path: str | Path, *, trust_factory: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the saved model; returns ``(model, checkpoint_without_tensors)``.

    The file's architecture must name a zoo model or a ``torch.nn.Module`` subclass; pass
    `trust_factory` only for a file you trust whose architecture names a factory function.
    ``info["arch"]`` is the architecture in its full (``ArchSpec.to_dict``) form.

    >>> import tempfile, os
    >>> model = ArchSpec("lenet300", (1, 8, 8), 10).build()
    >>> path = save_checkpoint(os.path.join(tempfile.mkdtemp(), "m.pt"), model, ArchSpec("lenet300", (1, 8, 8), 10))
    >>> loaded, info = load_checkpoint(path)
    >>> info["arch"]["model"], torch.equal(loaded.fc1.weight, model.fc1.weight)
    ('lenet300', True)
    """
    path = Path(path)
    payload = _read_payload(path)
    try:
        arch = ArchSpec.from_dict(payload.get("arch"))
        model = arch.rebuild(payload.get("structure"), trust_factory=trust_factory)
    except PrunekitError as error:
        raise PrunekitError(f"cannot rebuild the model saved in '{path}': {error}") from error
    state, masks = payload["state_dict"], payload["masks"]
    if payload.get("storage", "dense") != "dense":
        try:
            state, masks = decode_state(state, masks)
        except PrunekitError as error:
            raise PrunekitError(f"cannot read '{path}': {error}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise PrunekitError(f"the tensors in '{path}' do not fit its architecture ({error}); the file is "
                            "damaged or was edited: save the model again") from None
    if masks:
        apply_masks(model, masks)
    info = {key: value for key, value in payload.items() if key not in ("state_dict", "masks")}
    info["arch"] = arch.to_dict()
    info["masked"] = bool(masks)
    info["storage"] = payload.get("storage", "dense")
    return model, info
