"""Tracing recurrent layers: make each RNN look like one layer to torch-pruning's tracer.

While the dependency graph is built, each RNN's outputs are re-emitted by one opaque autograd
node whose only graph input is the RNN's input, so torch-pruning sees the RNN as a single layer
(input features -> hidden units) and finds its consumers (e.g. the classifier fed
``output[:, -1]`` or ``h_n[-1]``) by tracing. What a hidden unit owns and how it is removed is in
``prunekit.layers.rnn``; because RNN outputs are read in many ways, ``units.py`` confirms every
RNN group numerically (removing units must compute what masking them computes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from prunekit.errors import PrunekitError


class _Boundary(torch.autograd.Function):
    """Re-emits an RNN's outputs from one autograd node whose graph input is the RNN input."""

    @staticmethod
    def forward(ctx, rnn_input, anchor, *outputs):  # noqa: ARG004 - inputs only shape the graph
        return tuple(output.clone() for output in outputs)

    @staticmethod
    def backward(ctx, *grads):
        return (None, None) + (None,) * len(grads)


def _boundary_hook(name: str) -> Callable:
    def hook(module, args, kwargs, output):
        rnn_input = args[0] if args else kwargs.get("input")
        initial_state = args[1] if len(args) > 1 else kwargs.get("hx")
        if initial_state is not None:
            raise PrunekitError(
                f"'{name}' is called with an initial state (hx); its width is set outside the "
                "layer, so prunekit cannot remove hidden units safely. Call it without hx "
                "(zeros) or exclude it"
            )
        if not isinstance(rnn_input, torch.Tensor):
            raise PrunekitError(
                f"'{name}' receives a {type(rnn_input).__name__}; prunekit can only follow "
                "recurrent layers fed plain tensors (no PackedSequence)"
            )
        sequence, state = output
        states = state if isinstance(state, tuple) else (state,)
        anchor = next(module.parameters())
        new = _Boundary.apply(rnn_input, anchor, sequence.detach(), *(s.detach() for s in states))
        return new[0], (tuple(new[1:]) if isinstance(state, tuple) else new[1])

    return hook


@contextlib.contextmanager
def rnn_boundaries(model: nn.Module) -> Iterator[None]:
    """While active, every RNN in `model` looks like one opaque layer to autograd tracing."""
    handles = [
        module.register_forward_hook(_boundary_hook(name), with_kwargs=True)
        for name, module in model.named_modules()
        if isinstance(module, nn.RNNBase)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
