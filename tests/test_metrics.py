"""Metrics against hand-computed references: params, MACs, sparsity kinds, latency, size."""

from __future__ import annotations

import copy
import io
import json
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from prunekit.errors import PrunekitError
from prunekit.macs import macs_by_module
from prunekit.masking import apply_masks, bake
from prunekit.metrics import (
    count_macs,
    count_params,
    file_size_bytes,
    latency_stats,
    measure_latency,
    summary,
)


def _linear_3_2() -> nn.Linear:
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))
        layer.bias.copy_(torch.tensor([0.5, 0.0]))
    return layer


def _no_hooks_left(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._forward_hooks_with_kwargs
        for m in model.modules()
    )


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _assert_same_state(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name


# --- parameters and Linear ---------------------------------------------------------------------


def test_count_params_linear_with_zeros():
    # weight has 3 nonzeros out of 6, bias 1 out of 2
    assert count_params(_linear_3_2()) == (8, 4)


def test_count_params_ignores_buffers():
    # BatchNorm1d(5): weight (ones) + bias (zeros) = 10 params; running stats are buffers
    assert count_params(nn.BatchNorm1d(5)) == (10, 5)


def test_linear_macs_exact():
    layer = _linear_3_2()
    assert count_macs(layer, torch.randn(4, 3)) == (6, 3)
    # (B, T, F) input: T * in * out per example, nonzero T * nnz(weight)
    assert count_macs(layer, torch.randn(2, 5, 3)) == (5 * 6, 5 * 3)


# --- convolutions ------------------------------------------------------------------------------


def test_conv2d_stride_padding_groups_macs():
    conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, groups=2, bias=False)
    with torch.no_grad():
        conv.weight[0] = 0  # a whole filter: 18 weights
        conv.weight[1, 0] = 0  # half a filter: 9 weights
    # out size: floor((9 + 2*1 - 3) / 2) + 1 = 5 -> 25 positions per output channel
    # dense: 6 out channels * 25 positions * (4 / 2 in per group) * 3 * 3 = 2700
    # nonzero: (6 * 18 - 18 - 9) = 81 nonzero weights, each used at 25 positions = 2025
    assert count_macs(conv, torch.randn(3, 4, 9, 9)) == (2700, 2025)
    result = summary(conv, torch.randn(1, 4, 9, 9))
    assert result.layers[0].structural_sparsity == pytest.approx(1 / 6)
    assert result.layers[0].sparsity == pytest.approx(27 / 108)


def test_conv1d_and_conv_transpose_macs():
    conv = nn.Conv1d(2, 3, kernel_size=3)
    # length 10 -> 8 outputs; 3 channels * 8 * 2 * 3 = 144
    assert count_macs(conv, torch.randn(2, 2, 10)) == (144, 144)
    up = nn.ConvTranspose2d(2, 3, kernel_size=2, stride=2)
    # every one of the 4*4 input positions meets all 2*3*2*2 = 24 weights: 384
    assert count_macs(up, torch.randn(1, 2, 4, 4)) == (384, 384)


# --- recurrent ---------------------------------------------------------------------------------


def test_lstm_macs_hand_formula():
    lstm = nn.LSTM(5, 4, batch_first=True)
    # per step: 4 gates * hidden 4 * (input 5 + hidden 4) = 144; 6 steps
    assert count_macs(lstm, torch.randn(2, 6, 5)) == (6 * 144, 6 * 144)
    deep = nn.LSTM(5, 4, num_layers=2, bidirectional=True, batch_first=True)
    # layer 0: 2 directions * 16 * (5 + 4); layer 1 (input 2*4): 2 * 16 * (8 + 4)
    per_step = 2 * 16 * 9 + 2 * 16 * 12
    assert count_macs(deep, torch.randn(3, 6, 5)) == (6 * per_step, 6 * per_step)
    gru = nn.GRU(5, 4)  # seq-first: (T, B, F); batch is the first dim by convention
    assert count_macs(gru, torch.randn(6, 2, 5), batch_size=2) == (6 * 108, 6 * 108)


def test_lstm_structural_sparsity_and_nonzero_macs():
    lstm = nn.LSTM(5, 4)
    dead_rows = [1, 5, 9, 13]  # hidden unit 1 in each of the 4 gates
    with torch.no_grad():
        lstm.weight_ih_l0[dead_rows] = 0
        lstm.weight_hh_l0[dead_rows] = 0
        lstm.weight_hh_l0[0, 0] = 0  # a lone zero does not kill unit 0
    assert count_macs(lstm, torch.randn(1, 1, 5)) == (144, 144 - 4 * 9 - 1)
    row = summary(lstm, torch.randn(1, 1, 5)).layers[0]
    assert row.structural_sparsity == pytest.approx(1 / 4)
    assert row.params == 144 and row.nonzero == 144 - 37


def test_packed_sequence_counts_only_real_steps():
    lstm = nn.LSTM(5, 4, batch_first=True)
    packed = pack_padded_sequence(torch.randn(2, 3, 5), torch.tensor([3, 1]), batch_first=True)
    # 4 real steps over a batch of 2 -> 2 steps per example
    assert count_macs(lstm, packed) == (2 * 144, 2 * 144)


# --- attention ---------------------------------------------------------------------------------


def test_mha_self_attention_macs():
    attention = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 5, 8)
    # in-proj 3 * T * E^2 + Q K^T and A V 2 * T^2 * E + out-proj T * E^2
    expected = 3 * 5 * 64 + 2 * 25 * 8 + 5 * 64
    assert count_macs(attention, (x, x, x)) == (expected, expected)


def test_mha_cross_attention_kdim_vdim_seq_first():
    attention = nn.MultiheadAttention(8, 2, kdim=4, vdim=6)
    query, key, value = torch.randn(3, 2, 8), torch.randn(5, 2, 4), torch.randn(5, 2, 6)
    # q 3*8*8 + k 5*8*4 + v 5*8*6 + attention 2*3*5*8 + out 3*8*8
    expected = 192 + 160 + 240 + 240 + 192
    assert count_macs(attention, (query, key, value), batch_size=2) == (expected, expected)


def test_mha_nonzero_from_pruned_projections():
    attention = nn.MultiheadAttention(4, 1, batch_first=True)
    with torch.no_grad():
        attention.in_proj_weight[:4] = 0  # all of W_q
        attention.out_proj.weight[0] = 0  # one output row (4 weights)
    x = torch.randn(1, 3, 4)
    dense = 3 * 3 * 16 + 2 * 9 * 4 + 3 * 16
    nonzero = 3 * 2 * 16 + 2 * 9 * 4 + 3 * 12  # attention matmuls count dense
    assert count_macs(attention, (x, x, x)) == (dense, nonzero)


def test_transformer_encoder_layer_counts_out_proj_once():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    layer.eval()  # eligible for the fused fast path, which would bypass the hooked submodules
    x = torch.randn(2, 5, 16)
    # T=5, E=16, F=32 per example
    in_proj, attention, out_proj = 3 * 5 * 16 * 16, 2 * 5 * 5 * 16, 5 * 16 * 16
    feed_forward = 2 * 5 * 16 * 32
    assert count_macs(layer, x) == (in_proj + attention + out_proj + feed_forward,) * 2
    counts, skipped = macs_by_module(layer, x, batch_size=None)
    assert counts["self_attn.out_proj"] == (out_proj, out_proj)
    assert counts["self_attn"] == (in_proj + attention, in_proj + attention)
    assert skipped == []
    assert not any(m.training for m in layer.modules())


def test_transformer_encoder_eval_with_padding_mask_avoids_nested_fast_path():
    block = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(block, num_layers=2).eval()
    x = torch.randn(2, 5, 16)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, 3:] = True
    inputs = {"src": x, "src_key_padding_mask": padding}
    # precondition: a plain eval forward hands the layers nested tensors (the fast path)
    seen = []
    handle = encoder.layers[0].linear1.register_forward_hook(
        lambda module, args, output: seen.append(args[0].is_nested)
    )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nested tensors are a prototype"
        encoder(**inputs)
    handle.remove()
    assert seen == [True]
    # every position is counted, padding included: 2 layers of the per-layer formula
    per_layer = 3 * 5 * 256 + 2 * 25 * 16 + 5 * 256 + 2 * 5 * 16 * 32
    assert count_macs(encoder, inputs) == (2 * per_layer, 2 * per_layer)
    assert not any(m.training for m in encoder.modules())


# --- sparsity kinds ----------------------------------------------------------------------------


def _square_layer() -> nn.Linear:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
        layer.bias.copy_(torch.tensor([1.0, 0.0]))
    return layer


def test_masked_model_sparsity_and_relative_sparsity():
    model = nn.Sequential(_square_layer())
    apply_masks(model, {"0.weight": torch.tensor([[True, False], [True, True]])})
    result = summary(model, torch.randn(1, 2))
    row = result.layers[0]
    assert (row.name, row.kind, row.params, row.nonzero) == ("0", "Linear", 4, 3)
    assert row.sparsity == pytest.approx(0.25)
    assert row.relative_sparsity == pytest.approx(2 / 10)  # |-2| of |1|+|-2|+|3|+|-4|
    assert (row.macs, row.macs_nonzero) == (4, 3)
    assert (result.params, result.nonzero) == (6, 4)  # bias [1, 0]
    assert count_params(model) == (6, 4)


def test_baked_model_relative_sparsity_needs_reference():
    reference = nn.Sequential(_square_layer())
    model = copy.deepcopy(reference)
    apply_masks(model, {"0.weight": torch.tensor([[True, False], [False, True]])})
    bake(model)
    assert summary(model, torch.randn(1, 2)).layers[0].relative_sparsity is None
    result = summary(model, torch.randn(1, 2), reference=reference)
    assert result.layers[0].relative_sparsity == pytest.approx((2 + 3) / 10)
    assert result.relative_sparsity == pytest.approx(0.5)


def test_reference_with_other_shapes_is_refused():
    with pytest.raises(PrunekitError, match="shape"):
        summary(nn.Linear(2, 3), torch.randn(1, 2), reference=nn.Linear(2, 2))
    with pytest.raises(PrunekitError, match="no parameter"):
        summary(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2), reference=nn.Linear(2, 2))


def test_structural_sparsity_two_zero_rows():
    layer = nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight[1] = 0
        layer.weight[3] = 0
        layer.weight[0, 0] = 0  # not a whole row
    row = summary(layer, torch.randn(1, 3)).layers[0]
    assert row.structural_sparsity == pytest.approx(0.5)
    assert row.nonzero == 5


# --- summary object and side effects -----------------------------------------------------------


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.embed = nn.Embedding(4, 2)
        self.fc = nn.Linear(2 * 4 * 4, 3)
        self.odd = nn.Bilinear(3, 3, 1)

    def forward(self, x):
        hidden = self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))
        return self.odd(hidden, hidden)


def test_summary_totals_table_and_skipped():
    model = _ConvNet()
    result = summary(model, torch.randn(2, 1, 4, 4))
    # conv: 16 positions * 2 channels * 9; fc: 32 * 3; Bilinear has no rule -> 0, listed
    assert result.macs == 16 * 2 * 9 + 32 * 3
    assert result.skipped == ["odd"]
    # rows are the weights prunekit.prune targets: not the embedding, not the unknown Bilinear
    assert [row.name for row in result.layers] == ["conv", "fc"]
    assert result.weight_params == 18 + 96
    assert result.params == sum(p.numel() for p in model.parameters())
    restored = json.loads(json.dumps(result.to_dict()))
    assert restored["layers"][1]["macs"] == 96 and restored["skipped"] == ["odd"]
    table = str(result)
    assert table.splitlines()[0].split()[:3] == ["layer", "type", "params"]
    assert "total" in table and "288" in table and "odd" in table.splitlines()[-1]


def test_summary_leaves_model_untouched_and_unhooked():
    model = _ConvNet().train()  # batch-norm in train mode would update running stats
    model.fc.eval()  # mixed flags must come back exactly
    apply_masks(model, {"fc.weight": torch.rand(3, 32) > 0.5})
    before = _state_copy(model)
    modes = [m.training for m in model.modules()]
    summary(model, torch.randn(2, 1, 4, 4))
    _assert_same_state(before, model)
    assert [m.training for m in model.modules()] == modes
    assert _no_hooks_left(model)


def test_hooks_and_modes_restored_when_forward_raises():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(4, 1)).train()  # shapes do not chain
    with pytest.raises(RuntimeError):
        count_macs(model, torch.randn(1, 3))
    assert _no_hooks_left(model) and model.training and model[0].training


def test_batch_size_that_cannot_be_read_is_explained():
    with pytest.raises(PrunekitError, match="batch size"):
        count_macs(nn.Linear(1, 1), torch.tensor(1.0))


# --- latency and size --------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_latency_positive_and_mode_kept(training):
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)).train(training)
    milliseconds = measure_latency(model, torch.randn(2, 8), warmup=1, repeats=3)
    assert milliseconds > 0 and math.isfinite(milliseconds)
    assert model.training is training and model[1].training is training
    stats = latency_stats(model, torch.randn(2, 8), warmup=0, repeats=5)
    assert stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"] and stats["repeats"] == 5


def test_latency_rejects_bad_repeats():
    with pytest.raises(PrunekitError, match="repeats"):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), repeats=0)


def test_file_size_tracks_stored_values():
    layer = nn.Linear(100, 100)
    size = file_size_bytes(layer)
    assert 4 * (100 * 100 + 100) <= size < 4 * (100 * 100 + 100) + 4096  # float32 + overhead
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    assert size == len(buffer.getvalue())
    apply_masks(layer, {"weight": torch.ones(100, 100, dtype=torch.bool)})
    # a masked model stores the originals plus a one-byte-per-entry bool mask
    assert file_size_bytes(layer) >= size + 100 * 100
