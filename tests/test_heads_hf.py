"""Head pruning on Hugging Face layouts (tiny random models from third_party_models): removal equals
masking, masking equals zeroing the removed heads' values by hand, replay rebuilds the model, and
layouts that cannot lose heads are refused by name."""

import copy

import pytest
import torch
from torch import nn

import third_party_models
from invariants import n_params, one_thread  # noqa: F401 (autouse: one thread for this module)
from prunekit.errors import PrunekitError
from prunekit.graph import replay
from prunekit.graph.heads import find_head_groups
from prunekit.layers.attention import attention_projections
from prunekit.masking import bake
from prunekit.pruner import prune
from prunekit.stats.heads import head_output_norms

pytest.importorskip("transformers")

LAYOUTS = ["bert", "distilbert", "albert", "vit", "swin", "gpt2", "llama", "llama-gqa", "t5-encoder"]
#: layout -> the value projection's child name
VALUE = {"bert": "value", "albert": "value", "distilbert": "v_lin", "vit": "v_proj", "swin": "v_proj",
         "llama": "v_proj", "llama-gqa": "v_proj", "t5-encoder": "v", "gpt2": "c_attn"}  # fmt: skip


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model, inputs = third_party_models.BUILDERS[name]()
    return model.eval(), inputs


def output(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def attention_modules(model: nn.Module, group: str) -> list[nn.Module]:
    """The attention modules a head group covers: one, or every layer of a T5 stack."""
    if ".block." in group:  # T5: one group per stack and role
        prefix, _, rest = group.partition(".block.0.")
        return [model.get_submodule(f"{prefix}.block.{i}.{rest}") for i in range(len(model.get_submodule(f"{prefix}.block")))]
    return [model.get_submodule(group)]


def zero_values_by_hand(model: nn.Module, layout: str, removed: dict[str, list[int]]) -> nn.Module:
    """A copy of the dense model with the value outputs (weight and bias) of the removed units
    zeroed: a removed head then contributes nothing, which is what removal must compute."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for group, units in removed.items():
            for attention in attention_modules(model, group):
                projection = getattr(attention, VALUE[layout])
                if layout == "gpt2":  # Conv1D (in, 3 * embed): values are the third column block
                    width, size = attention.embed_dim, attention.head_dim
                    for unit in units:
                        columns = slice(2 * width + unit * size, 2 * width + (unit + 1) * size)
                        projection.weight[:, columns] = 0
                        projection.bias[columns] = 0
                    continue
                size = _head_size(attention)  # a key/value head: one unit also under GQA
                for unit in units:
                    projection.weight[unit * size:(unit + 1) * size] = 0
                    if projection.bias is not None:
                        projection.bias[unit * size:(unit + 1) * size] = 0
    return model


def _head_size(attention: nn.Module) -> int:
    for attribute in ("head_dim", "attention_head_size", "key_value_proj_dim"):
        if hasattr(attention, attribute):
            return getattr(attention, attribute)
    raise AssertionError(f"no head size on {type(attention).__name__}")


def removed_units(result) -> dict[str, list[int]]:
    return {step["group"]: step["removed"] for step in result.shrink_record.steps}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_removal_equals_masking_equals_zeroed_values_and_replays(layout):
    model, inputs = build(layout)
    dense = output(model, inputs)
    pruned = copy.deepcopy(model)
    result = prune(pruned, "l1", 0.5, granularity="head", example_inputs=inputs)
    removed = removed_units(result)
    assert removed and all(units for units in removed.values())
    gone = n_params(model) - n_params(pruned)  # (params_* count tied embeddings twice)
    assert gone > 0 and result.params_before - result.params_after == gone

    masked = copy.deepcopy(model)
    prune(masked, "l1", 0.5, granularity="head", example_inputs=inputs, remove=False)
    masked_out = output(bake(masked), inputs)
    pruned_out = output(pruned, inputs)
    by_hand = output(zero_values_by_hand(model, layout, removed), inputs)
    assert pruned_out.shape == dense.shape
    assert not torch.allclose(masked_out, dense, atol=1e-3)  # the removed heads mattered
    torch.testing.assert_close(masked_out, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pruned_out, masked_out, atol=1e-5, rtol=1e-5)

    fresh, _ = build(layout, seed=1)
    replay(fresh, inputs, result.shrink_record)
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    torch.testing.assert_close(output(fresh, inputs), pruned_out, atol=0, rtol=0)
    pruned.train()
    output_train = pruned(**inputs)[0]
    output_train.float().sum().backward()  # trains after removal


def test_gqa_removes_a_key_value_head_with_every_query_head_that_reads_it():
    model, inputs = build("llama-gqa")
    before = copy.deepcopy(model)
    result = prune(model, "l1", 0.5, granularity="head", example_inputs=inputs)
    head = model.model.layers[0].self_attn.head_dim
    for index, layer in enumerate(model.model.layers):
        (removed,) = removed_units(result)[f"model.layers.{index}.self_attn"]
        kept = 1 - removed  # two key/value heads, two query heads each
        old = before.model.layers[index].self_attn
        attention = layer.self_attn
        assert attention.num_key_value_groups == 2 and model.config.num_key_value_heads == 2
        query_rows = slice(2 * kept * head, 2 * (kept + 1) * head)  # query heads 2k and 2k+1
        assert torch.equal(attention.q_proj.weight, old.q_proj.weight[query_rows])
        assert torch.equal(attention.o_proj.weight, old.o_proj.weight[:, query_rows])
        for name in ("k_proj", "v_proj"):
            assert torch.equal(getattr(attention, name).weight, getattr(old, name).weight[kept * head:(kept + 1) * head])
    assert model.config.num_attention_heads == 4  # the shared config is left alone


def test_t5_heads_go_together_in_every_layer_with_their_position_bias_columns():
    model, inputs = build("t5-encoder")
    (group,) = find_head_groups(model)
    assert group.name == "encoder.block.0.layer.0.SelfAttention" and group.num_units == 4
    bias = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.detach().clone()
    result = prune(model, "l1", 0.5, granularity="head", example_inputs=inputs)
    removed = removed_units(result)[group.name]
    kept = [head for head in range(4) if head not in removed]
    first = model.encoder.block[0].layer[0].SelfAttention
    assert torch.equal(first.relative_attention_bias.weight, bias[:, kept])
    for block in model.encoder.block:
        attention = block.layer[0].SelfAttention
        assert (attention.n_heads, attention.inner_dim, attention.q.out_features) == (2, 16, 16)


def test_t5_refuses_to_exclude_part_of_a_stack_and_leaves_the_model_unchanged():
    model, inputs = build("t5-encoder")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match="Exclude all of them or none"):
        prune(model, "l1", 0.5, granularity="head", example_inputs=inputs, exclude=["encoder.block.1"])
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())


def test_albert_shared_layer_loses_its_heads_in_every_repetition():
    model, inputs = build("albert")
    (group,) = find_head_groups(model)
    result = prune(model, "l1", 0.5, granularity="head", example_inputs=inputs)
    attention = model.encoder.albert_layer_groups[0].albert_layers[0].attention
    assert result.units_after == 2 and attention.num_attention_heads == 2 and attention.all_head_size == 16
    assert attention.query.out_features == attention.dense.in_features == 16
    assert group.name == "encoder.albert_layer_groups.0.albert_layers.0.attention"


def test_swin_position_bias_table_loses_the_removed_heads_columns():
    model, inputs = build("swin")
    attention = model.encoder.layers[1].blocks[0].attention
    table = attention.relative_position_bias.relative_position_bias_table.detach().clone()
    name = "encoder.layers.1.blocks.0.attention"
    keep = torch.tensor([True, False, True, False])
    from prunekit.graph.heads import shrink_heads

    shrink_heads(model, {name: keep})
    assert torch.equal(attention.relative_position_bias.relative_position_bias_table, table[:, keep])
    assert attention.num_attention_heads == 2 and output(model, inputs).shape == (2, 16, 32)


def _gpt2_cross_attention():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=99, n_embd=32, n_layer=1, n_head=4, n_positions=32, add_cross_attention=True)
    inputs = {"input_ids": torch.randint(0, 99, (2, 6)), "encoder_hidden_states": torch.randn(2, 5, 32)}
    return GPT2Model(config).eval(), inputs


def test_gpt2_cross_attention_with_separate_query_projection():
    model, inputs = _gpt2_cross_attention()
    masked, pruned = copy.deepcopy(model), copy.deepcopy(model)
    prune(masked, "l1", 0.5, granularity="head", example_inputs=inputs, remove=False)
    result = prune(pruned, "l1", 0.5, granularity="head", example_inputs=inputs)
    cross = pruned.h[0].crossattention
    assert sorted(removed_units(result)) == ["h.0.attn", "h.0.crossattention"]
    assert (cross.num_heads, cross.split_size, cross.q_attn.nf, cross.c_attn.nf) == (2, 16, 16, 32)
    torch.testing.assert_close(output(pruned, inputs), output(bake(masked), inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["gpt2", "llama-gqa"])
def test_head_output_norms_equal_the_change_when_the_unit_is_zeroed(layout):
    """A unit's contribution to its attention's output is exactly what zeroing its values takes away
    (Conv1D weights are transposed; under GQA a unit is a key/value head with its query heads)."""
    model, inputs = build(layout)
    groups = find_head_groups(model)
    norms = head_output_norms(model, groups, inputs)
    out_name = "c_proj" if layout == "gpt2" else "o_proj"
    for group in groups[:1]:
        projection = model.get_submodule(f"{group.name}.{out_name}")
        seen = []
        handle = projection.register_forward_hook(lambda _, __, out: seen.append(out.detach()))
        output(model, inputs)
        for unit in range(group.num_units):  # the copy keeps the hook, which records into `seen`
            output(zero_values_by_hand(model, layout, {group.name: [unit]}), inputs)
        handle.remove()
        full = seen[0].reshape(-1, seen[0].shape[-1])
        expected = torch.stack([(full - other.reshape(full.shape)).norm(dim=-1).mean() for other in seen[1:]])
        torch.testing.assert_close(norms[group.name], expected, atol=1e-5, rtol=1e-4)


def test_activation_mean_on_a_t5_stack_and_a_gqa_model_removes_equal_to_masking():
    for layout in ("t5-encoder", "llama-gqa"):
        model, inputs = build(layout)
        masked, pruned = copy.deepcopy(model), copy.deepcopy(model)
        data = [(inputs, None)]
        prune(masked, "activation-mean", 0.5, granularity="head", data=data, remove=False)
        prune(pruned, "activation-mean", 0.5, granularity="head", data=data)
        torch.testing.assert_close(output(pruned, inputs), output(bake(masked), inputs), atol=1e-5, rtol=1e-5)


def test_unsupported_layout_is_refused_by_name_and_can_be_excluded():
    model, inputs = build("llama")
    attention = model.model.layers[1].self_attn
    attention.gate = nn.Parameter(torch.ones(4))  # a per-head parameter prunekit cannot know about
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match=r"'model\.layers\.1\.self_attn' .*'gate'.*Exclude it"):
        prune(model, "l1", 0.5, granularity="head", example_inputs=inputs)
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())
    result = prune(model, "l1", 0.5, granularity="head", example_inputs=inputs, exclude=["model.layers.1.self_attn"])
    assert list(removed_units(result)) == ["model.layers.0.self_attn"]

    model, inputs = build("gpt2")
    del model.transformer.h[0].attn.head_dim
    with pytest.raises(PrunekitError, match=r"'transformer\.h\.0\.attn' \(GPT2Attention\): it has no positive int attribute head_dim"):
        find_head_groups(model)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_attention_projections_name_every_projection_of_every_attention(layout):
    model, _ = build(layout)
    projections = attention_projections(model)
    by_attention: dict[str, list[nn.Module]] = {}
    for module, name in projections.items():
        by_attention.setdefault(name, []).append(module)
    per_attention = 2 if layout == "gpt2" else 4  # packed c_attn + c_proj; else q, k, v, output
    assert by_attention and all(len(modules) == per_attention for modules in by_attention.values())
    names = {module: name for name, module in model.named_modules()}
    assert all(names[module].startswith(name.rpartition(".")[0]) for module, name in projections.items())
    if layout == "bert":
        assert model.encoder.layer[0].attention.output.dense in projections
        assert model.encoder.layer[0].intermediate.dense not in projections


def test_attention_projections_include_attentions_head_pruning_refuses():
    model, _ = build("llama")
    attention = model.model.layers[0].self_attn
    attention.num_key_value_groups = 3  # inconsistent: head pruning refuses this layer
    with pytest.raises(PrunekitError, match="model.layers.0.self_attn"):
        find_head_groups(model)
    assert attention_projections(model)[attention.q_proj] == "model.layers.0.self_attn"


@pytest.mark.parametrize("layout", ["llama-gqa", "t5-encoder", "gpt2"])
def test_load_pruned_rebuilds_a_head_pruned_model_from_save_pretrained(layout, tmp_path):
    from prunekit.hf import load_pruned, save_pruned

    model, inputs = build(layout)
    prune(model, "l1", 0.5, granularity="head", example_inputs=inputs)
    save_pruned(model, tmp_path / "pruned")
    reloaded = load_pruned(tmp_path / "pruned", type(model))
    torch.testing.assert_close(output(reloaded, inputs), output(model, inputs), atol=0, rtol=0)


def test_excluding_an_output_projection_keeps_the_heads_that_feed_it():
    model, _ = build("bert")
    groups = find_head_groups(model, exclude=["encoder.layer.0.attention.output.dense"])
    assert [group.name for group in groups] == ["encoder.layer.1.attention.self"]
