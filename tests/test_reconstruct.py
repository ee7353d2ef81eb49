"""Structured one-shot pruning with least-squares reconstruction (``prune(..., reconstruct=True)``)
on tiny random Hugging Face transformers: the refitted projection is the least-squares optimum
(checked against torch.linalg.lstsq on hand-collected inputs), the units kept are the structured
Wanda choice, reconstruction beats the same pruning without refit, masks and removal agree, the
pruned models save and reload, and bad input is refused with the model unchanged."""

import copy

import pytest
import torch
from torch import nn

from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)
from prunekit import prune
from prunekit.errors import PrunekitError
from prunekit.reconstruct import reconstruct_prune, refit_columns

transformers = pytest.importorskip("transformers")

from tiny_transformers import batches, bert, gpt2, llama  # noqa: E402

HELD_OUT = batches(count=2, seed=7)


def hidden(model, data=HELD_OUT):
    with torch.no_grad():
        return torch.cat([model(**batch).last_hidden_state.flatten(0, 1) for batch in data])


def error(model, dense):
    return float((hidden(model) - hidden(dense)).pow(2).mean())


def ffn_inputs(model, data, layer=0):
    """The inputs of block `layer`'s FFN output projection over the real (not padding) tokens."""
    rows = []
    consumer = model.encoder.layer[layer].output.dense
    handle = consumer.register_forward_pre_hook(lambda module, args: rows.append(args[0].flatten(0, 1)))
    with torch.no_grad():
        for batch in data:
            model(**batch)
    handle.remove()
    return torch.cat([row[batch["attention_mask"].flatten().bool()] for row, batch in zip(rows, data)])


def kept_rows(pruned_weight, dense_weight):
    """Indices of the dense rows the pruned weight kept (rows are copied unchanged)."""
    return [int((dense_weight - row).abs().sum(1).argmin()) for row in pruned_weight]


def test_refit_is_the_least_squares_solution():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(300, 10, generator=generator, dtype=torch.float64)
    inputs[:, 3] += inputs[:, 0]  # correlated columns: something to compensate with
    weight = torch.randn(4, 10, generator=generator, dtype=torch.float64)
    keep = torch.tensor([True, False, True, True, False, True, True, False, True, True])
    refitted = refit_columns(weight, inputs.t() @ inputs, keep, percdamp=0.0)
    reference = torch.linalg.lstsq(inputs[:, keep], inputs @ weight.t()).solution.t()
    torch.testing.assert_close(refitted[:, keep], reference)
    assert refitted[:, ~keep].abs().max() == 0
    assert torch.equal(refit_columns(weight, inputs.t() @ inputs, torch.ones(10, dtype=torch.bool)), weight)


def test_first_block_keeps_the_structured_wanda_units_and_refits_to_the_optimum():
    dense, model, data = bert(), bert(), batches()
    inputs = ffn_inputs(dense, data).double()
    consumer = dense.encoder.layer[0].output.dense.weight.detach().double()
    scores = inputs.norm(dim=0) * consumer.norm(dim=0)  # ‖a_j‖₂ · ‖W[:, j]‖₂
    expected = sorted(scores.topk(32).indices.tolist())
    result = reconstruct_prune(model, "wanda", 0.5, data, percdamp=0.0)
    assert result.units_before == 128 and result.units_after == 64
    kept = kept_rows(model.encoder.layer[0].intermediate.dense.weight, dense.encoder.layer[0].intermediate.dense.weight)
    assert kept == expected
    optimum = torch.linalg.lstsq(inputs[:, kept], inputs @ consumer.t()).solution.t()
    torch.testing.assert_close(model.encoder.layer[0].output.dense.weight.double(), optimum, rtol=1e-4, atol=1e-4)
    assert model.config.intermediate_size == 32  # every block has the new width: the config says so


@pytest.mark.parametrize("build, granularity", [(bert, "neuron"), (bert, "head"), (gpt2, "neuron"), (gpt2, "head"),
                                                (llama, "neuron")])
def test_reconstruction_beats_the_same_pruning_without_refit(build, granularity):
    dense, refitted, plain = build(), build(), build()
    result = prune(refitted, "wanda", 0.5, granularity=granularity, data=batches(), reconstruct=True)
    reconstruct_prune(plain, "wanda", 0.5, batches(), granularity=granularity, percdamp=1e12)  # damped to no refit
    assert result.units_after == result.units_before // 2
    assert result.params_after < result.params_before
    assert error(refitted, dense) < 0.8 * error(plain, dense)


def test_sequential_blocks_see_the_pruned_blocks_before_them():
    """Block 1 is refitted on what the pruned block 0 produces: its refit is the optimum on those inputs."""
    dense, model, data = bert(), bert(), batches()
    reconstruct_prune(model, "wanda", 0.5, data, percdamp=0.0)
    half = copy.deepcopy(dense)  # block 0 pruned as above, block 1 still dense
    half.encoder.layer[0] = copy.deepcopy(model.encoder.layer[0])
    inputs = ffn_inputs(half, data, layer=1).double()
    consumer = dense.encoder.layer[1].output.dense.weight.detach().double()
    kept = kept_rows(model.encoder.layer[1].intermediate.dense.weight, dense.encoder.layer[1].intermediate.dense.weight)
    optimum = torch.linalg.lstsq(inputs[:, kept], inputs @ consumer.t()).solution.t()
    torch.testing.assert_close(model.encoder.layer[1].output.dense.weight.double(), optimum, rtol=1e-4, atol=1e-4)


def test_sparsity_zero_changes_nothing():
    dense, model = bert(), bert()
    prune(model, "wanda", 0.0, granularity="neuron", data=batches(), reconstruct=True)
    assert all(torch.equal(value, dense.state_dict()[key]) for key, value in model.state_dict().items())


def test_masked_units_compute_what_removed_units_do():
    removed, masked = bert(), bert()
    prune(removed, "wanda", 0.5, granularity="neuron", data=batches(), reconstruct=True)
    result = prune(masked, "wanda", 0.5, granularity="neuron", data=batches(), reconstruct=True, remove=False)
    assert result.units_after == 64 and masked.encoder.layer[0].intermediate.dense.out_features == 64  # masked, not removed
    torch.testing.assert_close(hidden(masked), hidden(removed), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build", [bert, gpt2, llama])
def test_pruned_model_reloads_with_plain_from_pretrained(build, tmp_path):
    model = build()
    prune(model, "wanda", 0.5, granularity="neuron", data=batches(), reconstruct=True)
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(hidden(reloaded), hidden(model))


def test_blocks_of_different_widths_reload_through_save_pruned(tmp_path):
    from prunekit.hf import load_pruned, save_pruned

    model = bert()
    prune(model, "wanda", 0.5, granularity="neuron", data=batches(), reconstruct=True,
          exclude=["encoder.layer.1.intermediate.dense"])
    assert [layer.intermediate.dense.out_features for layer in model.encoder.layer] == [32, 64]
    path = save_pruned(model, tmp_path / "pruned")
    for reloaded in (transformers.AutoModel.from_pretrained(path, trust_remote_code=True).eval(), load_pruned(path)):
        torch.testing.assert_close(hidden(reloaded), hidden(model))


def _mlp_data():
    return [(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))]


@pytest.mark.parametrize("build, arguments, message", [
    (bert, {"granularity": "unstructured"}, "granularity 'neuron' or 'head'"),
    (bert, {"data": None}, "needs calibration data"),
    (bert, {"sparsity": 1.0}, "sparsity must be a number in [0, 1)"),
    (bert, {"scope": "global"}, "scope 'layer'"),
    (bert, {"pattern": "2:4"}, "'pattern' does not apply"),
    (bert, {"method": "taylor"}, "taylor"),
    (lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), {"data": _mlp_data()}, "has none"),
])
def test_bad_input_is_refused_and_the_model_is_unchanged(build, arguments, message):
    model = build()
    before = copy.deepcopy(model.state_dict())
    call = {"method": "wanda", "sparsity": 0.5, "granularity": "neuron", "data": batches(), **arguments}
    with pytest.raises(PrunekitError, match=message.replace("[", r"\[").replace(")", r"\)")):
        prune(model, call.pop("method"), call.pop("sparsity"), reconstruct=True, **call)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_a_masked_model_is_refused_until_baked():
    model = bert()
    prune(model, "magnitude", 0.3)
    with pytest.raises(PrunekitError, match="bake"):
        prune(model, "wanda", 0.5, granularity="neuron", data=batches(), reconstruct=True)
    assert model.encoder.layer[0].intermediate.dense.out_features == 64


def test_token_ids_past_the_vocabulary_are_refused_before_tracing():
    model, data = bert(), batches()
    data[1] = {**data[1], "input_ids": data[1]["input_ids"] + 100}
    with pytest.raises(PrunekitError, match="calibration batch 1 .*tokenizer does not match"):
        prune(model, "wanda", 0.5, granularity="neuron", data=data, reconstruct=True)
    assert model.encoder.layer[0].intermediate.dense.out_features == 64


def test_the_result_says_the_readers_were_refitted():
    result = prune(bert(), "wanda", 0.5, granularity="neuron", data=batches(), reconstruct=True)
    assert result.reconstructed and "readers refitted" in str(result)
    assert not prune(bert(), "magnitude", 0.5).reconstructed


def test_too_few_calibration_tokens_for_the_readers_width_are_refused():
    """Fewer tokens than the FFN output projection has inputs: XᵀX is singular, the refit would fit noise."""
    model = bert()
    with pytest.raises(PrunekitError, match="least-squares reconstruction needs at least as many calibration tokens "
                                            r"as a layer has inputs \(64 for 'encoder.layer.0.output.dense.weight'\)"):
        prune(model, "wanda", 0.5, granularity="neuron", data=batches(count=1, size=2), reconstruct=True)
    assert model.encoder.layer[0].intermediate.dense.out_features == 64


def test_a_failing_removal_puts_the_refitted_weights_back(monkeypatch):
    import prunekit.reconstruct as reconstruct

    def fail(*args, **kwargs):
        raise PrunekitError("removal failed")

    model = bert()
    before = copy.deepcopy(model.state_dict())
    monkeypatch.setattr(reconstruct, "remove_units", fail)
    with pytest.raises(PrunekitError, match="removal failed"):
        prune(model, "wanda", 0.5, granularity="neuron", data=batches(), reconstruct=True)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
