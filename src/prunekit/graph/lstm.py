"""Hidden units of nn.LSTM, nn.GRU and nn.RNN: what they own, how to remove them, how to trace.

torch-pruning does not model recurrent layers correctly (its LSTM pruner handles one layer and
slices the wrong weight dimensions; GRU is traced as element-wise arithmetic), so this file
supplies what it lacks:

* a tracing *boundary*: while the dependency graph is built, each RNN's outputs are re-emitted
  by one opaque autograd node whose only graph input is the RNN's input, so torch-pruning sees
  the RNN as a single layer (input features -> hidden units) and finds its consumers (e.g. the
  classifier fed ``output[:, -1]`` or ``h_n[-1]``) by tracing;
* ``RnnUnitPruner``, registered with torch-pruning as the pruner for RNN modules;
* ``rnn_out_slices`` / ``rnn_in_slices``: the parameter slices a hidden unit / input feature owns.

Because RNN outputs are read in many ways, ``units.py`` confirms every RNN group numerically
(removing units must compute what masking them computes) and raises a clear error otherwise.

A hidden unit ``h`` is one unit across *all* layers (and both directions): ``nn.LSTM`` has one
``hidden_size`` shared by its layers, so per-layer widths cannot be expressed. Unit ``h`` owns
rows ``g*H + h`` (every gate ``g``) of ``weight_ih_l{k}``, ``weight_hh_l{k}`` and both biases,
column ``h`` of ``weight_hh_l{k}``, columns ``d*H + h`` of ``weight_ih_l{k+1}`` (``d`` = direction)
and the consumer's input feature(s) for ``h``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc

from prunekit.errors import PrunekitError
from prunekit.graph.slices import Ints, SliceBatch, UnsupportedCoupling

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
RNN_TYPES = (nn.LSTM, nn.GRU, nn.RNN)


def _directions(rnn: nn.RNNBase) -> int:
    return 2 if rnn.bidirectional else 1


def _weight_names(rnn: nn.RNNBase) -> Iterator[tuple[int, str]]:
    for layer in range(rnn.num_layers):
        for direction in range(_directions(rnn)):
            yield layer, f"l{layer}{'_reverse' if direction else ''}"


def check_rnn_supported(name: str, rnn: nn.Module) -> None:
    """Raise PrunekitError for recurrent layers whose hidden units prunekit cannot remove."""
    if not isinstance(rnn, RNN_TYPES):
        raise PrunekitError(
            f"'{name}' is a {type(rnn).__name__}; 'lstm-unit' supports nn.LSTM, nn.GRU and nn.RNN"
        )
    if getattr(rnn, "proj_size", 0):
        raise PrunekitError(
            f"LSTM '{name}' uses proj_size={rnn.proj_size}; removing hidden units of projected "
            "LSTMs is not supported, build it without proj_size"
        )


def _check_slicable(name: str, rnn: nn.Module) -> None:
    try:
        check_rnn_supported(name, rnn)
    except PrunekitError as error:
        raise UnsupportedCoupling(str(error)) from None


def rnn_out_slices(name: str, rnn: nn.RNNBase, idxs: Ints, roots: Ints) -> list[SliceBatch]:
    """Slices owned by hidden units; output index ``h`` and ``H + h`` (reverse) are one unit.

    >>> batches = rnn_out_slices("rnn", nn.GRU(3, 2), [0, 1], [0, 1])
    >>> [(b.param, b.dim, b.positions) for b in batches][:2]
    [('rnn.weight_ih_l0', 0, (0, 2, 4, 1, 3, 5)), ('rnn.weight_hh_l0', 0, (0, 2, 4, 1, 3, 5))]
    """
    _check_slicable(name, rnn)
    hidden, gates, directions = rnn.hidden_size, _GATES[rnn.mode], _directions(rnn)
    units = [idx % hidden for idx in idxs]
    rows = [gate * hidden + unit for unit in units for gate in range(gates)]
    row_roots = [root for root in roots for _ in range(gates)]
    cols = [direction * hidden + unit for unit in units for direction in range(directions)]
    col_roots = [root for root in roots for _ in range(directions)]
    prefix, batches = f"{name}." if name else "", []
    for layer, suffix in _weight_names(rnn):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if kind.startswith("weight") or rnn.bias:
                param = f"{prefix}{kind}_{suffix}"
                batches.append(SliceBatch(param, 0, gates * hidden, tuple(rows), tuple(row_roots)))
        param = f"{prefix}weight_hh_{suffix}"
        batches.append(SliceBatch(param, 1, hidden, tuple(units), tuple(roots)))
        if layer > 0:  # the next layer reads unit h of every direction
            param = f"{prefix}weight_ih_{suffix}"
            batches.append(SliceBatch(param, 1, directions * hidden, tuple(cols), tuple(col_roots)))
    return batches


def rnn_in_slices(name: str, rnn: nn.RNNBase, idxs: Ints, roots: Ints) -> list[SliceBatch]:
    """Slices that read input feature ``i``: column ``i`` of the first layer's input weights."""
    _check_slicable(name, rnn)
    prefix = f"{name}." if name else ""
    return [
        SliceBatch(f"{prefix}weight_ih_l0{suffix}", 1, rnn.input_size, tuple(idxs), tuple(roots))
        for suffix in ("", "_reverse")[: _directions(rnn)]
    ]


def _select(rnn: nn.RNNBase, param_name: str, dim: int, keep: list[int]) -> None:
    old = getattr(rnn, param_name)
    index = torch.tensor(keep, dtype=torch.long, device=old.device)
    kept = old.detach().index_select(dim, index).clone()
    new = nn.Parameter(kept, requires_grad=old.requires_grad)
    setattr(rnn, param_name, new)  # RNNBase.__setattr__ keeps _flat_weights in step


class RnnUnitPruner(BasePruningFunc):
    """torch-pruning pruner for RNN modules: removes hidden units (out) or input features (in)."""

    TARGET_MODULES = nn.RNNBase

    def prune_out_channels(self, layer: nn.RNNBase, idxs: Sequence[int]) -> nn.RNNBase:
        hidden, gates, directions = layer.hidden_size, _GATES[layer.mode], _directions(layer)
        removed = {idx % hidden for idx in idxs}
        keep = [unit for unit in range(hidden) if unit not in removed]
        rows = [gate * hidden + unit for gate in range(gates) for unit in keep]
        cols = [direction * hidden + unit for direction in range(directions) for unit in keep]
        for layer_index, suffix in _weight_names(layer):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                if kind.startswith("weight") or layer.bias:
                    _select(layer, f"{kind}_{suffix}", 0, rows)
            _select(layer, f"weight_hh_{suffix}", 1, keep)
            if layer_index > 0:
                _select(layer, f"weight_ih_{suffix}", 1, cols)
        layer.hidden_size = len(keep)
        layer._init_flat_weights()  # refresh weak refs and cuDNN flat buffer
        return layer

    def prune_in_channels(self, layer: nn.RNNBase, idxs: Sequence[int]) -> nn.RNNBase:
        removed = set(idxs)
        keep = [feature for feature in range(layer.input_size) if feature not in removed]
        for suffix in ("", "_reverse")[: _directions(layer)]:
            _select(layer, f"weight_ih_l0{suffix}", 1, keep)
        layer.input_size = len(keep)
        layer._init_flat_weights()
        return layer

    def get_out_channels(self, layer: nn.RNNBase) -> int:
        return layer.hidden_size * _directions(layer)

    def get_in_channels(self, layer: nn.RNNBase) -> int:
        return layer.input_size


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
