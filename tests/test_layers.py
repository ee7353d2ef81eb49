"""Whole-block removal: candidates, masked equivalent, replay, scoring leaves the model untouched."""

import copy
import json

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError, UnknownNameError
from prunekit.graph.layers import (
    SkippedBlock,
    find_layer_candidates,
    layer_masks,
    layers_removed,
    remove_layers,
    score_layers,
)
from prunekit.graph import ShrinkRecord, replay
from prunekit.masking import apply_masks
from prunekit.zoo import build_model

from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)
from invariants import minilm_with_texts, same_state, tiny_transformer

# blocks whose shortcut is the identity: every block but the first of stages 2 and 3
RESNET20_IDENTITY_BLOCKS = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


def resnet20(seed=0):
    """resnet20 in eval mode with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    model = build_model("resnet20", (3, 8, 8), 10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.3)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    return model.eval()


# ---------------------------------------------------------------- residual blocks


def test_resnet20_candidates_are_the_identity_shortcut_blocks():
    model = resnet20()
    assert find_layer_candidates(model) == RESNET20_IDENTITY_BLOCKS
    assert find_layer_candidates(model, torch.randn(2, 3, 8, 8)) == RESNET20_IDENTITY_BLOCKS
    assert find_layer_candidates(build_model("lenet300", (1, 8, 8), 10)) == []


def test_resnet20_removal_equals_masked_blocks_and_replays():
    model, x = resnet20(), torch.randn(4, 3, 8, 8)
    names = ["layer1.1", "layer2.2", "layer3.1"]
    masks = layer_masks(model, names)
    assert sorted(masks) == sorted(f"{name}.bn2.{p}" for name in names for p in ("weight", "bias"))
    masked = apply_masks(copy.deepcopy(model), masks)
    removed = copy.deepcopy(model)
    record = remove_layers(removed, names)
    assert record.steps == [
        {"round": 0, "group": name, "granularity": "layer", "num_units": 1, "removed": [0]} for name in names
    ]
    assert all(isinstance(removed.get_submodule(name), SkippedBlock) for name in names)
    with torch.no_grad():
        expected, got = masked(x), removed(x)
        assert not torch.allclose(got, model(x), atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    params = sum(p.numel() for name in names for p in model.get_submodule(name).parameters())
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in removed.parameters()) == params

    fresh = replay(resnet20(seed=1), None, json.loads(json.dumps(record.to_dict())))
    fresh.load_state_dict(removed.state_dict(), strict=True)
    assert torch.equal(fresh(x), got)


def test_score_layers_matches_removal_and_leaves_model_bit_identical():
    model, x = resnet20(), torch.randn(4, 3, 8, 8)
    labels = model(x).argmax(dim=1)

    def quality(net):  # log-likelihood of the dense model's predictions
        with torch.no_grad():
            return float(torch.log_softmax(net(x), dim=1).gather(1, labels[:, None]).mean())

    before, structure, output = copy.deepcopy(model), repr(model), model(x).detach()
    scores = score_layers(model, RESNET20_IDENTITY_BLOCKS, quality)  # all of them, one at a time
    assert same_state(model, before) and repr(model) == structure and torch.equal(model(x), output)
    for name in ("layer1.0", "layer3.2"):
        without = copy.deepcopy(model)
        remove_layers(without, [name])
        assert scores[name] == pytest.approx(quality(model) - quality(without), abs=1e-6)


def test_bad_names_are_refused_and_model_unchanged():
    model = resnet20()
    before = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match="'layer2.0' cannot be removed: its shortcut is not the identity"):
        remove_layers(model, ["layer1.1", "layer2.0"])  # a projection block
    with pytest.raises(UnknownNameError, match="unknown removable layer 'layer2.l'; did you mean"):
        remove_layers(model, ["layer2.l"])
    with pytest.raises(PrunekitError, match="removing all 7 removable blocks"):
        remove_layers(model, RESNET20_IDENTITY_BLOCKS)
    with pytest.raises(PrunekitError, match="needs removable blocks"):
        remove_layers(build_model("lenet300", (1, 8, 8), 10), ["fc1"])
    bad_step = {"round": 0, "group": "layer2.0", "granularity": "layer", "num_units": 1, "removed": [0]}
    with pytest.raises(PrunekitError, match="'layer2.0' .* this model has no such group; replay needs a fresh"):
        replay(model, None, ShrinkRecord([bad_step]))
    assert same_state(model, before) and repr(model) == repr(before)


# ---------------------------------------------------------------- transformer encoder layers


def test_transformer_tiny_layer_removal_equals_masked_pre_norm_layer():
    model, x = tiny_transformer(), torch.randn(5, 1, 8, 8)
    assert find_layer_candidates(model) == ["layers.0", "layers.1"]
    masked = apply_masks(copy.deepcopy(model), layer_masks(model, ["layers.0"]))
    removed = copy.deepcopy(model)
    remove_layers(removed, ["layers.0"])
    assert isinstance(removed.layers[0], SkippedBlock) and len(removed.layers) == 2
    with torch.no_grad():
        got = removed(x)
        assert got.shape == (5, 10) and not torch.allclose(got, model(x), atol=1e-3)
        torch.testing.assert_close(got, masked(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(PrunekitError, match="removing all 2"):
        remove_layers(model, ["layers.0", "layers.1"])


def test_torch_transformer_encoder_layers_are_deleted_and_restored():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 3, enable_nested_tensor=False), nn.Linear(16, 2)).eval()
    x = torch.randn(2, 5, 16)
    assert find_layer_candidates(model, x) == ["0.layers.0", "0.layers.1", "0.layers.2"]
    with pytest.raises(PrunekitError, match="post-norm"):
        layer_masks(model, ["0.layers.1"])
    kept = [model[0].layers[0], model[0].layers[2]]
    with torch.no_grad():
        expected = model[1](kept[1](kept[0](x)))
        with layers_removed(model, ["0.layers.1"]):
            assert model[0].num_layers == 2
            torch.testing.assert_close(model(x), expected)
        assert model[0].num_layers == 3 and len(model[0].layers) == 3
        remove_layers(model, ["0.layers.1"])
        assert list(model[0].layers) == kept
        torch.testing.assert_close(model(x), expected)


# ---------------------------------------------------------------- Hugging Face BERT layers


@pytest.fixture(scope="module")
def minilm():
    return minilm_with_texts(4, seed=2)


def test_minilm_layer_removal_saves_and_reloads_with_plain_from_pretrained(minilm, tmp_path):
    from prunekit.graph.heads import shrink_heads
    from prunekit.hf import embed, load_pruned
    from transformers import AutoModel

    model, tokenizer, texts = minilm
    assert find_layer_candidates(model) == [f"encoder.layer.{i}" for i in range(6)]
    reference = copy.deepcopy(model)  # skip layer 2 the other way: a pass-through in its place
    reference.encoder.layer[2] = SkippedBlock()
    removed = copy.deepcopy(model)
    remove_layers(removed, ["encoder.layer.2"])
    assert removed.config.num_hidden_layers == 5 and model.config.num_hidden_layers == 6
    assert [layer.attention.self.layer_idx for layer in removed.encoder.layer] == [0, 1, 2, 3, 4]
    got = embed(removed, tokenizer, texts)
    torch.testing.assert_close(got, embed(reference, tokenizer, texts), atol=1e-6, rtol=1e-6)

    removed.save_pretrained(tmp_path / "layers")
    reloaded = AutoModel.from_pretrained(tmp_path / "layers", local_files_only=True)
    assert torch.equal(embed(reloaded, tokenizer, texts), got)

    shrink_heads(removed, {"encoder.layer.3.attention.self": torch.arange(12) >= 4})  # old layer 4
    removed.save_pretrained(tmp_path / "both")
    both = load_pruned(tmp_path / "both")
    assert len(both.encoder.layer) == 5 and both.encoder.layer[3].attention.self.num_attention_heads == 8
    assert torch.equal(embed(both, tokenizer, texts), embed(removed, tokenizer, texts))
