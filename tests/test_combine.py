"""Pruning families combine in any order: physical removal carries the masks already on a model
(sliced with the weights), and the result computes what the masked model computes."""

import copy

import torch
from torch import nn

from prunekit import get_masks, prune
from prunekit.graph.layers import SkippedBlock

from invariants import random_batches, tiny_transformer

SHAPE = (1, 8, 8)


def test_unstructured_then_heads_carries_the_weight_masks():
    x = random_batches(SHAPE, 10, seed=3)[0][0]
    model = tiny_transformer()
    prune(model, sparsity=0.5, scope="global")
    weight_masks = get_masks(model)
    masked = copy.deepcopy(model)
    prune(masked, "l1", 0.5, granularity="head", remove=False)
    result = prune(model, "l1", 0.5, granularity="head")
    masks = get_masks(model)
    for step in result.shrink_record.steps:
        attention = step["group"]
        kept_heads = [head for head in range(step["num_units"]) if head not in step["removed"]]
        head_dim = 64 // step["num_units"]
        rows = torch.tensor([head * head_dim + i for head in kept_heads for i in range(head_dim)])
        packed = torch.cat([rows + part * 64 for part in range(3)])
        assert torch.equal(masks[f"{attention}.in_proj_weight"], weight_masks[f"{attention}.in_proj_weight"][packed])
        assert torch.equal(masks[f"{attention}.out_proj.weight"], weight_masks[f"{attention}.out_proj.weight"][:, rows])
    assert torch.equal(masks["classifier.weight"], weight_masks["classifier.weight"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x), atol=1e-5, rtol=1e-5)


def test_unstructured_then_layers_drops_the_masks_of_removed_blocks_only():
    torch.manual_seed(0)
    from prunekit.zoo import build_model

    model = build_model("resnet20", SHAPE, 10).eval()
    x = torch.rand(4, *SHAPE)
    prune(model, sparsity=0.6, scope="global")
    weight_masks = get_masks(model)
    masked = copy.deepcopy(model)
    prune(masked, "random", 3 / 7, granularity="layer", seed=1, remove=False)
    result = prune(model, "random", 3 / 7, granularity="layer", seed=1)
    removed = [step["group"] for step in result.shrink_record.steps]
    assert len(removed) == 3 and all(isinstance(model.get_submodule(name), SkippedBlock) for name in removed)
    expected = {name: mask for name, mask in weight_masks.items()
                if not any(name.startswith(block + ".") for block in removed)}
    masks = get_masks(model)
    assert masks.keys() == expected.keys()
    assert all(torch.equal(masks[name], expected[name]) for name in expected)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x), atol=1e-5, rtol=1e-5)


def test_channels_then_weights_then_neurons_in_one_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 12),
                          nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.randn(5, 1, 8, 8)
    prune(model, "l1", 0.5, granularity="channel", example_inputs=x[:2])
    prune(model, sparsity=0.5)
    reference = copy.deepcopy(model)
    prune(reference, "l2", 0.5, granularity="neuron", example_inputs=x[:2], remove=False)
    result = prune(model, "l2", 0.5, granularity="neuron", example_inputs=x[:2])
    assert model[0].out_channels == 3 and model[4].out_features == 6 and result.params_after < result.params_before
    assert model[4].weight.shape == get_masks(model)["4.weight"].shape == (6, 3 * 6 * 6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def test_layer_scope_takes_the_share_of_each_stack_and_global_of_all():
    from prunekit.zoo import build_model

    def removed(scope):
        torch.manual_seed(0)
        model = build_model("resnet20", SHAPE, 10).eval()
        result = prune(model, "random", 0.5, granularity="layer", scope=scope, seed=4)
        return [step["group"] for step in result.shrink_record.steps]

    per_stack = removed("layer")  # stacks of 3, 2 and 2 blocks: round(1.5)=2, 1 and 1
    assert [name.split(".")[0] for name in per_stack].count("layer1") == 2
    assert {name.split(".")[0] for name in per_stack} == {"layer1", "layer2", "layer3"}
    pooled = removed("global")  # round(0.5 * 7) = 4 of all seven, each stack keeping one
    assert len(pooled) == 4 and all(sum(n.startswith(s) for n in pooled) < size
                                    for s, size in (("layer1", 3), ("layer2", 2), ("layer3", 2)))


def test_channels_before_a_non_affine_batchnorm_are_not_offered():
    """Masking a channel that feeds BatchNorm(affine=False) leaves -mean/std, not zero: no masked
    equivalent, so those channels are skipped rather than removed wrongly."""
    from prunekit.graph import find_unit_groups

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU(), nn.Conv2d(4, 4, 3),
                          nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    groups = find_unit_groups(model, torch.randn(2, 1, 8, 8), "channel")
    assert [group.name for group in groups] == ["3"]
