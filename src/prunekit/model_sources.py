"""Where ``prunekit prune`` gets its model and data, from what the user names.

A model is one of

* a zoo name (``resnet20``): its trained baseline on the bundled dataset, from the baseline
  cache (trained once with the model's recipe, ``prunekit.training.get_baseline``), since
  pruning an untrained model says nothing;
* a prunekit checkpoint (``save_checkpoint``): rebuilt from its architecture and structural
  record, masks included, without unpickling anything;
* ``"package.module:factory"``: your own code, called with the ``model_args`` JSON as keyword
  arguments (load trained weights inside it, or pass a ``weights`` file: a ``state_dict`` saved
  with ``torch.save(model.state_dict(), path)``, read without pickle);
* a whole model saved with ``torch.save(model, path)``, loaded only with ``trust_pickle``:
  unpickling runs whatever code the file names, so a file from elsewhere could do anything
  on your machine. Its class must be importable, and ``model_args`` rebuild it for the output.

Data is a bundled dataset name or ``"module:function"`` returning ``(train_loader, val_loader)``
or ``(train_loader, val_loader, test_loader)`` of ``(inputs, targets)`` batches.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.arch import ArchSpec
from prunekit.checkpoint import FORMAT, load_checkpoint
from prunekit.data import list_datasets, load_dataset, make_loader
from prunekit.errors import PrunekitError, unknown_name
from prunekit.graph.record import ShrinkRecord
from prunekit.request import model_signature
from prunekit.torch_files import load_data_file
from prunekit.training import EVAL_BATCH_SIZE, get_baseline
from prunekit.zoo import list_models

_FILE_HINT = "pass a prunekit checkpoint, a torch.save(model) file (with --trust-pickle) or a zoo name"
PICKLE_RISK = ("unpickling runs whatever code the file names, so a file from elsewhere can do anything on "
               "your machine")


@dataclass(frozen=True)
class DataSource:
    """Loaders of ``(inputs, targets)`` batches and the shape of one input (no batch dimension)."""

    name: str
    train: Iterable
    val: Iterable | None
    test: Iterable | None
    input_shape: tuple[int, ...]
    input_dtype: str = "float32"
    num_classes: int | None = None  # known for bundled datasets
    bundled: bool = False


@dataclass(frozen=True)
class ModelOptions:
    """How to read the model: `model_args` (factory kwargs), `weights` (a state_dict file for a
    factory model), what the caller trusts, and for zoo names which cached baseline."""

    model_args: dict[str, Any] | None = None
    weights: str | None = None
    trust_pickle: bool = False
    trust_factory: bool = False
    seed: int = 0
    train_epochs: int | None = None
    cache_dir: str | None = None
    progress: bool = False


@dataclass
class ModelSource:
    """The model to prune, how to rebuild it (`arch`, plus the structural `record` it already
    carries) and whether that needs ``trust_factory``; `zoo_name` when it is a zoo model."""

    model: nn.Module
    arch: ArchSpec
    record: ShrinkRecord | None
    trust_factory: bool
    description: str
    zoo_name: str | None = None


def import_callable(target: str, what: str) -> Any:
    """The object ``"package.module:name"`` names (the module is imported; nothing is called).

    >>> import_callable("torch.nn:Linear", "model").__name__
    'Linear'
    """
    module_name, _, attribute = target.partition(":")
    parts = [*module_name.split("."), *attribute.split(".")]
    if not all(part.isidentifier() for part in parts):
        raise PrunekitError(f"{what} '{target}' is not of the form 'package.module:name' (dotted names on both "
                            "sides of one ':'), e.g. 'mymodels:build_model'")
    try:
        found = importlib.import_module(module_name)
    except Exception as error:  # a missing module, or one that fails while importing
        raise PrunekitError(f"cannot import module '{module_name}' of {what} '{target}' ({type(error).__name__}: "
                            f"{error}); run from its folder or put that folder on PYTHONPATH") from error
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise PrunekitError(f"module '{module_name}' has no '{attribute}' ({what} '{target}'); check the name")
        found = getattr(found, part)
    return found


def _first_inputs(loader: Iterable, name: str) -> torch.Tensor:
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise PrunekitError(f"data '{name}': the loader yields no batches") from None
    if not (isinstance(batch, (list, tuple)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor)):
        raise PrunekitError(f"data '{name}': batches must be (inputs, targets) pairs of tensors; the first batch is a "
                            f"{type(batch).__name__}")
    return batch[0]


def _user_data(target: str) -> DataSource:
    function = import_callable(target, "data")
    if not callable(function):
        raise PrunekitError(f"data '{target}' is a {type(function).__name__}, not a function returning loaders")
    try:
        loaders = function()
    except Exception as error:
        raise PrunekitError(f"data function '{target}' raised {type(error).__name__}: {error}") from error
    if not (isinstance(loaders, (list, tuple)) and len(loaders) in (2, 3)
            and all(loader is None or isinstance(loader, Iterable) for loader in loaders) and loaders[0] is not None):
        raise PrunekitError(f"data function '{target}' must return (train_loader, val_loader) or (train_loader, "
                            f"val_loader, test_loader); it returned a {type(loaders).__name__}")
    train, val, test = (*loaders, None)[:3]
    inputs = _first_inputs(val if val is not None else train, target)  # a shuffled loader is left as it was
    return DataSource(target, train, val, test, tuple(inputs.shape[1:]), str(inputs.dtype).removeprefix("torch."))


def load_data(name: str, *, batch_size: int = 64, seed: int = 0, augment_shift: int = 0) -> DataSource:
    """A bundled dataset's loaders (training shuffled with `seed`), or a ``"module:function"``'s.

    >>> data = load_data("digits")
    >>> data.input_shape, data.num_classes, len(data.train)
    ((1, 8, 8), 10, 21)
    """
    if ":" in name:
        return _user_data(name)
    if name not in list_datasets():
        error = unknown_name("dataset", name, list_datasets())
        raise PrunekitError(f"{error}; or name your own as 'module:function' returning (train_loader, val_loader"
                            "[, test_loader])")
    splits = load_dataset(name)
    return DataSource(name, make_loader(splits.train, batch_size, shuffle=True, seed=seed, augment_shift=augment_shift),
                      make_loader(splits.val, EVAL_BATCH_SIZE, shuffle=False),
                      make_loader(splits.test, EVAL_BATCH_SIZE, shuffle=False),
                      tuple(splits.input_shape), num_classes=splits.num_classes, bundled=True)


def _refuse(options: ModelOptions, kind: str, *names: str) -> None:
    given = [name for name in names if getattr(options, name)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise PrunekitError(f"{flags}: only for a 'package.module:factory' model (or --model-args for a pickled one), "
                            f"not for {kind}")


def _zoo(name: str, data: DataSource, options: ModelOptions) -> ModelSource:
    _refuse(options, f"zoo model '{name}'", "model_args", "weights")
    if not data.bundled:
        raise PrunekitError(f"zoo model '{name}' is pruned as its baseline trained on a bundled dataset; pass --data "
                            f"{' or '.join(list_datasets())}. To prune a zoo model you trained on your data, save it "
                            "with prunekit.save_checkpoint and pass that file as --model")
    model, meta = get_baseline(name, data.name, options.seed, epochs=options.train_epochs, cache_dir=options.cache_dir,
                               progress=options.progress)
    description = (f"zoo {name}: baseline trained on {data.name} (seed {options.seed}, {meta['epochs']} epochs, "
                   f"test accuracy {100 * meta['accuracy']:.2f}%)")
    return ModelSource(model, ArchSpec(name, data.input_shape, data.num_classes), None, False, description, name)


def _read_kind(path: Path) -> str:
    """``"checkpoint"``, ``"pickle"`` (objects only unpickling can build) or ``"other"`` (plain data)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error) or "Unsupported global" in str(error):
            return "pickle"
        payload = load_data_file(path, "torch file", _FILE_HINT)  # raises, saying what the file is instead
    except Exception:  # torch raises many types for a truncated or foreign file
        payload = load_data_file(path, "torch file", _FILE_HINT)
    return "checkpoint" if isinstance(payload, dict) and payload.get("format") == FORMAT else "other"


def _pickled(path: Path, data: DataSource, options: ModelOptions) -> ModelSource:
    if not options.trust_pickle:
        raise PrunekitError(f"'{path}' holds a pickled model (torch.save(model)); {PICKLE_RISK}. Pass --trust-pickle "
                            "only if you trust where it comes from, or save it as data with "
                            "prunekit.save_checkpoint(path, model, ArchSpec(...)) and pass that instead")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise PrunekitError(f"cannot unpickle '{path}' ({type(error).__name__}: {error}); the classes it names must "
                            "be importable (run from their folder or put it on PYTHONPATH)") from error
    if not isinstance(model, nn.Module):
        raise PrunekitError(f"'{path}' holds a {type(model).__name__}, not a torch.nn.Module; save the whole model "
                            "with torch.save(model, path), or a prunekit checkpoint")
    arch = ArchSpec.of(model, data.input_shape, kwargs=options.model_args, input_dtype=data.input_dtype)
    try:
        fresh = arch.build()
    except PrunekitError as error:
        raise PrunekitError(f"the output checkpoint rebuilds '{path}''s model as {arch.model}(**model_args) and that "
                            f"failed: {error}; pass the constructor's arguments with --model-args JSON") from error
    if model_signature(fresh) != model_signature(model):
        raise PrunekitError(f"{arch.model}(**{arch.kwargs}) builds other parameter shapes than the model in '{path}' "
                            "(was it pruned structurally already?); pass the arguments that build it with "
                            "--model-args JSON")
    return ModelSource(model, arch, None, False, f"pickled model {arch.model} from {path}")


def _checkpoint(path: Path, options: ModelOptions) -> ModelSource:
    _refuse(options, "a prunekit checkpoint", "model_args", "weights")
    try:
        model, info = load_checkpoint(path, trust_factory=options.trust_factory)
    except PrunekitError as error:
        if "trust_factory" in str(error):
            raise PrunekitError(f"{error}. On the command line: --trust-factory") from error
        raise
    arch = ArchSpec.from_dict(info["arch"])
    record = ShrinkRecord.from_dict(info["structure"]) if info.get("structure") else None
    zoo_name = arch.model if ":" not in arch.model else None
    return ModelSource(model, arch, record, options.trust_factory, f"checkpoint {path} ({arch.model})", zoo_name)


def _factory(target: str, data: DataSource, options: ModelOptions) -> ModelSource:
    arch = ArchSpec(target, data.input_shape, kwargs=options.model_args, input_dtype=data.input_dtype)
    model = arch.build(trust_factory=True)  # the user named this code on the command line
    if options.weights is not None:
        _load_weights(model, Path(options.weights), target)
    weights = f" with weights {options.weights}" if options.weights else ""
    return ModelSource(model, arch, None, True, f"{target}(**{arch.kwargs}){weights}")


def _load_weights(model: nn.Module, path: Path, target: str) -> None:
    if not path.is_file():
        raise PrunekitError(f"weights file '{path}' does not exist")
    kind = _read_kind(path)
    if kind != "other":
        what = "it holds pickled objects" if kind == "pickle" else "it is a prunekit checkpoint (pass it as --model)"
        raise PrunekitError(f"'{path}' is not a state_dict: {what}; save the weights with "
                            "torch.save(model.state_dict(), path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except Exception as error:
        raise PrunekitError(f"the weights in '{path}' do not fit {target}: {error}") from error


def load_model(name: str, data: DataSource, options: ModelOptions | None = None) -> ModelSource:
    """The model `name` names (see the module docstring), checked to be saveable as data.

    >>> source = load_model("torch.nn:Linear", load_data("digits"),
    ...                     ModelOptions(model_args={"in_features": 64, "out_features": 10}))
    >>> source.arch.model, source.model.weight.shape
    ('torch.nn:Linear', torch.Size([10, 64]))
    """
    options = options or ModelOptions()
    if name in list_models():
        return _zoo(name, data, options)
    path = Path(name)
    if path.is_dir():
        raise PrunekitError(f"--model '{name}' is a folder; pass a checkpoint file, a zoo name or "
                            "'package.module:factory'")
    if path.is_file():
        _refuse(options, f"the file '{name}'", "weights")
        kind = _read_kind(path)
        if kind == "checkpoint":
            return _checkpoint(path, options)
        if kind == "pickle":
            return _pickled(path, data, options)
        raise PrunekitError(f"'{name}' holds plain data but no model (a state_dict?); save a model with "
                            "prunekit.save_checkpoint, or pass --model package.module:factory --weights FILE")
    if ":" in name:
        return _factory(name, data, options)
    if path.suffix or "/" in name or "\\" in name:
        raise PrunekitError(f"model file '{name}' does not exist")
    error = unknown_name("model", name, list_models())
    raise PrunekitError(f"{error}; or pass a checkpoint file, or your own model as 'package.module:factory'")


__all__ = ["DataSource", "ModelOptions", "ModelSource", "PICKLE_RISK", "import_callable", "load_data", "load_model"]
