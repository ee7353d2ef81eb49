"""Structured pruning through prunekit.prune: unit scores against hand-computed references,
selection rules, and physical removal == masking."""

import copy

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.masking import get_masks
from prunekit.pruner import prune
from prunekit.select import select_units
from prunekit.zoo import build_model

from invariants import mlp, random_batches

WIDTHS = (10, 12, 8, 3)


def _expected_keep(scores, sparsity):
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[torch.argsort(scores, descending=True, stable=True)[: scores.numel() - round(sparsity * scores.numel())]] = True
    return keep


def _hidden_activations(model, batches):
    """Outputs of the two hidden Linear layers (pre-ReLU) for every batch, with gradients."""
    records = []
    for inputs, targets in batches:
        first = model[0](inputs)
        second = model[2](torch.relu(first))
        loss = nn.functional.cross_entropy(model[4](torch.relu(second)), targets)
        grads = torch.autograd.grad(loss, [first, second])
        records.append(((first.detach(), second.detach()), grads))
    return records


@pytest.mark.parametrize("method", ["activation-mean", "apoz", "activation-gradient", "taylor", "l1", "weight-norm"])
def test_neuron_scores_match_hand_computed_references(method):
    model = mlp(WIDTHS)
    batches = random_batches((10,), 3, rows=16)
    records = _hidden_activations(model, batches)
    expected = {}
    for index, name in enumerate(["0", "2"]):
        acts = torch.cat([r[0][index] for r in records])
        grads = torch.cat([r[1][index] for r in records])
        consumer = model[index * 2 + 2].weight.detach()
        expected[name] = {
            "activation-mean": acts.abs().mean(0),
            "apoz": 1 - (acts <= 0).float().mean(0),
            "activation-gradient": grads.abs().mean(0),
            "taylor": (acts * grads).abs().mean(0),
            "l1": model[index * 2].weight.detach().abs().sum(1),
            "weight-norm": (model[index * 2].weight.detach().pow(2).sum(1) + consumer.pow(2).sum(0)).sqrt(),
        }[method]
    pruned = copy.deepcopy(model)
    prune(pruned, method=method, granularity="neuron", sparsity=0.5, scope="layer", data=batches,
          example_inputs=batches[0][0][:2], remove=False)
    masks = get_masks(pruned)
    for name in ["0", "2"]:
        keep = _expected_keep(expected[name], 0.5)
        assert torch.equal(masks[f"{name}.weight"].any(dim=1), keep), name
    # the consumer's matching input columns are zeroed too, the output layer keeps its outputs
    assert torch.equal(masks["2.weight"].any(dim=0), _expected_keep(expected["0"], 0.5))
    assert masks["4.weight"].any(dim=1).all()


def test_fpgm_scores_match_brute_force_distances():
    model = mlp(WIDTHS)
    rows = model[0].weight.detach()
    distances = torch.stack([(rows - rows[i]).norm(dim=1).sum() for i in range(rows.shape[0])])
    pruned = copy.deepcopy(model)
    prune(pruned, method="fpgm", granularity="neuron", sparsity=0.25, exclude=["2"],
          example_inputs=torch.randn(2, 10), remove=False)
    assert torch.equal(get_masks(pruned)["0.weight"].all(dim=1), _expected_keep(distances, 0.25))


def test_bn_scale_keeps_channels_with_largest_gamma():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -3.0, 0.1, 2.0, -0.2, 1.0]))
    result = prune(model, method="bn-scale", granularity="channel", sparsity=0.5, exclude=["3"],
                   example_inputs=torch.randn(2, 1, 8, 8))
    assert model[0].out_channels == 3 and model[1].num_features == 3 and model[3].in_channels == 3
    assert model[1].weight.detach().tolist() == [-3.0, 2.0, 1.0]
    assert result.params_after < result.params_before


def test_select_units_rules():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([100.0, 200.0])}
    layer = select_units(scores, 0.5, "layer")
    assert layer["a"].tolist() == [False, False, True, True] and layer["b"].tolist() == [False, True]
    # global: normalised by group mean, so the large-scale group does not escape pruning
    global_keep = select_units(scores, 0.5, "global")
    assert sum(int((~keep).sum()) for keep in global_keep.values()) == 3
    assert int(global_keep["b"].sum()) == 1
    # never removes the last unit of a group
    assert int(select_units({"c": torch.tensor([1.0, 2.0])}, 0.99, "layer")["c"].sum()) == 1
    assert int(select_units(scores, 0.99, "global")["b"].sum()) == 1
    # round_to keeps a multiple of 8
    assert int(select_units({"d": torch.arange(64.0)}, 0.45, "layer", round_to=8)["d"].sum()) % 8 == 0


@pytest.mark.parametrize(
    "model_name, granularity, method",
    [("lenet300", "neuron", "taylor"), ("lenet5", "channel", "l1"), ("resnet20", "channel", "fpgm"),
     ("vgg-small", "channel", "bn-scale"), ("lstm", "lstm-unit", "activation-mean"),
     ("transformer-tiny", "neuron", "activation-mean")],  # the feed-forward neurons of each encoder layer
)
def test_removal_equals_masking_through_the_api(model_name, granularity, method):
    torch.manual_seed(0)
    model = build_model(model_name, (1, 28, 28), 10)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        for _ in range(3):
            model(torch.rand(8, 1, 28, 28))
    model.eval()
    inputs, targets = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    kwargs = dict(method=method, granularity=granularity, sparsity=0.5, scope="global",
                  data=[(inputs, targets)], example_inputs=inputs[:2], seed=0)
    masked_result = prune(masked, remove=False, **kwargs)
    removed_result = prune(removed, remove=True, **kwargs)
    torch.testing.assert_close(removed(inputs), masked(inputs), atol=1e-5, rtol=1e-4)
    assert removed_result.params_after < removed_result.params_before
    assert masked_result.units_after == removed_result.units_after
    assert removed_result.shrink_record is not None and masked_result.shrink_record is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "l1", "granularity": "neuron", "sparsity": 0.5}, "example_inputs"),
        ({"method": "l1", "granularity": "neuron", "threshold": 0.1, "example_inputs": torch.ones(1, 10)},
         "ratio only"),
        ({"method": "bn-scale", "granularity": "neuron", "sparsity": 0.5, "example_inputs": torch.ones(1, 10)},
         "unknown neuron method 'bn-scale'"),
        ({"method": "apoz", "granularity": "neuron", "sparsity": 0.5, "example_inputs": torch.ones(1, 10)},
         "needs|observed on data"),
        ({"method": "l1", "granularity": "channel", "sparsity": 0.5, "example_inputs": torch.ones(1, 10)},
         "no removable channel units|Conv"),
        ({"method": "l1", "granularity": "lstm-unit", "sparsity": 0.5, "example_inputs": torch.ones(1, 10)},
         "LSTM|lstm"),
    ],
)
def test_structured_bad_input_leaves_model_unchanged(kwargs, message):
    model = mlp(WIDTHS)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match=message):
        prune(model, **kwargs)
    assert get_masks(model) == {}
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_physical_removal_of_a_masked_model_carries_its_masks():
    """Unstructured then neuron pruning: removal slices the weight masks with the weights, equals
    the masked model, and the zeros survive training (they used to need a bake, then revived)."""
    x = torch.randn(6, 10)
    model = mlp(WIDTHS)
    prune(model, sparsity=0.5)
    weight_masks = get_masks(model)
    masked = copy.deepcopy(model)
    prune(masked, method="l1", granularity="neuron", sparsity=0.5, example_inputs=x[:2], remove=False)
    result = prune(model, method="l1", granularity="neuron", sparsity=0.5, example_inputs=x[:2])
    kept = {step["group"]: sorted(set(range(step["num_units"])) - set(step["removed"]))
            for step in result.shrink_record.steps}
    masks = get_masks(model)
    assert torch.equal(masks["0.weight"], weight_masks["0.weight"][kept["0"]])
    assert torch.equal(masks["2.weight"], weight_masks["2.weight"][kept["2"]][:, kept["0"]])
    assert torch.equal(masks["4.weight"], weight_masks["4.weight"][:, kept["2"]])
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    assert get_masks(model).keys() == masks.keys()  # the masks stayed attached through training
    for name, keep in masks.items():
        module = model.get_submodule(name.rpartition(".")[0])
        assert bool((module.weight[~keep] == 0).all()), name
