"""The Pruner's state inside Hugging Face ``Trainer`` checkpoints: written next to the Trainer's
own files when it saves, read back (masks and the masked weights) when it resumes.

The Trainer names its checkpoints ``<output_dir>/checkpoint-<global_step>`` and tells a callback
neither that path when it saves nor the one it resumes from; it does load that checkpoint's
``TrainerState`` before ``on_train_begin``, so a resumed run starts with ``state.global_step`` at
the checkpoint's step. The checkpoint's weights load into the model before any callback runs, by
their names: on a fresh model, which has no masks yet, the masked ones
(``<layer>.parametrizations.weight.original``) find no tensor to go to. :func:`resume_pruner`
therefore puts the masks back first and then loads those tensors from the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import atomic_save
from prunekit.pruner import Pruner
from prunekit.torch_files import load_data_file

PRUNER_FILE = "prunekit_pruner.pt"
# transformers' names (trainer_utils.PREFIX_CHECKPOINT_DIR, utils.SAFE_WEIGHTS_NAME, ...), spelled
# out so that this module, and its doctests, need no transformers
_CHECKPOINT_PREFIX = "checkpoint"
_SAFETENSORS, _SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
_TORCH, _TORCH_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def checkpoint_folder(output_dir: str, global_step: int) -> Path:
    """The folder in which the Trainer saves its checkpoint of `global_step`.

    >>> checkpoint_folder("runs/bert", 500).as_posix()
    'runs/bert/checkpoint-500'
    """
    return Path(output_dir) / f"{_CHECKPOINT_PREFIX}-{int(global_step)}"


def save_pruner_state(pruner: Pruner, folder: Path) -> Path:
    """Write ``pruner.state_dict()`` atomically into the Trainer's checkpoint `folder`.

    >>> import tempfile, prunekit
    >>> pruner = prunekit.Pruner(nn.Linear(4, 2), "magnitude", 0.5)
    >>> save_pruner_state(pruner, Path(tempfile.mkdtemp())).name
    'prunekit_pruner.pt'
    """
    if not folder.is_dir():
        raise PrunekitError(
            f"PrunekitTrainerCallback: the Trainer's checkpoint folder '{folder}' does not exist, so the "
            "Pruner's state has nowhere to go (hyperparameter-search runs save into per-trial folders, "
            "which the callback does not support); save checkpoints directly under args.output_dir"
        )
    return atomic_save(pruner.state_dict(), folder / PRUNER_FILE)


class _CheckpointWeights(Mapping):
    """The model tensors of a Trainer checkpoint `folder` by name, from its safetensors file(s)
    (shards included) or ``pytorch_model.bin`` file(s); each file is read once, when one of its
    tensors is first asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file_of = _weight_files(folder)
        self._files: dict[Path, Mapping[str, torch.Tensor]] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        path = self._file_of[name]
        if path not in self._files:
            self._files[path] = _read_weights(path)
        return self._files[path][name]

    def __contains__(self, name: object) -> bool:  # without reading the tensor, unlike Mapping's
        return name in self._file_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)


def _read_weights(path: Path) -> Mapping[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # a dependency of transformers

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the file of `folder` that holds it."""
    for index in (_SAFETENSORS_INDEX, _TORCH_INDEX):
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text())["weight_map"]
            return {name: folder / file for name, file in weight_map.items()}
    if (folder / _SAFETENSORS).is_file():
        from safetensors import safe_open

        with safe_open(str(folder / _SAFETENSORS), framework="pt", device="cpu") as file:
            return dict.fromkeys(file.keys(), folder / _SAFETENSORS)
    if (folder / _TORCH).is_file():
        names = torch.load(folder / _TORCH, map_location="cpu", weights_only=True, mmap=True)
        return dict.fromkeys(names, folder / _TORCH)
    raise PrunekitError(
        f"'{folder}' holds no model weights in a form PrunekitTrainerCallback reads ({_SAFETENSORS}, "
        f"{_TORCH} or their sharded index); checkpoints of DeepSpeed or FSDP runs are not supported"
    )


def _prefix_in(model: nn.Module, trainer_model: nn.Module) -> str:
    """The dotted name of the Pruner's `model` inside the model the Trainer trains, with a dot."""
    for name, module in trainer_model.named_modules():
        if module is model:
            return f"{name}." if name else ""
    raise PrunekitError(
        "PrunekitTrainerCallback: the Pruner's model is not part of the model the Trainer trains; "
        "build the Pruner on the Trainer's model (or one of its submodules)"
    )


def _original_name(prefix: str, masked: str) -> str:
    """Where the checkpoint keeps the stored values of the masked tensor `masked`."""
    module, _, tensor = masked.rpartition(".")
    return f"{prefix}{module + '.' if module else ''}parametrizations.{tensor}.original"


def _loaded_from(trainer_model: nn.Module, weights: _CheckpointWeights) -> bool:
    """True when every tensor the model shares by name with the checkpoint holds the checkpoint's
    value, as it does right after the Trainer loaded that checkpoint."""
    for name, value in trainer_model.state_dict().items():
        if name in weights and not torch.equal(value.detach().cpu(), weights[name].to(value.dtype)):
            return False
    return True


def resume_pruner(pruner: Pruner, trainer_model: nn.Module, folder: Path, global_step: int) -> None:
    """Put `pruner` (on `trainer_model` or one of its submodules) back where it was when the
    Trainer saved its checkpoint `folder` at `global_step`, which the Trainer has just loaded.

    Its masks and schedule position come from the checkpoint's ``prunekit_pruner.pt``, then the
    masked weights from the checkpoint's model file. A Pruner already at `global_step` (its state
    loaded by hand before ``trainer.train``) is left as it is when `folder` is not the checkpoint
    the Trainer loaded.

    >>> import tempfile, prunekit
    >>> net = nn.Sequential(nn.Linear(4, 4))
    >>> pruner = prunekit.Pruner(net, "magnitude", 0.5)
    >>> pruner.step().sparsity_achieved
    0.5
    >>> folder = checkpoint_folder(tempfile.mkdtemp(), 1)  # what the Trainer writes, then the callback
    >>> folder.mkdir(); torch.save(net.state_dict(), folder / "pytorch_model.bin")
    >>> _ = save_pruner_state(pruner, folder)
    >>> fresh = nn.Sequential(nn.Linear(4, 4))  # a new process: the Trainer loads what fits (the bias)
    >>> _ = fresh.load_state_dict(torch.load(folder / "pytorch_model.bin"), strict=False)
    >>> resumed = prunekit.Pruner(fresh, "magnitude", 0.5)
    >>> resume_pruner(resumed, fresh, folder, global_step=1)
    >>> resumed.step_count, resumed.sparsity.achieved, torch.equal(fresh[0].weight, net[0].weight)
    (1, 0.5, True)
    """
    restored_by_hand = pruner.step_count == global_step
    if not (folder / PRUNER_FILE).is_file():
        if restored_by_hand:
            return
        raise PrunekitError(_missing_state_message(folder, global_step))
    weights = _CheckpointWeights(folder)
    if not _loaded_from(trainer_model, weights):
        if restored_by_hand:
            return
        raise PrunekitError(
            f"the Trainer resumed at step {global_step} from a checkpoint other than '{folder}' (their "
            f"weights differ), so that folder's {PRUNER_FILE} does not belong to this run; load the "
            f"{PRUNER_FILE} of the checkpoint you resume from into the Pruner before trainer.train(): "
            f"pruner.load_state_dict(torch.load(path, weights_only=True))"
        )
    hint = f"the checkpoint '{folder}' is damaged: resume from another one"
    state = load_data_file(folder / PRUNER_FILE, "Pruner state", hint)
    prefix = _prefix_in(pruner.model, trainer_model)
    masks = state.get("masks") if isinstance(state, Mapping) else None
    absent = [name for name in masks or {} if _original_name(prefix, name) not in weights]
    if absent:
        raise PrunekitError(f"the model file of '{folder}' lacks the stored values of masked '{absent[0]}'; {hint}")
    names_before = set(trainer_model.state_dict())
    pruner.load_state_dict(state)  # refuses a state of other settings before it changes anything
    # tensors that appeared with the masks (the masked weights, the masks themselves) are those the
    # Trainer could not load into the model without masks
    appeared = set(trainer_model.state_dict()) - names_before
    trainer_model.load_state_dict({name: weights[name] for name in appeared if name in weights}, strict=False)


def _missing_state_message(folder: Path, global_step: int) -> str:
    if not folder.is_dir():
        where = (f"there is no '{folder}' (the name the Trainer gives its checkpoint of that step under "
                 "args.output_dir), so the checkpoint it resumed from lies elsewhere")
    else:
        where = (f"'{folder}' holds no {PRUNER_FILE}: it was saved without PrunekitTrainerCallback, "
                 "so it lacks the Pruner's masks and schedule position")
    return (f"the Trainer resumed at step {global_step} but {where}; resume from a checkpoint saved with "
            f"the callback under args.output_dir, or load the {PRUNER_FILE} of the checkpoint you resume "
            "from into the Pruner before trainer.train(): pruner.load_state_dict(torch.load(path, "
            "weights_only=True))")
