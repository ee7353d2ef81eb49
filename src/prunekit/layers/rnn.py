"""``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: hidden units are the units of granularity ``"lstm-unit"``.

torch-pruning does not model recurrent layers correctly (its LSTM pruner handles one layer and
slices the wrong weight dimensions; GRU is traced as element-wise arithmetic), so this handler
supplies the slices a hidden unit owns and ``RnnUnitPruner``, registered with torch-pruning as
the pruner for RNN modules (``graph/lstm.py`` makes an RNN look like one layer while tracing).

A hidden unit ``h`` is one unit across *all* layers (and both directions): ``nn.LSTM`` has one
``hidden_size`` shared by its layers, so per-layer widths cannot be expressed. Unit ``h`` owns
rows ``g*H + h`` (every gate ``g``) of ``weight_ih_l{k}``, ``weight_hh_l{k}`` and both biases,
column ``h`` of ``weight_hh_l{k}``, columns ``d*H + h`` of ``weight_ih_l{k+1}`` (``d`` = direction)
and the consumer's input feature(s) for ``h``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch_pruning.pruner.function import BasePruningFunc

from prunekit.errors import PrunekitError
from prunekit.layers.base import Ints, LayerHandler, MacRow, SliceBatch, UnsupportedCoupling, nnz, prefix

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
    rows = tuple(gate * hidden + unit for unit in units for gate in range(gates))
    row_roots = tuple(root for root in roots for _ in range(gates))
    cols = tuple(direction * hidden + unit for unit in units for direction in range(directions))
    col_roots = tuple(root for root in roots for _ in range(directions))
    batches = []
    for layer, suffix in _weight_names(rnn):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if kind.startswith("weight") or rnn.bias:
                batches.append(SliceBatch(f"{prefix(name)}{kind}_{suffix}", 0, gates * hidden, rows, row_roots))
        batches.append(SliceBatch(f"{prefix(name)}weight_hh_{suffix}", 1, hidden, tuple(units), tuple(roots)))
        if layer > 0:  # the next layer reads unit h of every direction
            batches.append(SliceBatch(f"{prefix(name)}weight_ih_{suffix}", 1, directions * hidden, cols, col_roots))
    return batches


def rnn_in_slices(name: str, rnn: nn.RNNBase, idxs: Ints, roots: Ints) -> list[SliceBatch]:
    """Slices that read input feature ``i``: column ``i`` of the first layer's input weights."""
    _check_slicable(name, rnn)
    return [
        SliceBatch(f"{prefix(name)}weight_ih_l0{suffix}", 1, rnn.input_size, tuple(idxs), tuple(roots))
        for suffix in ("", "_reverse")[: _directions(rnn)]
    ]


class RnnHandler(LayerHandler):
    """``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``.

    >>> RnnHandler().prunable_weights(nn.LSTM(3, 2, num_layers=2))
    ['weight_ih_l0', 'weight_hh_l0', 'weight_ih_l1', 'weight_hh_l1']
    """

    types = (nn.RNNBase,)
    unit_granularity = "lstm-unit"

    def prunable_weights(self, module: nn.Module) -> list[str]:
        return [name for name in module._flat_weights_names if name.startswith("weight_")]

    def out_width(self, module: nn.Module) -> int:
        return module.hidden_size * _directions(module)

    def slices(self, name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
        return (rnn_out_slices if is_out else rnn_in_slices)(name, module, idxs, roots)

    def activation_dim(self, module: nn.Module) -> int:
        return -1  # of output[0], the sequence of hidden states

    def weight_layout(self, module: nn.Module, param_name: str) -> tuple[int, int]:
        return (0, 1)  # weight_ih (gates * hidden, in), weight_hh (gates * hidden, hidden)

    def macs(self, module: nn.Module, args: tuple, kwargs: dict, output) -> list[MacRow]:
        sequence = args[0] if args else kwargs["input"]
        if isinstance(sequence, PackedSequence):
            steps = sequence.data.shape[0]  # batch x time without the padding
        else:
            steps = sequence.shape[0] * (sequence.shape[1] if sequence.dim() == 3 else 1)
        # per step, every layer and direction multiplies by weight_ih, weight_hh (and weight_hr)
        weights = [getattr(module, name) for name in module._flat_weights_names if name.startswith("weight_")]
        return [("", steps * sum(w.numel() for w in weights), steps * sum(nnz(w) for w in weights))]

    def structural_sparsity(self, module: nn.Module, weights: dict[str, torch.Tensor]) -> float:
        gates = _GATES[module.mode]
        dead = total = 0
        for name, w_ih in weights.items():
            if not name.startswith("weight_ih"):
                continue
            w_hh = weights[name.replace("weight_ih", "weight_hh")]
            rows = torch.cat([w_ih, w_hh], dim=1).reshape(gates, module.hidden_size, -1)
            dead += int((rows == 0).all(dim=2).all(dim=0).sum())
            total += module.hidden_size
        return dead / total if total else 0.0

    def refresh(self, module: nn.Module) -> None:
        module._init_flat_weights()  # refresh weak refs and the cuDNN flat buffer


def _select(rnn: nn.RNNBase, param_name: str, dim: int, keep: list[int]) -> None:
    old = getattr(rnn, param_name)
    index = torch.tensor(keep, dtype=torch.long, device=old.device)
    kept = old.detach().index_select(dim, index).clone()
    setattr(rnn, param_name, nn.Parameter(kept, requires_grad=old.requires_grad))  # keeps _flat_weights in step


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
        layer._init_flat_weights()
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
