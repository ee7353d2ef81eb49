"""Attention heads: masked model, physical removal, replay and HF save/load agree with references."""

import copy
import json

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph import replay, unit_masks_to_param_masks
from prunekit.layers.pruned_attention import PrunedMultiheadAttention
from prunekit.stats.heads import head_output_norms
from prunekit.graph.heads import find_head_groups, shrink_heads
from prunekit.masking import apply_masks, bake
from prunekit.zoo import build_model

from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)
from invariants import minilm_with_texts, n_params, random_keep, same_state, tiny_transformer

TINY_HEAD_PARAMS = 3 * 16 * 64 + 3 * 16 + 64 * 16  # q/k/v rows + biases + out_proj columns, dim 64


# ---------------------------------------------------------------- nn.MultiheadAttention


def test_tiny_groups_have_hand_computed_members():
    groups = find_head_groups(tiny_transformer(training=True))
    assert [(g.name, g.num_units) for g in groups] == [("layers.0.self_attn", 4), ("layers.1.self_attn", 4)]
    members = {m.param: m for m in groups[0].members}
    heads = torch.arange(64) // 16
    assert torch.equal(members["layers.0.self_attn.in_proj_weight"].unit_index, torch.cat([heads] * 3))
    assert members["layers.0.self_attn.in_proj_bias"].dim == 0
    out = members["layers.0.self_attn.out_proj.weight"]
    assert out.dim == 1 and torch.equal(out.unit_index, heads)
    assert "layers.0.self_attn.out_proj.bias" not in members  # shared by all heads


@pytest.mark.parametrize("train", [True, False])
def test_tiny_masked_equals_shrunk(train):
    model, x = tiny_transformer(training=True), torch.randn(6, 1, 8, 8)
    groups = find_head_groups(model)
    keep = random_keep(groups, seed=6, keep_probability=0.5)  # removes 3 heads of layer 0, 2 of layer 1
    masked = apply_masks(copy.deepcopy(model), unit_masks_to_param_masks(model, groups, keep))
    shrunk = copy.deepcopy(model)
    record = shrink_heads(shrunk, keep, groups)
    removed = sum(int((~k).sum()) for k in keep.values())
    assert removed > 0 and n_params(model) - n_params(shrunk) == removed * TINY_HEAD_PARAMS
    assert [s["removed"] for s in record.steps] == [(~k).nonzero().flatten().tolist() for k in keep.values()]
    for net in (model, masked, shrunk):
        net.train(train)
    with torch.no_grad():
        expected, got = masked(x), shrunk(x)
        assert not torch.allclose(expected, model(x), atol=1e-3)  # heads really mattered
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    shrunk(x).sum().backward()  # trains after shrinking


def test_replay_on_fresh_model_is_bit_identical_and_json_safe():
    model, x = tiny_transformer(training=True), torch.randn(4, 1, 8, 8)
    first = shrink_heads(model, {"layers.0.self_attn": torch.tensor([True, False, True, True])})
    # second round on the already pruned model: group numbering refers to the model at that time
    (group,) = find_head_groups(model, exclude=["layers.1"])
    assert group.num_units == 3
    second = shrink_heads(model, {group.name: torch.tensor([False, True, True])})
    record = json.loads(json.dumps((first + second).to_dict()))
    fresh = replay(tiny_transformer(seed=1, training=True), None, record)
    assert fresh.load_state_dict(model.state_dict(), strict=True) is not None
    assert fresh.layers[0].self_attn.num_heads == 2 and isinstance(fresh.layers[1].self_attn, nn.MultiheadAttention)
    for mode in (True, False):
        model.train(mode), fresh.train(mode)
        assert torch.equal(fresh(x), model(x))


def test_pruned_attention_matches_multihead_attention_reference():
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(12, 3, batch_first=False).eval()
    pruned = PrunedMultiheadAttention.from_attention(reference, torch.ones(3, dtype=torch.bool))
    query, memory = torch.randn(5, 2, 12), torch.randn(7, 2, 12)  # (length, batch, embed)
    causal = torch.ones(5, 7, dtype=torch.bool).triu(1)
    padding = torch.tensor([[False] * 6 + [True], [False] * 7])
    for kwargs in [{}, {"attn_mask": causal, "key_padding_mask": padding},
                   {"need_weights": False, "attn_mask": causal.float() * -1e4},
                   {"average_attn_weights": False, "key_padding_mask": padding}]:  # fmt: skip
        expected, got = reference(query, memory, memory, **kwargs), pruned(query, memory, memory, **kwargs)
        torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
        assert (got[1] is None) == (expected[1] is None)
        if expected[1] is not None:
            torch.testing.assert_close(got[1], expected[1], atol=1e-6, rtol=1e-5)
    unbatched = query[:, 0]
    torch.testing.assert_close(pruned(unbatched, unbatched, unbatched)[0], reference(unbatched, unbatched, unbatched)[0])


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # the unpruned reference
def test_transformer_encoder_with_padding_mask_after_shrinking():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    encoder = nn.Sequential()
    encoder.add_module("stack", nn.TransformerEncoder(layer, 2, enable_nested_tensor=True))
    encoder.eval()
    x, padding = torch.randn(3, 5, 16), torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    groups = find_head_groups(encoder)
    keep = {groups[1].name: torch.tensor([False, True, True, False])}
    masked = apply_masks(copy.deepcopy(encoder), unit_masks_to_param_masks(encoder, groups, keep))
    shrink_heads(encoder, keep, groups)
    with torch.no_grad():
        got = encoder.stack(x, src_key_padding_mask=padding)
        expected = masked.stack(x, src_key_padding_mask=padding)
    valid = ~padding  # padded positions are unspecified (the fused path zeroes them)
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-5)


def test_head_output_norms_match_one_head_reference():
    torch.manual_seed(0)

    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(12, 3, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    model, batches = Attend().eval(), [torch.randn(2, 5, 12), torch.randn(1, 4, 12)]
    groups = find_head_groups(model)
    norms = head_output_norms(model, groups, batches)["attn"]
    for head in range(3):  # reference: the module's output with only `head` kept and no bias
        alone = copy.deepcopy(model)
        keep = {"attn": torch.arange(3) == head}
        apply_masks(alone, unit_masks_to_param_masks(alone, groups, keep))
        nn.init.zeros_(alone.attn.out_proj.bias)
        with torch.no_grad():
            tokens = torch.cat([alone(x).reshape(-1, 12) for x in batches])
        torch.testing.assert_close(norms[head], tokens.norm(dim=-1).mean(), atol=1e-5, rtol=1e-5)
    assert not model.attn._forward_hooks and not model.attn.out_proj._forward_pre_hooks


# ---------------------------------------------------------------- errors, model unchanged


def test_model_without_attention_is_a_clear_error():
    with pytest.raises(PrunekitError, match="granularity 'head' needs attention layers; LeNet300 has none"):
        find_head_groups(build_model("lenet300", (1, 8, 8), 10))


def test_removing_all_heads_is_refused_and_model_unchanged():
    model = tiny_transformer(training=True)
    before = copy.deepcopy(model)
    keep = {"layers.0.self_attn": torch.tensor([True, False, True, True]),
            "layers.1.self_attn": torch.zeros(4, dtype=torch.bool)}  # fmt: skip
    with pytest.raises(PrunekitError, match="removes all 4 heads of attention 'layers.1.self_attn'"):
        shrink_heads(model, keep)
    assert same_state(model, before) and isinstance(model.layers[0].self_attn, nn.MultiheadAttention)


def test_masked_model_and_foreign_groups_are_refused():
    model = tiny_transformer(training=True)
    groups = find_head_groups(model)
    keep = {"layers.0.self_attn": torch.tensor([True, False, True, True])}
    apply_masks(model, unit_masks_to_param_masks(model, groups, keep))
    with pytest.raises(PrunekitError, match="remove_masked_units carry the masks"):
        shrink_heads(model, keep, groups)
    bake(model)
    shrink_heads(model, keep, groups)
    with pytest.raises(PrunekitError, match="different version"):
        shrink_heads(model, keep, groups)  # groups describe the 4-head model


# ---------------------------------------------------------------- Hugging Face MiniLM (BERT)


@pytest.fixture(scope="module")
def minilm():
    return minilm_with_texts(6, seed=1)


def test_minilm_embeddings_match_sentence_transformers(minilm):
    from prunekit.hf import _model_dir, embed

    sentence_transformers = pytest.importorskip("sentence_transformers")
    model, tokenizer, texts = minilm
    reference = sentence_transformers.SentenceTransformer(str(_model_dir()), device="cpu", local_files_only=True)
    expected = reference.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(embed(model, tokenizer, texts, normalize=True), expected, atol=1e-5, rtol=1e-4)


def test_minilm_masked_equals_shrunk_and_reloads(minilm, tmp_path):
    from prunekit.hf import embed, load_pruned, save_pruned
    from transformers import AutoModel

    model, tokenizer, texts = minilm
    groups = find_head_groups(model)
    assert [g.name for g in groups] == [f"encoder.layer.{i}.attention.self" for i in range(6)]
    assert {g.num_units for g in groups} == {12} and len(groups[0].members) == 7
    keep = {"encoder.layer.1.attention.self": ~torch.isin(torch.arange(12), torch.tensor([2, 9])),
            "encoder.layer.4.attention.self": torch.arange(12) != 0}  # fmt: skip
    masked = apply_masks(copy.deepcopy(model), unit_masks_to_param_masks(model, groups, keep))
    shrunk = copy.deepcopy(model)
    shrink_heads(shrunk, keep, groups)
    assert shrunk.encoder.layer[1].attention.self.query.out_features == 10 * 32
    assert shrunk.encoder.layer[1].attention.output.dense.in_features == 10 * 32
    dense, got = embed(model, tokenizer, texts), embed(shrunk, tokenizer, texts)
    torch.testing.assert_close(got, embed(masked, tokenizer, texts), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, dense, atol=1e-4)

    save_pruned(shrunk, tmp_path)
    reloaded = load_pruned(tmp_path)
    assert [layer.attention.self.num_attention_heads for layer in reloaded.encoder.layer] == [12, 10, 12, 12, 11, 12]
    assert torch.equal(embed(reloaded, tokenizer, texts), got)
    # why load_pruned exists: transformers 5.x builds every layer with config.num_attention_heads
    with pytest.raises(Exception, match="mismatch"):
        AutoModel.from_pretrained(tmp_path, local_files_only=True)


def test_minilm_head_output_norms_zero_for_masked_heads(minilm):
    model, tokenizer, texts = minilm
    groups = find_head_groups(model)[:1]
    inputs = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    keep = {groups[0].name: torch.arange(12) % 3 != 0}
    masked = apply_masks(copy.deepcopy(model), unit_masks_to_param_masks(model, groups, keep))
    dense_norms = head_output_norms(model, groups, inputs)[groups[0].name]
    masked_norms = head_output_norms(masked, groups, [inputs])[groups[0].name]
    # layer 0 sees the same input either way, so kept heads measure the same and removed ones 0
    torch.testing.assert_close(masked_norms, torch.where(keep[groups[0].name], dense_norms, 0.0))
    assert bool((dense_norms > 0).all())
