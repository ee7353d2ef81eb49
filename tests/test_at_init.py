"""Pruning at initialisation: SynFlow scores against a hand-built all-positive copy, iterative
SynFlow keeping every layer connected at extreme sparsity, SNIP equal to |w * dL/dw| on one batch,
and the warning (not a refusal) when either is handed a trained model."""

import copy
import warnings

import pytest
import torch
from torch import nn

from prunekit import Iterative, Pruner, get_masks, prune
from prunekit.errors import PrunekitError

from invariants import mlp, same_state

X = torch.randn(16, 20, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(2))


def _reference_synflow(model):
    positive = copy.deepcopy(model).double()
    with torch.no_grad():
        for parameter in positive.parameters():
            parameter.abs_()
    positive(torch.ones(1, 20, dtype=torch.float64)).sum().backward()
    return {f"{i}.weight": (positive[i].weight.grad * positive[i].weight).abs().float() for i in (0, 2, 4)}


def test_synflow_keeps_the_highest_flow_weights_of_a_hand_built_positive_copy():
    model = mlp()
    scores = _reference_synflow(model)
    prune(model, "synflow", 0.7, scope="global", example_inputs=X)
    masks = get_masks(model)
    flat = torch.cat([scores[name].flatten() for name in masks])
    cut = flat.sort(descending=True).values[round(0.3 * flat.numel()) - 1]
    for name, keep in masks.items():
        assert bool((scores[name][keep] >= cut).all()) and bool((scores[name][~keep] <= cut).all()), name


def test_iterative_synflow_keeps_every_layer_connected_at_extreme_sparsity():
    model = mlp(widths=(20, 64, 64, 4))
    pruner = Pruner(model, "synflow", 0.995, scope="global", example_inputs=X,
                    schedule=Iterative(levels=20, every=1))
    for _ in range(20):  # no training in between: pruning at initialisation
        pruner.step()
    masks = get_masks(model)
    assert pruner.sparsity.achieved == pytest.approx(0.995, abs=1e-3)
    assert all(int(keep.sum()) > 0 for keep in masks.values())
    positive = copy.deepcopy(model).double()
    with torch.no_grad():
        for parameter in positive.parameters():
            parameter.abs_()
        biasless = [module for module in positive.modules() if isinstance(module, nn.Linear)]
        for module in biasless:
            module.bias.zero_()
        assert float(positive(torch.ones(1, 20, dtype=torch.float64)).sum()) > 0  # some path still flows


def test_snip_is_w_times_the_gradient_of_one_batch():
    model = mlp()
    reference = copy.deepcopy(model)
    nn.functional.cross_entropy(reference(X), Y).backward()
    scores = {f"{i}.weight": (reference[i].weight.grad * reference[i].weight).abs() for i in (0, 2, 4)}
    prune(model, "snip", 0.8, scope="global", data=[(X, Y)], num_batches=1)
    masks = get_masks(model)
    flat = torch.cat([scores[name].flatten() for name in masks])
    cut = flat.sort(descending=True).values[round(0.2 * flat.numel()) - 1]
    for name, keep in masks.items():
        assert bool((scores[name][keep] >= cut * (1 - 1e-6)).all()), name


def test_pruning_a_trained_model_at_initialisation_warns_but_prunes():
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(20)  # far past nn.Linear's initial range, as training leaves weights
    with pytest.warns(UserWarning, match="prunes at initialisation"):
        prune(model, "synflow", 0.5, example_inputs=X)
    assert get_masks(model)
    fresh = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune(fresh, "synflow", 0.5, example_inputs=X)  # a fresh model: no warning


def test_synflow_without_example_inputs_says_what_it_needs():
    model = mlp()
    before = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match="example_inputs"):
        prune(model, "synflow", 0.5)
    assert same_state(model, before)
