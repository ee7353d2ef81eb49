"""Sequential calibration and SparseGPT through ``prunekit.prune`` on tiny random Hugging Face
models: blocks in order, each block's Hessians on the inputs the pruned blocks before it give
(checked against a hand-run reference), targets met exactly, outputs near the dense model's at
low sparsity and nearer than magnitude pruning's, and bad input refused with the model unchanged."""

import copy

import pytest
import torch
from torch import nn

from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)
from prunekit import Pruner, get_masks, prune
from prunekit.errors import PrunekitError
from prunekit.masking import bake
from prunekit.sequential import calibrate_sequentially
from prunekit.sparsegpt import sparsegpt_layer

transformers = pytest.importorskip("transformers")

from tiny_transformers import BUILDERS, SECOND_BLOCK_FIRST, VOCAB, batches, bert, gpt2, llama  # noqa: E402,F401


def block_weights(model):
    """The Linear / Conv1D layers inside the blocks (what sequential calibration prunes)."""
    from transformers.pytorch_utils import Conv1D

    return [name for name, module in model.named_modules()
            if name.startswith(("encoder.layer.", "h.", "layers.")) and isinstance(module, (nn.Linear, Conv1D))]


def hidden(model, data):
    with torch.no_grad():
        return torch.cat([model(**batch).last_hidden_state.flatten(0, 1) for batch in data])


def out_rows(model, name):
    """The weight `name` as (out x in): Conv1D stores (in x out)."""
    weight = model.get_submodule(name.rpartition(".")[0]).weight
    return weight.t() if "c_" in name else weight


def hand_hessian(model, layer, data):
    """2 XᵀX / n of the inputs of `layer` over the real (not padding) tokens of `data`, by a hook."""
    rows = []

    def keep_input(module, args):
        rows.append(args[0])

    handle = model.get_submodule(layer).register_forward_pre_hook(keep_input)
    try:
        for batch in data:
            with torch.no_grad():
                model(**batch)
            rows[-1] = rows[-1][batch["attention_mask"].bool()]
    finally:
        handle.remove()
    inputs = torch.cat(rows).double()
    return (2 * inputs.T @ inputs / inputs.shape[0]).float()


@pytest.mark.parametrize("layout", ["bert", "gpt2"])
def test_blocks_in_order_and_second_block_hessian_on_pruned_outputs(layout):
    model, data = BUILDERS[layout](), batches()
    dense_state = copy.deepcopy(model.state_dict())
    targets = [name + ".weight" for name in block_weights(model)]
    recorded = {}

    def solve(name, weight, hessian):
        recorded[name] = hessian.matrix.clone()
        return sparsegpt_layer(weight, hessian.matrix, 0.5)

    solved = calibrate_sequentially(model, data, targets, solve)
    assert list(recorded) == targets  # module order: block 0's layers, then block 1's
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in dense_state.items())  # untouched

    # by hand: write block 0's pruned weights into a copy, run it, hook the second block's first layer
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, (weight, keep) in solved.items():
            if name.startswith(("encoder.layer.0.", "h.0.")):
                reference.get_parameter(name).copy_(weight * keep)
    layer = SECOND_BLOCK_FIRST[layout]
    seen = recorded[layer + ".weight"]
    expected, dense = hand_hessian(reference, layer, data), hand_hessian(model, layer, data)
    assert torch.allclose(seen, expected, rtol=1e-4, atol=1e-6)
    # the dense model's inputs (what block 2 would see without block 1's pruning) are far off
    assert (seen - dense).norm() > 100 * (seen - expected).norm()


@pytest.mark.parametrize("layout", ["bert", "gpt2", "llama"])
def test_prune_meets_the_target_in_every_row_and_leaves_the_rest_dense(layout):
    model, data = BUILDERS[layout](), batches()
    outside = {name: value.clone() for name, value in model.state_dict().items()
               if not name.startswith(("encoder.layer.", "h.", "layers."))}
    result = prune(model, "sparsegpt", 0.5, data=data)
    names = [name + ".weight" for name in block_weights(model)]
    assert sorted(get_masks(model)) == sorted(names) and result.sparsity_achieved == 0.5
    for name in names:
        rows = out_rows(model, name)
        assert (rows == 0).sum(dim=1).eq(rows.shape[1] // 2).all(), name
    assert all(torch.equal(model.state_dict()[name], value) for name, value in outside.items())


@pytest.mark.parametrize("layout", ["bert", "gpt2", "llama"])
def test_two_four_pattern_is_exact_and_the_model_runs(layout):
    model, data = BUILDERS[layout](), batches()
    result = prune(model, "sparsegpt", data=data, pattern="2:4")
    assert result.sparsity_target == 0.5 and result.pattern == "2:4"
    for name in (name + ".weight" for name in block_weights(model)):
        rows = out_rows(model, name)
        assert ((rows != 0).reshape(rows.shape[0], -1, 4).sum(dim=-1) == 2).all(), name
    assert torch.isfinite(hidden(bake(model), data)).all()


def magnitude_by_row(model, sparsity):
    with torch.no_grad():
        for name in block_weights(model):
            rows = out_rows(model, name + ".weight")
            count = round(sparsity * rows.shape[1])
            rows.scatter_(1, rows.abs().topk(count, dim=1, largest=False).indices, 0.0)
    return model


def relative_error(outputs, reference):
    return float((outputs - reference).norm() / reference.norm())


@pytest.mark.parametrize("layout", ["bert", "gpt2", "llama"])
def test_outputs_stay_near_dense_and_nearer_than_magnitude(layout):
    """On held-out batches: near the dense outputs at 10%; at 50% nearer than per-row magnitude
    pruning of the same layers. (Random weights and tokens give nearly isotropic inputs, where
    the two differ least: the solver tests hold the layer-level margins.)"""
    data, held_out = batches(), batches(count=2, seed=1)
    for sparsity, bound in ((0.1, 0.05), (0.5, None)):
        model = BUILDERS[layout]()
        dense = hidden(model, held_out)
        magnitude = hidden(magnitude_by_row(copy.deepcopy(model), sparsity), held_out)
        prune(model, "sparsegpt", sparsity, data=data)
        error = relative_error(hidden(model, held_out), dense)
        assert error < (bound if bound is not None else relative_error(magnitude, dense)), sparsity


def test_excluded_layers_stay_dense():
    model, data = bert(), batches()
    kept = model.encoder.layer[0].output.dense.weight.detach().clone()
    result = prune(model, "sparsegpt", 0.5, data=data, exclude="encoder.layer.0.output.dense")
    assert "encoder.layer.0.output.dense.weight" not in get_masks(model) and len(result.targets) == 11
    assert torch.equal(model.encoder.layer[0].output.dense.weight, kept)


def test_a_second_call_prunes_further_and_keeps_what_went():
    model, data = bert(), batches()
    prune(model, "sparsegpt", 0.25, data=data)
    first = get_masks(model)
    result = prune(model, "sparsegpt", 0.5, data=data)
    second = get_masks(model)
    assert result.sparsity_achieved == 0.5
    assert all(not (second[name] & ~first[name]).any() for name in first)  # nothing that went came back


def unchanged(model, before):
    state = model.state_dict()
    return set(state) == set(before) and all(torch.equal(state[key], value) for key, value in before.items())


def test_model_without_blocks_is_refused_unchanged():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match="Sequential has none. The model was not changed"):
        prune(model, "sparsegpt", 0.5, data=[(torch.randn(16, 8), None)])
    assert unchanged(model, before)


def test_blocks_called_with_changing_arguments_are_refused_unchanged():
    """T5's first block computes the position bias the later blocks are given: replaying the first
    block's arguments would compute something else, so the model is refused."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    model = transformers.T5EncoderModel(config).eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match="block 1 of 'encoder.block' is called with other arguments than block 0"):
        prune(model, "sparsegpt", 0.5, data=batches())
    assert unchanged(model, before)


def test_too_few_tokens_is_refused_unchanged():
    model = bert()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match=r"\(64 for 'encoder.layer.0.output.dense.weight'\).*saw 20 tokens"):
        prune(model, "sparsegpt", 0.5, data=[{"input_ids": torch.randint(0, VOCAB, (2, 10))}])
    assert unchanged(model, before)


def test_pattern_that_does_not_divide_a_width_is_refused_unchanged():
    model = bert()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match="multiple of 6; 'encoder.layer.0.attention.self.query.weight' has 32"):
        prune(model, "sparsegpt", data=batches(), pattern="3:6")
    assert unchanged(model, before)


def test_a_failure_in_a_later_block_leaves_the_model_as_it_was():
    model, data = gpt2(), batches()
    before = copy.deepcopy(model.state_dict())
    model.train()

    def solve(name, weight, hessian):
        if name.startswith("h.1."):
            raise RuntimeError("solver failed")
        return sparsegpt_layer(weight, hessian.matrix, 0.5)

    with pytest.raises(RuntimeError, match="solver failed"):
        calibrate_sequentially(model, data, [name + ".weight" for name in block_weights(model)], solve)
    assert unchanged(model, before) and model.training and model.config.use_cache


def test_settings_that_do_not_apply_are_refused():
    model, data = bert(), batches()
    with pytest.raises(PrunekitError, match="no schedule: call prunekit.prune"):
        Pruner(model, "sparsegpt", 0.5, data=data)
    with pytest.raises(PrunekitError, match="granularity='unstructured'"):
        prune(model, "sparsegpt", 0.5, granularity="neuron", data=data)
    with pytest.raises(PrunekitError, match="'threshold' does not apply"):
        prune(model, "sparsegpt", threshold=0.1, data=data)
    with pytest.raises(PrunekitError, match="needs calibration data"):
        prune(model, "sparsegpt", 0.5)
    with pytest.raises(PrunekitError, match="scope 'row' \\(default\\) or 'layer'"):
        prune(model, "sparsegpt", 0.5, scope="global", data=data)
    assert not get_masks(model)


def test_methods_command_lists_sparsegpt(capsys):
    from prunekit.cli import main

    assert main(["methods"]) == 0
    assert "sparsegpt (second-order, column by column" in capsys.readouterr().out
