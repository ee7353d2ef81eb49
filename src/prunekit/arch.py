"""How to rebuild a model without pickling it: ``ArchSpec`` names its architecture.

The architecture is named in one of two forms:

* a zoo name (``"resnet20"``): built with ``prunekit.zoo.build_model(name, input_shape,
  num_classes, **kwargs)``;
* ``"package.module:Callable"``: your own model, built as ``Callable(**kwargs)``. The module is
  imported; the callable must be a ``torch.nn.Module`` subclass, because a checkpoint file must
  not make the reader call arbitrary code. A factory function is only called when the caller
  says it trusts the file (``trust_factory=True``). ``ArchSpec.of(model, input_shape)`` derives
  the name from the model's class.

``input_shape`` is one example's shape (no batch dimension); ``input_dtype`` is the dtype of the
zero example batch that traces the model when a structural record is replayed (``"int64"`` for
token ids). ``kwargs`` are JSON values, so tuples come back as lists.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import PrunekitError, unknown_name
from prunekit.graph import ShrinkRecord, replay
from prunekit.graph.record import round_family
from prunekit.state import preserved_rng

_ARCH_KEYS = ("model", "input_shape", "num_classes", "kwargs", "input_dtype")
_TRUST_RULE = (
    "a checkpoint may only name a torch.nn.Module subclass, so that loading a file never calls "
    "other code it names. If you trust where it comes from, pass trust_factory=True (to load_checkpoint, "
    "save_checkpoint or ArchSpec.build)"
)


def _json_copy(value: Any, where: str) -> Any:
    """A plain copy of `value` (tuples become lists), or a PrunekitError naming the bad part."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PrunekitError(f"{where} is {value}, which JSON cannot hold; use a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_copy(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise PrunekitError(f"{where} has the key {key!r}; JSON object keys must be strings")
        return {key: _json_copy(item, f"{where}[{key!r}]") for key, item in value.items()}
    raise PrunekitError(
        f"{where} is a {type(value).__name__} ({value!r:.60}); architecture kwargs must be JSON values "
        "(None, bool, int, float, str, lists and dicts of them). Pass a name or number your "
        "constructor turns into the object instead"
    )


def _check_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise PrunekitError(f"kwargs must be a dict of keyword arguments; got a {type(kwargs).__name__}")
    for key in kwargs:
        if not (isinstance(key, str) and key.isidentifier()):
            raise PrunekitError(f"kwargs key {key!r} is not a keyword argument name; use identifier strings")
    return _json_copy(kwargs, "kwargs")


def _check_target_name(target: str) -> None:
    """Refuse a malformed ``"package.module:Callable"``; a name without ':' must be a zoo name."""
    from prunekit.zoo import list_models

    if ":" not in target:
        if target not in list_models():
            error = unknown_name("model", target, list_models())
            raise PrunekitError(
                f"{error}; or name your own model's class as 'package.module:ClassName' "
                "(ArchSpec.of(model, input_shape) derives it from an instance)"
            )
        return
    module_name, _, attribute = target.partition(":")
    parts = [*module_name.split("."), *attribute.split(".")]
    # dunder steps could walk from a class to objects its module never exported
    if not all(part.isidentifier() and not part.startswith("__") for part in parts):
        raise PrunekitError(
            f"model '{target}' is not of the form 'package.module:Callable' (dotted identifiers, none "
            "starting with '__', on both sides of one ':'), e.g. 'mymodels:SmallNet'"
        )


def _resolve_target(target: str) -> Any:
    """Import the module of ``"module:Attr.Path"`` and return the attribute (nothing is called)."""
    module_name, _, attribute = target.partition(":")
    try:
        found = importlib.import_module(module_name)
    except Exception as error:  # a missing module, or one that fails while importing
        raise PrunekitError(
            f"cannot import module '{module_name}' named by model '{target}' ({type(error).__name__}: "
            f"{error}); install it or put its folder on sys.path before loading"
        ) from error
    for depth, part in enumerate(attribute.split(".")):
        if not hasattr(found, part):
            owner = ".".join([module_name, *attribute.split(".")[:depth]])
            close = difflib.get_close_matches(part, [n for n in dir(found) if not n.startswith("_")], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ";"
            raise PrunekitError(
                f"'{owner}' has no attribute '{part}' (named by model '{target}'){hint} "
                "Check the spelling, or that this version of the module still defines it"
            )
        found = getattr(found, part)
    return found


def _describe(obj: Any) -> str:
    return f"the class {obj.__qualname__}" if isinstance(obj, type) else f"a {type(obj).__name__}"


def _construct(target: str, kwargs: Mapping[str, Any], trust_factory: bool) -> nn.Module:
    """Build ``target(**kwargs)`` under the trust rule; every failure names `target`."""
    built_by = _resolve_target(target)
    is_module_class = isinstance(built_by, type) and issubclass(built_by, nn.Module)
    if not is_module_class and not trust_factory:
        raise PrunekitError(f"model '{target}' is {_describe(built_by)}, not a torch.nn.Module subclass; {_TRUST_RULE}")
    if not callable(built_by):
        raise PrunekitError(f"model '{target}' is {_describe(built_by)}, which cannot be called to build a model")
    try:
        inspect.signature(built_by).bind(**kwargs)
    except TypeError as error:
        raise PrunekitError(
            f"model '{target}' does not accept kwargs {sorted(kwargs)} ({error}); "
            f"its signature is {inspect.signature(built_by)}"
        ) from None
    except ValueError:  # no signature to check (some builtins): let the call decide
        pass
    try:
        model = built_by(**kwargs)
    except Exception as error:
        raise PrunekitError(
            f"building model '{target}' with kwargs {kwargs} raised {type(error).__name__}: {error}"
        ) from error
    if not isinstance(model, nn.Module):
        raise PrunekitError(
            f"model '{target}' returned {_describe(model)}, not a torch.nn.Module; it must build the model"
        )
    return model


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else None
    if shape is None or not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape):
        raise PrunekitError(
            f"input_shape must be one example's shape as positive ints (no batch dimension), "
            f"e.g. (1, 28, 28); got {input_shape!r}"
        )
    return shape


def _check_dtype(input_dtype: Any) -> None:
    if not (isinstance(input_dtype, str) and isinstance(getattr(torch, input_dtype, None), torch.dtype)):
        raise PrunekitError(f"input_dtype must name a torch dtype, e.g. 'float32' or 'int64'; got {input_dtype!r}")


@dataclass(frozen=True)
class ArchSpec:
    """How to rebuild a model: a zoo name or an importable ``"module:Class"``, plus its options.

    Zoo models need `input_shape` and `num_classes`; your own model is built as
    ``Class(**kwargs)`` and needs `input_shape` (one example, no batch dimension) only to replay
    a structural record. `kwargs` must be JSON values.

    >>> ArchSpec("lenet5", (1, 8, 8), 10).build().conv1.out_channels
    20
    >>> spec = ArchSpec("torch.nn:Linear", (4,), kwargs={"in_features": 4, "out_features": 2})
    >>> spec.build().weight.shape, ArchSpec.from_dict(spec.to_dict()) == spec
    (torch.Size([2, 4]), True)
    """

    model: str
    input_shape: tuple[int, ...] = ()
    num_classes: int | None = None
    kwargs: dict[str, Any] | None = None  # stored as a plain dict ({} for None)
    input_dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str):
            raise PrunekitError(f"model must be a zoo name or 'package.module:Callable'; got {self.model!r}")
        _check_target_name(self.model)
        if ":" in self.model and self.num_classes is not None:
            raise PrunekitError(
                f"num_classes is only used for zoo models, not '{self.model}'; pass it to your "
                f"constructor instead: kwargs={{'num_classes': {self.num_classes!r}}}"
            )
        if ":" not in self.model and self.num_classes is None:
            raise PrunekitError(
                f"zoo model '{self.model}' needs input_shape and num_classes, "
                f"e.g. ArchSpec('{self.model}', (1, 28, 28), 10)"
            )
        _check_dtype(self.input_dtype)
        # normalise so that what save_checkpoint checks is exactly what load_checkpoint builds
        object.__setattr__(self, "input_shape", _check_input_shape(self.input_shape))
        object.__setattr__(self, "kwargs", _check_kwargs(self.kwargs))

    def __hash__(self) -> int:
        # equal dicts may differ in key order, so hash a canonical text of the kwargs
        kwargs_text = json.dumps(self.kwargs, sort_keys=True)
        return hash((self.model, self.input_shape, self.num_classes, kwargs_text, self.input_dtype))

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, ...], kwargs: Mapping[str, Any] | None = None,
           input_dtype: str = "float32") -> ArchSpec:
        """The spec of `model`'s class, named ``"module:QualName"``; `kwargs` rebuild it.

        >>> ArchSpec.of(nn.Linear(4, 2), (4,), kwargs={"in_features": 4, "out_features": 2}).model
        'torch.nn.modules.linear:Linear'
        """
        if not isinstance(model, nn.Module):
            raise PrunekitError(f"ArchSpec.of needs a torch.nn.Module instance; got a {type(model).__name__}")
        model_class = parametrize.type_before_parametrizations(model)
        where = ("in __main__ (a script or notebook)" if model_class.__module__ == "__main__"
                 else "inside a function" if "<locals>" in model_class.__qualname__ else None)
        if where is not None:
            raise PrunekitError(
                f"class {model_class.__qualname__} is defined {where}, so a checkpoint cannot name it for "
                "reloading; move the class into an importable module (e.g. mymodels.py) and import it from there"
            )
        target = f"{model_class.__module__}:{model_class.__qualname__}"
        if _resolve_target(target) is not model_class:
            raise PrunekitError(f"'{target}' does not lead back to the class of this model; define the class "
                                "once, at the top level of an importable module")
        return cls(target, tuple(input_shape), kwargs=kwargs, input_dtype=input_dtype)

    def build(self, *, trust_factory: bool = False) -> nn.Module:
        """A fresh, unpruned instance; a factory function is called only with `trust_factory`."""
        kwargs = _json_copy(self.kwargs, "kwargs")  # a constructor that edits its arguments edits a copy
        with preserved_rng():  # initial weights are drawn and then overwritten: the caller's RNG stays
            if ":" in self.model:
                return _construct(self.model, kwargs, trust_factory)
            from prunekit.zoo import build_model

            return build_model(self.model, self.input_shape, self.num_classes, **kwargs)

    def example_inputs(self) -> torch.Tensor:
        """A zero batch of two inputs of `input_dtype`, enough to trace the architecture."""
        return torch.zeros(2, *self.input_shape, dtype=getattr(torch, self.input_dtype))

    def rebuild(self, record: ShrinkRecord | Mapping | None, *, trust_factory: bool = False) -> nn.Module:
        """A fresh instance with the structural removals of `record` replayed (None: dense)."""
        record = ShrinkRecord.from_dict(record) if record is not None else ShrinkRecord()
        traced = any(round_family(steps) == "unit" for steps in record.rounds)
        if traced and not self.input_shape:
            raise PrunekitError(
                f"architecture '{self.model}' has no input_shape, but replaying its structural record "
                "traces the model with example inputs; pass input_shape (one example, no batch dimension)"
            )
        model = self.build(trust_factory=trust_factory)
        if record.steps:
            replay(model, self.example_inputs(), record, check=False)
        return model

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form, as stored in a checkpoint's "arch" entry."""
        return {"model": self.model, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "kwargs": _json_copy(self.kwargs, "kwargs"), "input_dtype": self.input_dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchSpec:
        """Inverse of ``to_dict``; also reads the zoo-only form of version 1 and 2 checkpoints."""
        if not isinstance(data, Mapping) or "model" not in data:
            raise PrunekitError(f"an architecture entry must be a dict with a 'model' key; got {data!r:.80}")
        unknown = sorted(set(data) - set(_ARCH_KEYS))
        if unknown:
            raise PrunekitError(f"architecture entry has unknown keys {unknown}; expected some of {list(_ARCH_KEYS)}")
        return cls(data["model"], data.get("input_shape", ()), data.get("num_classes"),
                   data.get("kwargs"), data.get("input_dtype", "float32"))
