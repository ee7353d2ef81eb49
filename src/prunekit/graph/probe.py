"""Running a model once to see which blocks are skippable, and naming the module that failed.

``probe_modules`` calls the model on its example inputs with hooks on every module and records,
per module, how often it ran, whether its output kept its input's shape, and (for composite
modules with parameters) whether it computes the identity once all its parameters are zero:
a block ``f(x) + x`` whose branch ends in a weight, a norm or a scale does, so skipping it is
what zeroing it computes. ``naming_failures`` turns any error of a forward into a
``PrunekitError`` that names the innermost module that was running and why it failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from prunekit.errors import PrunekitError
from prunekit.inputs import as_call
from prunekit.state import preserved_state
from prunekit.tokens import check_token_ids


@dataclass
class ModuleRun:
    """What one module did in a probe: `calls`, and on its first call whether its first tensor
    output had its first tensor input's shape (`keeps_shape`), whether the output was a plain
    tensor (`returns_tensor`) and whether it was the identity with all its parameters zero."""

    calls: int = 0
    keeps_shape: bool = False
    returns_tensor: bool = False
    identity_when_zeroed: bool = False


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor | None:
    value = args[0] if args else kwargs.get("hidden_states")
    return value if isinstance(value, torch.Tensor) and value.is_floating_point() else None


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output if isinstance(output, torch.Tensor) else None


def _zeroed_is_identity(module: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Does `module` return its input when every parameter it owns is zero? (never raises)"""
    clone = lambda value: value.clone() if isinstance(value, torch.Tensor) else value  # noqa: E731
    args, kwargs = tuple(map(clone, args)), {key: clone(value) for key, value in kwargs.items()}
    hidden = _hidden(args, kwargs)
    if not bool(hidden.any()):  # all zero (activations of a random model can underflow): any input will do
        generator = torch.Generator().manual_seed(0)
        hidden = torch.rand(hidden.shape, generator=generator).to(hidden.dtype).to(hidden.device)
        args, kwargs = ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
    hidden = hidden.clone()
    zeros = {name: torch.zeros_like(param) for name, param in module.named_parameters()}
    try:
        output = _first_tensor(functional_call(module, zeros, args, kwargs, strict=False))
    except Exception:  # noqa: BLE001 - a block that cannot run zeroed is simply not skippable
        return False
    if output is None or output.shape != hidden.shape or output.dtype != hidden.dtype:
        return False
    scale = float(hidden.abs().max()) if hidden.numel() else 0.0  # tolerances relative to the input's size
    return scale > 0 and bool(torch.allclose(output, hidden, rtol=1e-5, atol=1e-6 * scale))


@contextlib.contextmanager
def _cache_off(model: nn.Module) -> Iterator[None]:
    """Key/value caches off for the probe: re-running a layer must not append to a cache."""
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if old:
        config.use_cache = False
    try:
        yield
    finally:
        if old:
            config.use_cache = old


@contextlib.contextmanager
def naming_failures(model: nn.Module, doing: str) -> Iterator[None]:
    """Turn an error raised while `model` runs into a ``PrunekitError`` naming the innermost
    module that was running (`doing` says what prunekit was doing, for the message).

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(3, 1))
    >>> with naming_failures(model, "probing"):
    ...     model(torch.ones(1, 2))
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: probing: the model failed in '1' (Linear): RuntimeError: ...
    """
    running: list[str] = []

    def enter(name: str) -> None:
        running.append(name)

    def leave(name: str) -> None:  # pop back to `name`: calls that failed inside a hook left theirs
        while running and running.pop() != name:
            pass

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda *_, name=name: enter(name)))
        handles.append(module.register_forward_hook(lambda *_, name=name: leave(name)))
    try:
        yield
    except PrunekitError:
        raise
    except Exception as error:
        where = running[-1] if running else ""
        kind = type(model.get_submodule(where)).__name__
        label = f"'{where}' ({kind})" if where else f"the model itself ({kind})"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise PrunekitError(
            f"{doing}: the model failed in {label}: {type(error).__name__}: {first_line}. Check that "
            "example_inputs (and data) are what this model is called with, and that it runs on them"
        ) from error
    finally:
        for handle in handles:
            handle.remove()


def _tested(module: nn.Module, model: nn.Module) -> bool:
    has_children = next(module.children(), None) is not None
    return module is not model and has_children and next(module.parameters(), None) is not None


def probe_modules(model: nn.Module, example_inputs: object,
                  tested: Callable[[str, nn.Module], bool] | None = None) -> dict[str, ModuleRun]:
    """Run `model` once on `example_inputs` (eval mode, no gradients, modes and RNG restored)
    and report what each module did (see :class:`ModuleRun`). Composite modules with parameters
    (and, if given, only those `tested` accepts) are also run once with their parameters zero.

    >>> block = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    >>> class Residual(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.branch = block
    ...     def forward(self, x):
    ...         return x + self.branch(x)
    >>> runs = probe_modules(nn.Sequential(Residual(), nn.Linear(4, 2)), torch.randn(3, 4))
    >>> runs["0"].identity_when_zeroed, runs["0.branch"].identity_when_zeroed, runs["1"].keeps_shape
    (True, False, False)
    """
    check_token_ids(model, example_inputs, "example_inputs")
    runs = {name: ModuleRun() for name, _ in model.named_modules()}
    inputs: dict[str, torch.Size] = {}
    zeroing = []  # non-empty while a zeroed copy runs: its inner calls are not counted

    def before(name, module, args, kwargs):
        if zeroing or runs[name].calls:
            return
        hidden = _hidden(args, kwargs)
        if hidden is not None:
            inputs[name] = hidden.shape
            if _tested(module, model) and (tested is None or tested(name, module)):
                zeroing.append(name)
                try:
                    runs[name].identity_when_zeroed = _zeroed_is_identity(module, args, kwargs)
                finally:
                    zeroing.pop()

    def after(name, _module, _args, _kwargs, output):
        if zeroing:
            return
        run = runs[name]
        run.calls += 1
        if run.calls == 1:
            first = _first_tensor(output)
            run.keeps_shape = first is not None and inputs.get(name) == first.shape
            run.returns_tensor = isinstance(output, torch.Tensor)

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda module, args, kwargs, name=name: before(name, module, args, kwargs), with_kwargs=True))
        handles.append(module.register_forward_hook(
            lambda module, args, kwargs, output, name=name: after(name, module, args, kwargs, output),
            with_kwargs=True))
    try:
        with preserved_state(model), _cache_off(model), torch.no_grad():
            model.eval()
            with naming_failures(model, f"running {type(model).__name__} on example_inputs to find its blocks"):
                as_call(example_inputs)(model)
    finally:
        for handle in handles:
            handle.remove()
    return runs
