"""Sparsity penalties through Pruner.penalty(): each term against a hand-computed value, group
lasso driving whole neurons to zero so that removing them changes nothing, and bad input."""

import copy

import pytest
import torch
from torch import nn

from prunekit import Pruner, get_masks
from prunekit.errors import PrunekitError
from prunekit.regularizers import BNScale, GroupLasso, L1

from invariants import mlp, same_state, small_cnn

X = torch.randn(32, 20, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(2))


def test_l1_term_is_strength_times_the_sum_of_absolute_targeted_weights_masks_applied():
    from prunekit.schedules import Iterative

    model = mlp()
    pruner = Pruner(model, "magnitude", 0.5, scope="global", regularizer=L1(0.01),
                    schedule=Iterative(levels=2, every=1))
    expected = 0.01 * sum(model[i].weight.abs().sum() for i in (0, 2, 4))  # biases are not targeted
    torch.testing.assert_close(pruner.penalty(), expected)
    pruner.step()  # the first of two prunings
    expected = 0.01 * sum(model[i].weight.abs().sum() for i in (0, 2, 4))  # pruned weights read as zero
    torch.testing.assert_close(pruner.penalty(), expected)
    with torch.no_grad():
        stored = 0.01 * sum(model[i].parametrizations.weight.original.abs().sum() for i in (0, 2, 4))
        assert pruner.penalty() < stored


def test_group_lasso_is_the_sum_of_each_neurons_l2_norm_over_all_it_owns():
    model = mlp(widths=(6, 5, 3))
    pruner = Pruner(model, "l2", 0.4, granularity="neuron", example_inputs=X[:2, :6], regularizer=GroupLasso(0.1))
    fc_in, fc_out = model[0], model[2]
    per_neuron = (fc_in.weight.pow(2).sum(1) + fc_in.bias.pow(2) + fc_out.weight.pow(2).sum(0)).sqrt()
    torch.testing.assert_close(pruner.penalty(), 0.1 * per_neuron.sum())


def test_bn_scale_is_the_l1_of_the_batchnorm_scales_of_the_channels():
    model = small_cnn()
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(-1.0, 1.0, 8))
    images = torch.randn(2, 1, 8, 8)
    pruner = Pruner(model, "bn-scale", 0.5, granularity="channel", example_inputs=images, regularizer=BNScale(0.5))
    torch.testing.assert_close(pruner.penalty(), 0.5 * model[1].weight.abs().sum())


def test_group_lasso_drives_whole_neurons_to_zero_and_removing_them_changes_nothing():
    def train(strength):
        torch.manual_seed(0)
        model = mlp()
        pruner = Pruner(model, "l2", 0.5, granularity="neuron", example_inputs=X[:2],
                        regularizer=GroupLasso(strength), schedule=None)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            loss = nn.functional.cross_entropy(model(X), Y) + pruner.penalty()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return model, pruner

    plain, _ = train(0.0)
    lasso, pruner = train(0.05)
    plain_norms = plain[0].weight.norm(dim=1)
    lasso_norms = lasso[0].weight.norm(dim=1)
    assert int((lasso_norms < 0.05).sum()) >= 4 and int((plain_norms < 0.05).sum()) == 0
    with torch.no_grad():
        before = lasso(X)
    pruner.step()  # the OneShot step removes the lowest-norm half of each layer's neurons (masked)
    masks = get_masks(lasso)
    gone = ~masks["0.weight"].any(dim=1)
    assert bool((lasso_norms[gone] < lasso_norms[~gone].min()).all())
    with torch.no_grad():
        assert (lasso(X) - before).abs().max() < 0.1  # what the penalty zeroed was not needed


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda: L1(-1.0), {}, "strength"),
    (lambda: GroupLasso(float("nan")), {}, "strength"),
    (lambda: L1(1e-4), dict(granularity="neuron", method="l1"), "GroupLasso"),
    (lambda: GroupLasso(1e-4), dict(granularity="unstructured", method="magnitude"), "coupled units"),
    (lambda: BNScale(1e-4), dict(granularity="neuron", method="l1"), "granularity='channel'"),
    (lambda: "l1", dict(granularity="unstructured", method="magnitude"), "prunekit.regularizers"),
])
def test_bad_penalties_are_refused_and_leave_the_model_untouched(make, kwargs, message):
    model = mlp()
    before = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match=message):
        Pruner(model, sparsity=0.5, example_inputs=X[:2], regularizer=make(), **kwargs)
    assert same_state(model, before) and not get_masks(model)


def test_bn_slimming_on_a_model_without_batchnorm_says_what_to_use_instead():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten())
    before = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match="no BatchNorm"):
        Pruner(model, "l1", 0.5, granularity="channel", example_inputs=torch.randn(2, 1, 8, 8),
               regularizer=BNScale(1e-4))
    assert same_state(model, before)


def test_a_state_saved_with_another_penalty_is_refused():
    model = mlp()
    pruner = Pruner(model, "magnitude", 0.5, regularizer=L1(1e-4))
    state = pruner.state_dict()
    pruner.release()
    other = Pruner(model, "magnitude", 0.5, regularizer=L1(1e-3))
    with pytest.raises(PrunekitError, match="regularizer"):
        other.load_state_dict(state)


def test_the_penalty_stops_once_the_schedule_has_pruned_for_the_last_time():
    from prunekit.schedules import OneShot

    model = mlp()
    pruner = Pruner(model, "magnitude", 0.5, regularizer=L1(0.01), schedule=OneShot(at_step=1))
    assert pruner.penalty().item() > 0
    pruner.step()
    assert pruner.penalty().item() > 0  # not pruned yet: the penalty still drives weights down
    pruner.step()
    assert pruner.penalty().item() == 0.0  # pruned: recovery trains without it


def test_penalty_methods_are_compare_methods_of_the_right_granularity(tmp_path):
    from prunekit.harness import CompareConfig, run_compare
    from prunekit.methods import parse_method_spec

    assert parse_method_spec("neuron:group-lasso").method == "group-lasso"
    with pytest.raises(PrunekitError, match="neuron:group-lasso"):
        parse_method_spec("group-lasso")  # unstructured by default: group lasso needs units
    config = CompareConfig("lenet300", "digits", ("neuron:group-lasso", "l1-penalty"), (0.5,), scope="layer",
                           finetune_epochs=2, train_epochs=1, cache_dir=str(tmp_path), progress=False, round_to=None)
    lasso, l1 = run_compare(config)
    assert (lasso["method"], lasso["granularity"], lasso["sparsity_achieved"]) == ("group-lasso", "neuron", 0.5)
    assert lasso["params"] < lasso["params_dense"]  # the neurons were removed at the end
    assert (l1["method"], l1["sparsity_achieved"]) == ("l1-penalty", 0.5)
    with pytest.raises(PrunekitError, match="finetune-epochs >= 2"):
        run_compare(CompareConfig("lenet300", "digits", ("l1-penalty",), (0.5,), finetune_epochs=1,
                                  cache_dir=str(tmp_path), progress=False))
