"""Build torch-pruning's dependency graph for a model without leaving a trace on it.

torch-pruning traces by running the model once under autograd. This wrapper: calls the model
the way the caller's ``example_inputs`` say; makes RNNs opaque (see ``lstm.py``); remembers which
autograd nodes produced the model outputs (those units must never be removed) and which modules
ran more than once; restores train/eval flags and ``requires_grad`` afterwards; and turns a
failing forward pass into a ``PrunekitError`` that names the layer that failed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph.lstm import rnn_boundaries
from prunekit.inputs import Run, as_call, model_outputs
from prunekit.layers.rnn import RnnUnitPruner
from prunekit.state import preserved_modes

__all__ = ["TracedGraph", "as_call", "model_outputs", "trace_graph"]


@dataclass
class TracedGraph:
    """torch-pruning's graph plus what prunekit needs to read it safely."""

    graph: tp.DependencyGraph
    model: nn.Module
    example_inputs: object
    run: Run
    output_grad_fns: set = field(default_factory=set)
    reused: frozenset = frozenset()
    names: dict = field(default_factory=dict)


@contextlib.contextmanager
def _tracing_state(model: nn.Module) -> Iterator[None]:
    """Let autograd see every parameter (frozen ones too), then restore flags and modes."""
    requires_grad = {param: param.requires_grad for param in model.parameters()}
    with preserved_modes(model):
        try:
            for param in requires_grad:
                param.requires_grad_(True)
            yield
        finally:
            for param, flag in requires_grad.items():
                param.requires_grad_(flag)


class _CallTracker:
    """Counts module calls and keeps the stack of modules currently running."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.calls: Counter = Counter()

    @contextlib.contextmanager
    def watch(self, model: nn.Module) -> Iterator[_CallTracker]:
        handles = []
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(self._enter(name)))
            handles.append(module.register_forward_hook(self._leave(name)))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _enter(self, name: str) -> Callable:
        def hook(module, args):
            self.stack.append(name)
            self.calls[module] += 1

        return hook

    def _leave(self, name: str) -> Callable:
        def hook(module, args, output):
            if self.stack and self.stack[-1] == name:
                self.stack.pop()

        return hook


def trace_graph(model: nn.Module, example_inputs: object) -> TracedGraph:
    """Build torch-pruning's DependencyGraph for `model`; the model is left as it was.

    >>> traced = trace_graph(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), torch.ones(1, 2))
    >>> sorted(name for name in traced.names.values() if name)
    ['0', '1']
    """
    run = as_call(example_inputs)
    rnn_pruner = RnnUnitPruner()
    customized = {type(m): rnn_pruner for m in model.modules() if isinstance(m, nn.RNNBase)}
    output_grad_fns: set = set()

    def remember_outputs(out):
        output_grad_fns.update(t.grad_fn for t in model_outputs(out) if t.grad_fn is not None)
        return out

    tracker = _CallTracker()
    with _tracing_state(model), rnn_boundaries(model), tracker.watch(model), torch.enable_grad():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch-pruning warns about every unknown op
                graph = tp.DependencyGraph().build_dependency(
                    model,
                    example_inputs=example_inputs,
                    forward_fn=lambda module, _: run(module),
                    output_transform=remember_outputs,
                    customized_pruners=customized,
                    verbose=False,
                )
        except PrunekitError:
            raise
        except Exception as error:  # noqa: BLE001 - any tracing failure becomes one clear error
            where = f" in layer '{tracker.stack[-1]}'" if tracker.stack else ""
            raise PrunekitError(
                f"could not trace the model with the example inputs{where}: "
                f"{type(error).__name__}: {error}. Pass example_inputs that model(...) accepts "
                "(a tensor, a tuple of arguments or a dict of keyword arguments)"
            ) from None
    reused = frozenset(module for module, count in tracker.calls.items() if count > 1)
    names = {module: name for name, module in model.named_modules()}
    return TracedGraph(graph, model, example_inputs, run, output_grad_fns, reused, names)
