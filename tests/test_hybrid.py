"""Hybrid pruning: structured removal, then unstructured pruning of what remains (one result)."""

import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.hybrid import prune_hybrid
from prunekit.masking import get_masks
from prunekit.zoo import build_model

from invariants import mlp

WIDTHS = (10, 12, 8, 3)


def _reference(model):
    """Stage 1 by hand (keep the rows of largest L1 norm: 6 of 12, 4 of 8), stage 2 with torch's
    per-layer L1 unstructured pruning at 50%."""
    first = torch.argsort(model[0].weight.abs().sum(1), descending=True)[:6].sort().values
    second = torch.argsort(model[2].weight.abs().sum(1), descending=True)[:4].sort().values
    shrunk = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        shrunk[0].weight.copy_(model[0].weight[first]), shrunk[0].bias.copy_(model[0].bias[first])
        shrunk[2].weight.copy_(model[2].weight[second][:, first]), shrunk[2].bias.copy_(model[2].bias[second])
        shrunk[4].weight.copy_(model[4].weight[:, second]), shrunk[4].bias.copy_(model[4].bias)
    for index in (0, 2, 4):
        torch_prune.l1_unstructured(shrunk[index], "weight", amount=0.5)
    return shrunk


def test_hybrid_equals_neuron_l1_removal_then_torch_l1_unstructured():
    model, reference = mlp(WIDTHS), _reference(mlp(WIDTHS))
    result = prune_hybrid(model, "l1", 0.5, "magnitude", 0.5, torch.zeros(2, 10), scope="layer")
    assert [tuple(model[i].weight.shape) for i in (0, 2, 4)] == [(6, 10), (4, 6), (3, 4)]
    for index in (0, 2, 4):
        assert torch.equal(model[index].weight, reference[index].weight)
        assert torch.equal(get_masks(model)[f"{index}.weight"], reference[index].weight_mask.bool())
    x = torch.randn(5, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    dense_weights, kept_weights = 10 * 12 + 12 * 8 + 8 * 3, 10 * 6 + 6 * 4 + 4 * 3
    assert (result.granularity, result.units_targeted) == ("hybrid", dense_weights)
    assert result.units_after == kept_weights // 2
    assert result.sparsity_achieved == pytest.approx(1 - (kept_weights // 2) / dense_weights)
    assert result.shrink_record.steps and result.params_after < result.params_before


def test_hybrid_with_heads_then_weights_on_a_transformer():
    torch.manual_seed(0)
    model = build_model("transformer-tiny", (1, 8, 8), 10).eval()
    result = prune_hybrid(model, "l2", 0.5, "magnitude", 0.3, torch.zeros(2, 1, 8, 8), granularity="head")
    assert [layer.self_attn.num_heads for layer in model.layers] == [2, 2]
    assert {step["granularity"] for step in result.shrink_record.steps} == {"head"}
    assert get_masks(model) and result.units_after < result.units_before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_method": "magnitud"}, "unknown .*method 'magnitud'"),
        ({"weight_sparsity": 1.5}, "sparsity must be a number in \\[0, 1\\)"),
        ({"weight_method": "gradient"}, "method 'gradient' needs data"),
        ({"granularity": "layer"}, "hybrid pruning removes neuron, channel, lstm-unit, head units first"),
        ({"unit_method": "bn-scale"}, "unknown neuron method 'bn-scale'"),
    ],
)
def test_bad_hybrid_requests_fail_before_either_stage_touches_the_model(kwargs, message):
    model = mlp(WIDTHS)
    before = copy.deepcopy(model)
    options = {"unit_method": "l1", "unit_sparsity": 0.5, "weight_method": "magnitude", "weight_sparsity": 0.5,
               **kwargs}
    with pytest.raises(PrunekitError, match=message):
        prune_hybrid(model, example_inputs=torch.zeros(2, 10), **options)
    assert repr(model) == repr(before) and not get_masks(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))


def test_hybrid_relative_sparsity_counts_removed_and_zeroed_magnitude():
    model = mlp(WIDTHS)
    linears = [model[i].weight.detach().abs().sum() for i in (0, 2, 4)]
    dense = float(sum(linears))
    result = prune_hybrid(model, "l1", 0.5, "magnitude", 0.5, torch.zeros(2, 10), scope="layer")
    left = sum(float(model[i].weight.detach().abs().sum()) for i in (0, 2, 4))
    assert result.relative_sparsity == pytest.approx(1 - left / dense)
    assert 0 < result.relative_sparsity < result.sparsity_achieved  # the smallest weights and units went first
