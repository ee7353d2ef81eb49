"""prunekit.prune with granularity "head" and "layer": choices against hand-computed references,
removal == masking, replay on a fresh model, and bad input leaving the model unchanged."""

import copy

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph import replay
from prunekit.stats.heads import head_output_norms
from prunekit.graph.heads import find_head_groups
from prunekit.graph.layers import SkippedBlock
from prunekit.masking import get_masks
from prunekit.pruner import prune
from prunekit.zoo import build_model

from invariants import minilm_with_texts, random_batches, same_state, tiny_transformer

SHAPE = (1, 8, 8)


def resnet(seed=0):
    torch.manual_seed(seed)
    model = build_model("resnet20", SHAPE, 10)
    for module in model.modules():  # non-trivial BatchNorm so every block changes the output
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
            module.running_mean.uniform_(-0.1, 0.1)
    return model.eval()


def removed_heads(result):
    return {step["group"]: step["removed"] for step in result.shrink_record.steps}


# ---------------------------------------------------------------- heads


def test_head_l1_removes_the_heads_with_smallest_qkv_row_norms():
    model = tiny_transformer()
    expected = {}
    for index in range(2):
        attn = model.layers[index].self_attn
        per_head = attn.in_proj_weight.detach().abs().view(3, attn.num_heads, attn.head_dim, -1).sum(dim=(0, 2, 3))
        expected[f"layers.{index}.self_attn"] = sorted(torch.argsort(per_head)[:2].tolist())
    result = prune(model, method="l1", sparsity=0.5, granularity="head")
    assert removed_heads(result) == expected
    assert [model.layers[i].self_attn.num_heads for i in range(2)] == [2, 2]
    assert result.unit == "head" and result.sparsity_achieved == 0.5


def test_head_activation_mean_removes_the_heads_with_smallest_output_norms():
    model, data = tiny_transformer(), random_batches(SHAPE, 10)
    groups = find_head_groups(model)
    norms = head_output_norms(model, groups, [inputs for inputs, _ in data])
    expected = {name: sorted(torch.argsort(norm)[:1].tolist()) for name, norm in norms.items()}
    result = prune(model, method="activation-mean", sparsity=0.25, granularity="head", data=data)
    assert removed_heads(result) == expected


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_head_removal_equals_masking_and_replays_bit_identical(scope):
    x = random_batches(SHAPE, 10, seed=3)[0][0]
    masked, shrunk = tiny_transformer(), tiny_transformer()
    masked_result = prune(masked, method="weight-norm", sparsity=0.5, granularity="head", scope=scope, remove=False)
    shrunk_result = prune(shrunk, method="weight-norm", sparsity=0.5, granularity="head", scope=scope)
    assert masked_result.shrink_record is None and get_masks(masked) and not get_masks(shrunk)
    assert shrunk_result.params_after < shrunk_result.params_before
    with torch.no_grad():
        torch.testing.assert_close(shrunk(x), masked(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(shrunk(x), tiny_transformer()(x), atol=1e-3)
    fresh = replay(tiny_transformer(seed=1), None, shrunk_result.shrink_record.to_dict())
    fresh.load_state_dict(shrunk.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), shrunk(x))


def test_head_on_a_model_without_attention_says_so_and_leaves_it_unchanged():
    model = build_model("lenet300", SHAPE, 10)
    before = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match="granularity 'head' needs attention layers; .* has none"):
        prune(model, method="l1", sparsity=0.5, granularity="head")
    assert same_state(model, before)


def test_head_criteria_that_need_gradients_are_refused_by_name():
    with pytest.raises(PrunekitError, match="unknown head method 'taylor'"):
        prune(tiny_transformer(), method="taylor", sparsity=0.5, granularity="head", data=random_batches(SHAPE, 10))


# ---------------------------------------------------------------- layers


def _reference_costs(model, candidates, data):
    """Loss increase when each block alone is replaced by the identity (by hand, on copies)."""

    def loss(net):
        with torch.no_grad():
            return sum(float(nn.functional.cross_entropy(net(x), y)) for x, y in data) / len(data)

    dense = loss(model)
    costs = {}
    for name in candidates:
        copy_ = copy.deepcopy(model)
        parent, _, child = name.rpartition(".")
        setattr(copy_.get_submodule(parent), child, nn.Identity())
        costs[name] = loss(copy_) - dense
    return costs


def test_layer_removal_cost_removes_the_cheapest_blocks_measured_on_data():
    model, data = resnet(), random_batches(SHAPE, 10, count=3)
    candidates = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    costs = _reference_costs(model, candidates, data)
    cheapest = sorted(sorted(costs, key=costs.get)[:3], key=candidates.index)
    result = prune(model, method="removal-cost", sparsity=3 / 7, granularity="layer", data=data)
    assert result.targets == candidates
    assert [step["group"] for step in result.shrink_record.steps] == cheapest
    assert all(isinstance(model.get_submodule(name), SkippedBlock) for name in cheapest)
    assert result.params_after < result.params_before and result.units_after == 4


def test_layer_removal_equals_masking_and_replays_bit_identical():
    x = random_batches(SHAPE, 10, seed=5)[0][0]
    masked, removed = resnet(), resnet()
    prune(masked, method="random", sparsity=0.5, granularity="layer", seed=2, remove=False)
    result = prune(removed, method="random", sparsity=0.5, granularity="layer", seed=2)
    assert len(result.shrink_record.steps) == round(0.5 * 7)
    with torch.no_grad():
        torch.testing.assert_close(removed(x), masked(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(removed(x), resnet()(x), atol=1e-3)
    fresh = replay(resnet(seed=1), None, result.shrink_record)
    fresh.load_state_dict(removed.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), removed(x))


def test_layer_pruning_keeps_one_block_and_respects_exclude():
    model = tiny_transformer()
    result = prune(model, method="random", sparsity=0.99, granularity="layer")
    skipped = [isinstance(layer, SkippedBlock) for layer in model.layers]
    assert sorted(skipped) == [False, True] and result.units_after == 1
    model = resnet()
    result = prune(model, method="random", sparsity=0.5, granularity="layer", exclude=["layer1", "layer3.2"])
    assert result.targets == ["layer2.1", "layer2.2", "layer3.1"]
    assert {step["group"] for step in result.shrink_record.steps} <= set(result.targets)


@pytest.mark.parametrize(
    ("model_name", "kwargs", "message"),
    [
        ("lenet300", {"method": "random"}, "granularity 'layer' needs removable blocks; .* has none"),
        ("resnet20", {"method": "removal-cost"}, "method 'removal-cost' needs data"),
        ("resnet20", {"method": "random", "round_to": 8}, "round_to .* does not apply to granularity 'layer'"),
        ("resnet20", {"method": "l1"}, "unknown layer method 'l1'"),
        ("resnet20", {"method": "random", "exclude": ["layer1", "layer2", "layer3.1"]}, "1 removable block"),
    ],
)
def test_bad_layer_requests_are_refused_and_model_unchanged(model_name, kwargs, message):
    model = build_model(model_name, SHAPE, 10)
    before, structure = copy.deepcopy(model), repr(model)
    with pytest.raises(PrunekitError, match=message):
        prune(model, sparsity=0.5, granularity="layer", **kwargs)
    assert same_state(model, before) and repr(model) == structure


# ---------------------------------------------------------------- Hugging Face MiniLM


@pytest.fixture(scope="module")
def minilm():
    model, tokenizer, texts = minilm_with_texts(4, seed=2)
    return model, tokenizer, dict(tokenizer(texts, padding=True, return_tensors="pt"))


def test_minilm_layer_pruning_reloads_with_plain_from_pretrained(minilm, tmp_path):
    from transformers import AutoModel

    model, _, inputs = minilm
    model = copy.deepcopy(model)
    result = prune(model, method="random", sparsity=2 / 6, granularity="layer", seed=1)
    assert model.config.num_hidden_layers == len(model.encoder.layer) == 4 and result.units_after == 4
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).last_hidden_state, model(**inputs).last_hidden_state)


def test_minilm_head_pruning_by_activation_mean_reloads_with_load_pruned(minilm, tmp_path):
    from prunekit.hf import load_pruned, save_pruned

    model, _, inputs = minilm
    model = copy.deepcopy(model)
    groups = find_head_groups(model)
    norms = head_output_norms(model, groups, inputs)
    result = prune(model, method="activation-mean", sparsity=0.25, granularity="head", data=[(inputs, None)])
    assert removed_heads(result) == {name: sorted(torch.argsort(n)[:3].tolist()) for name, n in norms.items()}
    assert all(layer.attention.self.num_attention_heads == 9 for layer in model.encoder.layer)
    reloaded = load_pruned(save_pruned(model, tmp_path))
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).last_hidden_state, model(**inputs).last_hidden_state)


def test_minilm_heads_and_layers_pruned_reload_with_from_pretrained_remote_code(minilm, tmp_path):
    from transformers import AutoModel

    from prunekit.hf import save_pruned

    model, _, inputs = minilm
    model = copy.deepcopy(model)
    prune(model, method="l1", sparsity=0.5, granularity="head")
    prune(model, method="random", sparsity=1 / 6, granularity="layer")
    path = save_pruned(model, tmp_path / "pruned")
    reloaded, info = AutoModel.from_pretrained(path, trust_remote_code=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert [layer.attention.self.num_attention_heads for layer in reloaded.encoder.layer] == [6] * 5
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(**inputs).last_hidden_state, model(**inputs).last_hidden_state)


def test_save_pruned_replaces_an_existing_folder_only_when_the_new_one_is_complete(minilm, tmp_path, monkeypatch):
    from prunekit.hf import save_pruned

    model, _, _ = minilm
    target = tmp_path / "saved"
    target.mkdir()
    (target / "keep.txt").write_text("the user's earlier save")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(model, target)
    assert [p.name for p in tmp_path.iterdir()] == ["saved"] and (target / "keep.txt").read_text() == "the user's earlier save"
