import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunekit.masking import get_masks
from prunekit.pruner import prune

from invariants import mlp, random_batches


LINEARS = ["0", "2", "4"]


def test_layer_magnitude_matches_torch_l1_unstructured():
    model = mlp()
    reference = copy.deepcopy(model)
    prune(model, method="magnitude", sparsity=0.6, scope="layer")
    masks = get_masks(model)
    for name in LINEARS:
        torch_prune.l1_unstructured(reference[int(name)], "weight", amount=0.6)
        assert torch.equal(masks[f"{name}.weight"], reference[int(name)].weight_mask.bool())


def test_global_magnitude_matches_torch_global_unstructured():
    model = mlp()
    reference = copy.deepcopy(model)
    result = prune(model, method="magnitude", sparsity=0.7, scope="global")
    torch_prune.global_unstructured(
        [(reference[int(name)], "weight") for name in LINEARS],
        pruning_method=torch_prune.L1Unstructured, amount=0.7,
    )
    masks = get_masks(model)
    for name in LINEARS:
        assert torch.equal(masks[f"{name}.weight"], reference[int(name)].weight_mask.bool())
    total = sum(model[int(name)].weight.numel() for name in LINEARS)
    assert result.units_targeted == total
    assert abs(result.sparsity_achieved * total - round(0.7 * total)) < 1


def test_gradient_and_taylor_scores_match_hand_computed_gradients():
    batches = random_batches((20,), 4, rows=8, count=3)
    reference = mlp()
    sums = {name: torch.zeros_like(reference[int(name)].weight) for name in LINEARS}
    for inputs, targets in batches:
        reference.zero_grad()
        nn.functional.cross_entropy(reference(inputs), targets).backward()
        for name in LINEARS:
            sums[name] += reference[int(name)].weight.grad.abs()
    grad_abs_mean = {name: total / len(batches) for name, total in sums.items()}
    expected = {
        "gradient": grad_abs_mean,
        "taylor": {name: reference[int(name)].weight.detach().abs() * grad_abs_mean[name] for name in LINEARS},
    }
    for method, scores in expected.items():
        model = mlp()
        prune(model, method=method, sparsity=0.5, scope="layer", data=batches)
        masks = get_masks(model)
        for name in LINEARS:
            flat = scores[name].flatten()
            expected_keep = torch.ones_like(flat, dtype=torch.bool)
            expected_keep[torch.argsort(flat, stable=True)[: round(0.5 * flat.numel())]] = False
            assert torch.equal(masks[f"{name}.weight"].flatten(), expected_keep), (method, name)
        assert all(p.grad is None for p in model.parameters()), "user .grad fields must stay untouched"


def test_normalized_global_spreads_pruning_across_layers_of_different_scale():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 17.0).view(4, 4))
        model[1].weight.copy_(torch.arange(1.0, 17.0).view(4, 4) * 100)
    magnitude_model, normalized_model = copy.deepcopy(model), copy.deepcopy(model)
    prune(magnitude_model, method="magnitude", sparsity=0.5, scope="global")
    prune(normalized_model, method="normalized", sparsity=0.5, scope="global")
    # plain magnitude empties the small-scale layer; normalized prunes half of each
    assert int(get_masks(magnitude_model)["0.weight"].sum()) == 0
    assert int(get_masks(normalized_model)["0.weight"].sum()) == 8
    assert int(get_masks(normalized_model)["1.weight"].sum()) == 8


def test_threshold_prunes_exactly_scores_below_it():
    model = mlp()
    weights = {name: model[int(name)].weight.detach().clone() for name in LINEARS}
    result = prune(model, method="magnitude", threshold=0.1)
    masks = get_masks(model)
    for name in LINEARS:
        assert torch.equal(masks[f"{name}.weight"], weights[name].abs() >= 0.1)
    assert result.sparsity_target is None


def test_random_is_seeded_and_exact_per_layer():
    first, second, third = mlp(), mlp(), mlp()
    prune(first, method="random", sparsity=0.5, seed=3)
    prune(second, method="random", sparsity=0.5, seed=3)
    prune(third, method="random", sparsity=0.5, seed=4)
    assert torch.equal(get_masks(first)["0.weight"], get_masks(second)["0.weight"])
    assert not torch.equal(get_masks(first)["0.weight"], get_masks(third)["0.weight"])
    for name in LINEARS:
        keep = get_masks(first)[f"{name}.weight"]
        assert int((~keep).sum()) == round(0.5 * keep.numel())


def test_second_call_prunes_further_and_keeps_earlier_masks():
    model = mlp()
    prune(model, method="random", sparsity=0.3, scope="global", seed=0)
    earlier = get_masks(model)
    result = prune(model, method="random", sparsity=0.6, scope="global", seed=1)
    later = get_masks(model)
    for name in earlier:
        assert bool((later[name] <= earlier[name]).all()), "a pruned weight came back"
    assert abs(result.sparsity_achieved * result.units_targeted - round(0.6 * result.units_targeted)) < 1


def test_exclude_by_name_and_by_type():
    model = mlp()
    result = prune(model, sparsity=0.5, exclude=["4"])
    assert result.targets == ["0.weight", "2.weight"]
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    result = prune(model, sparsity=0.5, exclude=[nn.Conv2d])
    assert result.targets == ["2.weight"]


def test_relative_sparsity_is_share_of_pruned_magnitude():
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    result = prune(model, sparsity=0.5)
    assert result.relative_sparsity == pytest.approx(3.0 / 10.0)
