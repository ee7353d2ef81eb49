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
from torch.overrides import TorchFunctionMode
from torch_pruning import ops

from prunekit.errors import PrunekitError
from prunekit.graph.lstm import rnn_boundaries
from prunekit.inputs import Run, as_call, model_outputs
from prunekit.layers.conv1d import Conv1DPruner, is_conv1d
from prunekit.layers.norm import GroupNormPruner
from prunekit.layers.rnn import RnnUnitPruner
from prunekit.state import preserved_modes
from prunekit.tokens import check_token_ids

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
    """Let autograd see every parameter (frozen ones too) and run activations out of place, then
    restore flags and modes. An in-place activation after a layer whose output is a view
    (InstanceNorm) rewrites that view's autograd node, and torch-pruning then loses the layer."""
    requires_grad = {param: param.requires_grad for param in model.parameters()}
    inplace = {m: m.inplace for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)}
    with preserved_modes(model):
        try:
            for param in requires_grad:
                param.requires_grad_(True)
            for module in inplace:
                module.inplace = False
            yield
        finally:
            for param, flag in requires_grad.items():
                param.requires_grad_(flag)
            for module, flag in inplace.items():
                module.inplace = flag


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


_CATS = {torch.cat, torch.concat, torch.concatenate}
_CHUNKS = {torch.chunk, torch.Tensor.chunk}
_SPLITS = {torch.split, torch.Tensor.split, torch.tensor_split, torch.Tensor.tensor_split}


class _OpRecorder(TorchFunctionMode):
    """Records what autograd does not keep about some ops run while tracing, keyed by the autograd
    node of their output.

    * ``torch.cat``: the width each input adds along the concatenated dim. torch-pruning infers
      those widths from the graph and fails (``int + None``) when one cannot be inferred, e.g. a
      U-Net skip concatenation or a cache update.
    * ``chunk`` vs ``split``: both leave a ``SplitBackward0``, but a chunk adapts to its input's
      width (units can go if every chunk loses as many) and a split into given sizes does not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict = {}
        self.cuts: dict = {}  # autograd node -> ("chunk" or "split", width of each piece)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CHUNKS | _SPLITS and isinstance(out, (tuple, list)) and out:
            node = getattr(out[0], "grad_fn", None)
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            if node is not None and all(isinstance(piece, torch.Tensor) for piece in out):
                widths = [int(piece.shape[dim]) for piece in out]
                self.cuts[node] = ("chunk" if func in _CHUNKS else "split", widths)
        if func in _CATS and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            tensors = args[0] if args else kwargs.get("tensors", kwargs.get("inputs", ()))
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            # torch.cat skips empty 1-d tensors whatever the dim (legacy behaviour): they add nothing
            self.sizes[out.grad_fn] = [int(t.shape[dim]) if t.dim() > 1 or t.numel() else 0 for t in tensors]
        return out


class _Graph(tp.DependencyGraph):
    """torch-pruning's graph, told the concatenation widths seen while tracing (see _OpRecorder)
    and with each split's consumers in the order of the pieces they read, before it maps indices
    through them (torch-pruning pairs the i-th consumer it found with the i-th piece)."""

    def __init__(self, recorded: _OpRecorder) -> None:
        super().__init__()
        self.recorded = recorded
        #: split nodes whose pieces cannot be told apart (a piece unused or read twice by one consumer)
        self.unmapped_splits: set = set()

    def _build_dependency(self, module2node):
        super()._build_dependency(module2node)
        for node in module2node.values():
            if node.type == ops.OPTYPE.CONCAT and node.grad_fn in self.recorded.sizes:
                node.module.concat_sizes = self.recorded.sizes[node.grad_fn]
            if node.type == ops.OPTYPE.SPLIT:
                self._order_split_outputs(node)

    def _order_split_outputs(self, node) -> None:
        cut = self.recorded.cuts.get(node.grad_fn)
        pieces = len(cut[1]) if cut else None
        read = {}
        for out in node.outputs:
            indices = [nr for fn, nr in getattr(out.grad_fn, "next_functions", ()) if fn is node.grad_fn]
            read[out] = indices[0] if len(indices) == 1 else None
        if pieces != len(node.outputs) or sorted(read.values(), key=str) != list(range(pieces or 0)):
            self.unmapped_splits.add(node)
            return
        node.outputs.sort(key=lambda out: read[out])


def trace_graph(model: nn.Module, example_inputs: object) -> TracedGraph:
    """Build torch-pruning's DependencyGraph for `model`; the model is left as it was.

    >>> traced = trace_graph(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), torch.ones(1, 2))
    >>> sorted(name for name in traced.names.values() if name)
    ['0', '1']
    """
    check_token_ids(model, example_inputs, "example_inputs")  # before torch-pruning's opaque failure
    run = as_call(example_inputs)
    rnn_pruner = RnnUnitPruner()
    customized = {type(m): rnn_pruner for m in model.modules() if isinstance(m, nn.RNNBase)}
    customized |= {type(m): Conv1DPruner() for m in model.modules() if is_conv1d(m)}
    customized |= {type(m): GroupNormPruner() for m in model.modules() if isinstance(m, nn.GroupNorm)}
    output_grad_fns: set = set()

    ran = []

    def remember_outputs(out):
        ran.append(True)
        tensors = model_outputs(out)  # torch-pruning reads plain tensors (not caches, not ModelOutput)
        output_grad_fns.update(t.grad_fn for t in tensors if t.grad_fn is not None)
        return tensors

    tracker, recorder = _CallTracker(), _OpRecorder()
    graph = _Graph(recorder)
    with _tracing_state(model), rnn_boundaries(model), tracker.watch(model), torch.enable_grad():
        try:
            with warnings.catch_warnings(), recorder:
                warnings.simplefilter("ignore")  # torch-pruning warns about every unknown op
                graph.build_dependency(
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
            if ran:  # the model ran: the inputs are fine, torch-pruning could not read the graph
                raise PrunekitError(
                    f"torch-pruning could not analyse {type(model).__name__}'s graph "
                    f"({type(error).__name__}: {error}); structured pruning cannot follow this "
                    "model. Use granularity 'unstructured', or exclude the layers involved"
                ) from None
            where = f" in layer '{tracker.stack[-1]}'" if tracker.stack else ""
            raise PrunekitError(
                f"could not trace the model with the example inputs{where}: "
                f"{type(error).__name__}: {error}. Pass example_inputs that model(...) accepts "
                "(a tensor, a tuple of arguments or a dict of keyword arguments)"
            ) from None
    reused = frozenset(module for module, count in tracker.calls.items() if count > 1)
    names = {module: name for name, module in model.named_modules()}
    return TracedGraph(graph, model, example_inputs, run, output_grad_fns, reused, names)
