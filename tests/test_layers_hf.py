"""Whole-block pruning (granularity "layer") on third-party architectures (tiny random models from
third_party_models): the blocks offered, output shape kept, parameters gone, replay + strict load on
a fresh model, config counts lowered so save_pretrained / from_pretrained reloads the same model,
removal == masking where a masked equivalent exists, and refusals that say why and change nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import third_party_models
from invariants import same_state
from prunekit.errors import PrunekitError
from prunekit.graph import replay
from prunekit.graph.layers import find_layer_candidates, layer_masks, remove_layers
from prunekit.inputs import call_model, model_outputs
from prunekit.masking import apply_masks
from prunekit.pruner import prune


def efficientnet():
    """EfficientNet deep enough for two residual blocks in its block list (depth 0.5, not 0.3)."""
    from transformers import EfficientNetConfig, EfficientNetModel

    config = EfficientNetConfig(num_channels=3, image_size=32, width_coefficient=0.25, depth_coefficient=0.5,
                                hidden_dim=320)
    return EfficientNetModel(config), {"pixel_values": third_party_models._image()}


def t5_encoder(layers=3):
    """T5 with three blocks: the first owns the relative position bias, the other two can go."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=layers, num_heads=4)
    return T5EncoderModel(config), third_party_models._ids()


BUILDERS = {**third_party_models.BUILDERS, "efficientnet-deep": efficientnet, "t5-encoder-3": t5_encoder,
            "t5-encoder-2": lambda: t5_encoder(layers=2)}


def build(name):
    torch.manual_seed(0)
    model, inputs = BUILDERS[name]()
    for module in model.modules():  # lively weights: random inits make activations vanish
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
    for param_name, param in model.named_parameters():  # ConvNeXt's layer scale starts at 1e-6
        if "layer_scale" in param_name:
            param.data.fill_(0.5)
    return model.eval(), inputs


def output(model, inputs):
    with torch.no_grad():
        return model_outputs(call_model(model.eval(), inputs))[0]


_COUNT = {  # model -> what counts its removable layers in the config
    "bert": "num_hidden_layers", "distilbert": "num_hidden_layers", "vit": "num_hidden_layers",
    "gpt2": "num_hidden_layers", "llama": "num_hidden_layers", "llama-gqa": "num_hidden_layers",
    "t5-encoder-3": "num_hidden_layers", "swin": "depths", "resnet": "depths", "convnext": "depths",
}  # fmt: skip


def layer_count(name, model):
    value = getattr(model.config, _COUNT[name])
    return sum(value) if isinstance(value, list) else value


# name -> (candidates, blocks removed at sparsity 0.3)
SUPPORTED = {
    "bert": (["encoder.layer.0", "encoder.layer.1"], 1),
    "distilbert": (["transformer.layer.0", "transformer.layer.1"], 1),
    "vit": (["layers.0", "layers.1"], 1),
    "swin": (["encoder.layers.0.blocks.1", "encoder.layers.1.blocks.1"], 1),  # see the shift test
    "gpt2": (["transformer.h.0", "transformer.h.1"], 1),
    "llama": (["model.layers.0", "model.layers.1"], 1),
    "llama-gqa": (["model.layers.0", "model.layers.1"], 1),
    "t5-encoder-3": (["encoder.block.1", "encoder.block.2"], 1),
    "resnet": (["encoder.stages.0.layers.0", "encoder.stages.0.layers.1", "encoder.stages.1.layers.1"], 1),
    "convnext": ([f"encoder.stages.{s}.layers.{b}" for s in range(2) for b in range(2)], 1),
    "mobilenet-v2": ([f"layer.{i}" for i in (1, 3, 4, 6, 7, 8, 10, 11, 13, 14)], 3),
    "efficientnet-deep": (["encoder.blocks.4", "encoder.blocks.6", "encoder.blocks.8"], 1),
    "monai-segresnet": (["down_layers.0.1", "down_layers.1.1", "down_layers.1.2", "up_layers.0.0"], 1),
}


@pytest.mark.parametrize("name", list(SUPPORTED))
def test_layer_pruning_removes_blocks_keeps_shapes_and_replays(name, tmp_path):
    model, inputs = build(name)
    fresh, dense = copy.deepcopy(model), output(model, inputs)
    candidates, expected_removed = SUPPORTED[name]
    assert find_layer_candidates(model, inputs) == candidates
    counted = name in _COUNT
    count_before = layer_count(name, model) if counted else None

    result = prune(model, "random", 0.3, granularity="layer", example_inputs=inputs, seed=0)
    removed = [step["group"] for step in result.shrink_record.steps]
    assert len(removed) == expected_removed and set(removed) <= set(candidates)
    assert result.params_after < result.params_before
    pruned = output(model, inputs)
    assert pruned.shape == dense.shape and not torch.allclose(pruned, dense, atol=1e-4)

    rebuilt = replay(fresh, inputs, result.shrink_record)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(output(rebuilt, inputs), pruned)
    if counted:  # the config says how many layers there are now: plain from_pretrained rebuilds it
        assert layer_count(name, model) == count_before - expected_removed
        model.save_pretrained(tmp_path)
        extra = {"add_pooling_layer": False} if name == "vit" else {}
        reloaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True, **extra)
        assert not any(info.values()), info
        assert torch.equal(output(reloaded, inputs), pruned)


@pytest.mark.parametrize("name", ["llama", "gpt2", "vit", "convnext", "mobilenet-v2", "efficientnet-deep",
                                  "monai-segresnet"])
def test_layer_masking_equals_removal(name):
    masked, inputs = build(name)
    removed_model = copy.deepcopy(masked)
    prune(masked, "random", 0.3, granularity="layer", example_inputs=inputs, seed=0, remove=False)
    result = prune(removed_model, "random", 0.3, granularity="layer", example_inputs=inputs, seed=0)
    torch.testing.assert_close(output(masked, inputs), output(removed_model, inputs), atol=1e-5, rtol=1e-5)
    assert result.params_after < result.params_before


def test_without_example_inputs_layers_of_config_counted_lists_built_alike_are_offered():
    swin, _ = build("swin")  # its last stage (downsample=None) is a stage, not a residual block
    assert find_layer_candidates(swin) == ["encoder.layers.0.blocks.1", "encoder.layers.1.blocks.1"]
    convnext, _ = build("convnext")  # config.num_stages counts its stages, which are built differently
    assert find_layer_candidates(convnext) == SUPPORTED["convnext"][0]


def test_llama_layers_are_renumbered_and_the_key_value_cache_still_works():
    model, inputs = build("llama")
    remove_layers(model, ["model.layers.0"], inputs)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0]
    with torch.no_grad():
        cached = model(**inputs, use_cache=True)
        step = model(input_ids=inputs["input_ids"][:, -1:], past_key_values=cached.past_key_values, use_cache=True)
    assert step.logits.shape == (2, 1, 99)


def test_swin_first_block_of_a_stage_stays_its_window_shift_would_change(tmp_path):
    model, inputs = build("swin")
    original = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match="'encoder.layers.0.blocks.0' cannot be removed: layer 1 would move to "
                                            r"place 0, where config.depths\[0\] gives a layer another shift_size"):
        remove_layers(model, ["encoder.layers.0.blocks.0"], inputs)
    assert same_state(model, original) and repr(model) == repr(original)
    masks = layer_masks(model, ["encoder.layers.0.blocks.1"], inputs)
    masked = apply_masks(copy.deepcopy(model), masks)
    remove_layers(model, ["encoder.layers.0.blocks.1"], inputs)
    assert model.config.depths == [1, 2] and model.encoder.layers[0].blocks[0].shift_size == 0
    torch.testing.assert_close(output(masked, inputs), output(model, inputs), atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path)
    assert torch.equal(output(reloaded, inputs), output(model, inputs))


def test_gpt2_scaled_by_layer_index_offers_only_its_last_layer(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=99, n_embd=32, n_layer=3, n_head=4, n_positions=32,
                        scale_attn_by_inverse_layer_idx=True)
    torch.manual_seed(0)
    model, inputs = GPT2LMHeadModel(config).eval(), third_party_models._ids()
    assert find_layer_candidates(model, inputs) == ["transformer.h.2"]  # earlier ones would rescale later ones
    with pytest.raises(PrunekitError, match="'transformer.h.0' cannot be removed: .* another attn.scaling"):
        remove_layers(model, ["transformer.h.0"], inputs)
    remove_layers(model, ["transformer.h.2"], inputs)
    assert model.config.n_layer == 2
    model.save_pretrained(tmp_path)
    assert torch.equal(output(type(model).from_pretrained(tmp_path), inputs), output(model, inputs))


@pytest.mark.parametrize(
    ("builder", "bad_inputs", "message"),
    [
        ("albert", None, "'encoder.albert_layer_groups.0' is not removable: it runs 2 times in one forward: its "
                         "weights are shared across depth"),
        ("t5-encoder-2", None, "'encoder.block.0' is not removable: layer 1 would move to place 0, where a model built "
                             "with config.num_hidden_layers lowered has other parameters"),
        ("monai-unet", None, "UNet has 2 removable block.* none two in one stack"),  # one per up-path stage
        ("monai-basic-unet", None, "needs removable blocks; BasicUNet has none"),
        ("monai-densenet", None, "needs removable blocks; DenseNet has none"),
        ("monai-basic-unet", torch.zeros(2, 1, 16, 16), "the model failed in 'down_4.convs.conv_0.adn.N' "
                                                        r"\(InstanceNorm2d\): ValueError: Expected more than 1 spatial"),
        ("mobilenet-v2", "none", "pass example_inputs so prunekit can run the model"),
    ],
)
def test_refusals_say_why_and_leave_the_model_bit_identical(builder, bad_inputs, message):
    model, inputs = build(builder)
    inputs = None if isinstance(bad_inputs, str) else inputs if bad_inputs is None else bad_inputs
    before, structure = copy.deepcopy(model), repr(model)
    with pytest.raises(PrunekitError, match=message):
        prune(model, "random", 0.3, granularity="layer", example_inputs=inputs)
    assert same_state(model, before) and repr(model) == structure


def test_a_model_that_fails_on_its_inputs_is_named_not_crashed():
    from transformers import EfficientNetConfig, EfficientNetModel

    config = EfficientNetConfig(num_channels=3, image_size=32, width_coefficient=0.25, depth_coefficient=0.3)
    model = EfficientNetModel(config).eval()  # hidden_dim left at its default: the top BatchNorm does not fit
    before = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match=r"failed in 'encoder.top_bn' \(BatchNorm2d\): RuntimeError: running_mean"):
        prune(model, "random", 0.3, granularity="layer", example_inputs={"pixel_values": torch.randn(2, 3, 32, 32)})
    assert same_state(model, before)


def test_removal_cost_on_a_causal_lm_removes_the_layer_whose_loss_grows_least():
    model, inputs = build("llama")
    labels = inputs["input_ids"]
    data = [(inputs, labels)]

    def loss_fn(out, targets):
        return nn.functional.cross_entropy(out.logits.flatten(0, 1), targets.flatten())

    def loss_without(index):  # by hand: delete the layer and lower the count
        copy_ = copy.deepcopy(model)
        del copy_.model.layers[index]
        copy_.config.num_hidden_layers -= 1
        with torch.no_grad():
            return float(loss_fn(copy_(**inputs, use_cache=False), labels))

    cheapest = min(range(2), key=loss_without)
    result = prune(model, "removal-cost", 0.5, granularity="layer", data=data, loss_fn=loss_fn)
    assert [step["group"] for step in result.shrink_record.steps] == [f"model.layers.{cheapest}"]
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
