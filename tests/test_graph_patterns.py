"""Graph patterns of the architectures people bring: each pruned consistently, or refused with the reason.

References: the masked model (removal must compute what masking computes), hand-built models and
hand-computed groupings.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn
from torch_pruning import ops

import prunekit
from prunekit.graph import find_unit_groups
from prunekit.graph.trace import trace_graph
from prunekit.graph.walk import WalkDidNotSettle, walk_group
from prunekit.layers import handler_for
from prunekit.ties import tied_names


def _removal_equals_masking(model: nn.Module, x: torch.Tensor, granularity: str, sparsity: float = 0.5):
    masked = copy.deepcopy(model)
    prunekit.prune(masked, sparsity=sparsity, granularity=granularity, example_inputs=x, remove=False)
    result = prunekit.prune(model, sparsity=sparsity, granularity=granularity, example_inputs=x)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), masked.eval()(x), atol=1e-5, rtol=1e-5)
    return result


class Chunked(nn.Module):
    """One layer's outputs chunked in two, each half read by its own branch (sizes differ)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.a, self.b = nn.Linear(6, 8), nn.Linear(4, 5), nn.Linear(4, 3)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        left, right = torch.chunk(torch.relu(self.inp(x)), 2, dim=-1)
        return self.out(torch.cat([self.a(left), self.b(right)], dim=-1))


class FixedSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj, self.out = nn.Linear(6, 8), nn.Linear(4, 2)

    def forward(self, x):
        value, gate = self.proj(x).split(4, dim=-1)
        return self.out(value * torch.sigmoid(gate))


def test_chunk_keeps_its_pieces_equal_by_tying_unit_j_of_every_piece():
    torch.manual_seed(0)
    model, x = Chunked(), torch.randn(4, 6)
    (group,) = [g for g in find_unit_groups(model, x, "neuron") if g.name == "inp"]
    assert group.num_units == 4 and group.root_unit_index.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    _removal_equals_masking(model, x, "neuron")
    assert model.inp.out_features == 4 and model.a.in_features == model.b.in_features == 2  # 2 of 4 units


def test_split_consumers_are_ordered_by_the_piece_they_read():
    # torch-pruning pairs a split's consumers with its pieces in discovery order, and finds 'b'
    # (second piece) first here; the trace reorders them so index mapping sends piece i to consumer i
    torch.manual_seed(0)
    model, x = Chunked(), torch.randn(4, 6)
    traced = trace_graph(model, x)
    (split,) = [node for node in traced.graph.module2node.values() if node.type == ops.OPTYPE.SPLIT]
    assert [traced.names.get(out.module) for out in split.outputs] == ["a", "b"]


def test_a_split_into_fixed_sizes_is_refused_with_the_reason():
    model, x = FixedSplit(), torch.randn(4, 6)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(prunekit.PrunekitError, match=r"'proj': they are split into pieces of fixed sizes"):
        prunekit.prune(model, sparsity=0.5, granularity="neuron", example_inputs=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_groupnorm_loses_whole_groups_and_its_group_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    x = torch.randn(2, 3, 6, 6)
    (group,) = find_unit_groups(model, x, "channel")
    assert group.num_units == 4 and group.root_unit_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    _removal_equals_masking(model, x, "channel")
    assert (model[0].out_channels, model[1].num_channels, model[1].num_groups) == (4, 4, 2)


def test_layernorm_over_channels_is_refused_naming_it():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(prunekit.PrunekitError, match=r"'0': LayerNorm '1' normalises these units together"):
        prunekit.prune(model, sparsity=0.5, granularity="neuron", example_inputs=torch.randn(3, 4))


def test_transposed_convolutions_lose_output_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 6, 2, stride=2), nn.ReLU(), nn.Conv2d(6, 2, 1))
    x = torch.randn(2, 3, 4, 4)
    _removal_equals_masking(model, x, "channel")
    assert model[0].out_channels == 3 and model[0].weight.shape == (3, 3, 2, 2)


class SkipConcat(nn.Module):
    """A U-Net-style skip: encoder features concatenated with upsampled decoder features."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.down = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.up, self.dec = nn.ConvTranspose2d(6, 5, 2, stride=2), nn.Conv2d(9, 2, 1)

    def forward(self, x):
        skip = torch.relu(self.enc(x))
        return self.dec(torch.cat([skip, torch.relu(self.up(torch.relu(self.down(skip))))], dim=1))


def test_skip_concatenations_are_followed():
    torch.manual_seed(0)
    model, x = SkipConcat(), torch.randn(2, 1, 8, 8)
    names = [g.name for g in find_unit_groups(model, x, "channel")]
    assert names == ["enc", "down", "up"]
    _removal_equals_masking(model, x, "channel")
    assert model.dec.in_channels == model.enc.out_channels + model.up.out_channels == 5


def test_in_place_activation_after_instance_norm_keeps_the_norm_in_the_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True),
                          nn.LeakyReLU(inplace=True), nn.Conv2d(4, 2, 1))  # fmt: skip
    x = torch.randn(2, 1, 6, 6)
    (group,) = find_unit_groups(model, x, "channel")
    assert "1.weight" in group.params and model[2].inplace  # the flag is restored after tracing
    _removal_equals_masking(model, x, "channel")
    assert model[1].weight.shape == (2,)


def test_the_graph_walk_is_bounded():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    traced = trace_graph(model, torch.randn(2, 4))
    with pytest.raises(WalkDidNotSettle, match="did not settle after 2 steps"):
        walk_group(traced.graph, model[0], range(8), max_steps=2)


def test_grouped_query_attention_neurons_are_found_quickly_and_exclusions_come_first():
    pytest.importorskip("transformers")
    from third_party_models import llama_gqa

    model, x = llama_gqa()
    start = time.perf_counter()
    groups = find_unit_groups(model, x, "neuron", exclude=["model.layers.1.mlp"])
    assert time.perf_counter() - start < 30  # the walk used to never return here
    assert [g.name for g in groups] == ["model.layers.0.mlp.gate_proj"]


class TiedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(10, 6), nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.embed(ids)))


def test_tied_weights_get_one_mask_and_stay_tied():
    torch.manual_seed(0)
    model, ids = TiedHead(), torch.tensor([[1, 2, 3]])
    assert tied_names(model)["head.weight"] == ["embed.weight", "head.weight"]
    prunekit.prune(model, sparsity=0.5)
    torch.testing.assert_close(model.embed.weight, model.head.weight)  # the embedding sees the mask too
    assert float((model.embed.weight == 0).float().mean()) == pytest.approx(0.5)
    masked_out = model(ids)
    prunekit.bake(model)
    assert model.head.weight is model.embed.weight
    torch.testing.assert_close(model(ids), masked_out)
    assert prunekit.count_params(model)[0] == 60  # the shared tensor counts once


def test_conv1d_units_are_weight_columns():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(5, 3)  # 3 inputs -> 5 outputs, weight (3, 5)
    handler = handler_for(layer)
    batches = handler.slices("fc", layer, True, [1, 4], [0, 1])
    assert [(b.param, b.dim, b.positions) for b in batches] == [("fc.weight", 1, (1, 4)), ("fc.bias", 0, (1, 4))]
    with torch.no_grad():
        layer.weight[:, 2] = 0
    assert handler.structural_sparsity(layer, {"weight": layer.weight}) == pytest.approx(0.2)


@pytest.mark.parametrize(("granularity", "method"), [("unstructured", "magnitude"), ("neuron", "l1")])
def test_the_default_method_suits_the_granularity(granularity, method):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    result = prunekit.prune(model, sparsity=0.5, granularity=granularity, example_inputs=torch.randn(2, 4))
    assert result.method == method
