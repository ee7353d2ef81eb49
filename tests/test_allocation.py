"""Per-layer allocation under a budget: LAMP scores, uniform / global / LAMP / sensitivity
allocations against the scopes they generalise, budgets met by the fewest removals, bad input."""

import copy
import math

import pytest
import torch
from invariants import mlp, one_thread, same_state, small_cnn  # noqa: F401  (one_thread: autouse)

from prunekit import Budget, PrunekitError, allocate, get_masks, prune, prune_to_budget
from prunekit.allocation import removal_sequence
from prunekit.metrics import count_macs, count_params
from prunekit.request import PruneOptions
from prunekit.select import SelectionRule, lamp_scores, select
from prunekit.sensitivity import LayerCurve, SensitivityResult
from prunekit.unit_plan import plan_units

X = torch.randn(4, 20, generator=torch.Generator().manual_seed(0))
IMAGES = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_lamp_scores_match_a_hand_computation():
    # squares 0.25, 4, 1, 0: each divided by the sum of the squares at least as large
    scores = lamp_scores(torch.tensor([[0.5, 2.0], [1.0, 0.0]]))
    assert torch.allclose(scores, torch.tensor([[0.25 / 5.25, 4 / 4], [1 / 5, 0.0]], dtype=torch.float64))
    # ties count each other; a negative score counts as 0; -inf (already pruned) stays -inf
    tied = lamp_scores(torch.tensor([2.0, 2.0, 1.0, -3.0, -math.inf]))
    assert tied[:4].tolist() == pytest.approx([4 / 8, 4 / 8, 1 / 9, 0.0]) and tied[4] == -math.inf


def test_lamp_scope_ranks_all_groups_by_lamp_score():
    # LAMP: a = 1/30, 4/29, 9/25, 1; b = 100/500, 1 -> the three lowest are a1, a2, b1
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20.0])}
    masks = select(scores, SelectionRule(sparsity=0.5, scope="lamp"))
    assert masks["a"].tolist() == [False, False, True, True] and masks["b"].tolist() == [False, True]
    plain = select(scores, SelectionRule(sparsity=0.5, scope="global"))
    assert plain["a"].tolist() == [False, False, False, True]


def _masks_after(model, **kwargs):
    pruned = copy.deepcopy(model)
    prune(pruned, remove=False, **kwargs)
    return {name: mask.clone() for name, mask in get_masks(pruned).items()}


def _same_masks(first, second):
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize("granularity, inputs", [("unstructured", None), ("neuron", X)])
@pytest.mark.parametrize("allocation, scope", [("uniform", "layer"), ("global", "global"), ("lamp", "lamp")])
def test_a_sparsity_budget_allocates_what_the_matching_scope_selects(granularity, inputs, allocation, scope):
    model = mlp()
    allocated = allocate(model, Budget("sparsity", 0.37), allocation, granularity=granularity, example_inputs=inputs)
    by_scope = _masks_after(model, sparsity=0.37, scope=scope, granularity=granularity, example_inputs=inputs)
    by_layer = _masks_after(model, layer_sparsity=allocated.layer_sparsity, granularity=granularity,
                            example_inputs=inputs)
    assert _same_masks(by_scope, by_layer)
    assert allocated.units_removed == sum(round(s * n) for s, n in zip(allocated.layer_sparsity.values(),
                                                                        _units(model, granularity)))


def _units(model, granularity):
    plan = plan_units(model, None, granularity, None, X, PruneOptions())
    return [group.num_units for group in plan.groups]


def test_layer_sparsity_prunes_each_layer_to_exactly_its_amount():
    model = mlp()
    result = prune(model, layer_sparsity={"0.weight": 0.25, "2.weight": 0.8})
    assert result.layer_sparsity == {"0.weight": 80 / 320, "2.weight": round(0.8 * 192) / 192, "4.weight": 0.0}
    masks = get_masks(model)
    assert int((~masks["0.weight"]).sum()) == 80 and bool(masks["4.weight"].all())
    model = mlp()
    result = prune(model, "l1", granularity="neuron", example_inputs=X, layer_sparsity={"0": 0.5})
    assert (model[0].out_features, model[2].out_features) == (8, 12)
    assert result.sparsity_target == pytest.approx(8 / 28)


def test_a_schedule_ramps_every_layer_towards_its_own_amount():
    from prunekit import Pruner
    from prunekit.schedules import Polynomial

    pruner = Pruner(mlp(), layer_sparsity={"0.weight": 0.5, "2.weight": 0.25},
                    schedule=Polynomial(begin_step=0, end_step=4, frequency=1))
    steps = [pruner.step() for _ in range(5)]
    middle, last = steps[2].layer_sparsity, steps[4].layer_sparsity
    assert last == {"0.weight": 0.5, "2.weight": 0.25, "4.weight": 0.0}
    assert 0 < middle["0.weight"] < 0.5 and middle["2.weight"] == pytest.approx(middle["0.weight"] / 2, abs=1 / 192)


def _size(model, kind, granularity):
    total, nonzero = count_params(model) if kind == "params" else count_macs(model, X)
    return total if granularity != "unstructured" else nonzero


@pytest.mark.parametrize("allocation", ["uniform", "global", "lamp"])
@pytest.mark.parametrize("kind, granularity", [("params", "unstructured"), ("macs", "neuron")])
def test_a_budget_is_met_by_the_fewest_removals(allocation, kind, granularity):
    model = mlp()
    before = copy.deepcopy(model)
    dense = _size(model, kind, "neuron")  # dense: every weight counted
    allocated = allocate(model, f"{kind}=0.3", allocation, granularity=granularity, example_inputs=X)
    assert same_state(model, before)
    limit = 0.3 * dense
    pruned = copy.deepcopy(model)
    prune(pruned, granularity=granularity, example_inputs=X, layer_sparsity=allocated.layer_sparsity)
    assert _size(pruned, kind, granularity) == allocated.achieved <= limit and allocated.dense == dense
    # one removal fewer, in the allocation's own order, would be over the budget
    plan = plan_units(model, None, granularity, None, X, PruneOptions())
    order, _ = removal_sequence(plan, allocation)
    taken = allocated.units_removed
    counts = torch.bincount(order[:taken - 1], minlength=len(plan.groups)).tolist()
    assert torch.bincount(order[:taken], minlength=len(plan.groups)).tolist() == [
        round(allocated.layer_sparsity[group.name] * group.num_units) for group in plan.groups]
    one_fewer = plan.pruned_copy(model, dict(zip([g.name for g in plan.groups], counts)), physically=True)
    assert _size(one_fewer, kind, granularity) > limit


def test_prune_to_budget_removes_channels_until_the_macs_fit():
    model = small_cnn()
    dense_macs = count_macs(model, IMAGES)[0]
    result, allocated = prune_to_budget(model, "macs=0.5", "lamp", granularity="channel", example_inputs=IMAGES)
    assert count_macs(model, IMAGES)[0] == allocated.achieved <= 0.5 * dense_macs
    assert result.sparsity_achieved == pytest.approx(allocated.sparsity)
    absolute, _ = prune_to_budget(small_cnn(), Budget("params", 300), granularity="channel", example_inputs=IMAGES)
    assert absolute.params_after <= 300


def _curves(model):
    """Hand-made curves: the first layer is fragile, the second barely cares."""
    sizes = {"0.weight": 320, "2.weight": 192, "4.weight": 48}
    shapes = {"0.weight": (0.9, 0.5, 0.1), "2.weight": (0.9, 0.88, 0.8), "4.weight": (0.9, 0.7, 0.3)}
    layers = {name: LayerCurve(sizes[name], (0.0, 0.5, 0.9), shapes[name]) for name in sizes}
    return SensitivityResult("unstructured", "magnitude", (0.0, 0.5, 0.9), 0.9, layers)


def test_sensitivity_allocation_keeps_every_predicted_drop_within_one_epsilon():
    model = mlp()
    curves = _curves(model)
    allocated = allocate(model, "sparsity=0.5", "sensitivity", sensitivity=curves)
    assert allocated.units_removed == round(0.5 * 560)
    drops = {name: float(curve.drop_at(allocated.layer_sparsity[name], 0.9)) for name, curve in curves.layers.items()}
    assert all(drop <= allocated.epsilon + 1e-12 for drop in drops.values())
    assert max(drops.values()) == pytest.approx(allocated.epsilon)
    sparsity = allocated.layer_sparsity
    assert sparsity["2.weight"] > sparsity["4.weight"] > sparsity["0.weight"]
    # one more unit in any layer that is not at the end of its curve would exceed epsilon
    for name, curve in curves.layers.items():
        next_step = sparsity[name] + 1 / curve.num_units
        if next_step <= 0.9:
            assert float(curve.drop_at(next_step, 0.9)) > allocated.epsilon - 1e-12


def _assert_refused(model, message, *args, **kwargs):
    before = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match=message):
        prune_to_budget(model, *args, **kwargs)
    assert same_state(model, before) and not get_masks(model)


def test_bad_budgets_are_refused_before_the_model_changes():
    model = mlp()
    _assert_refused(model, "unknown budget kind 'flops'.*Choose one of: latency, macs, params, sparsity", "flops=0.5")
    _assert_refused(model, r"in \[0, 1\); got 1.2", "sparsity=1.2")
    _assert_refused(model, "params budget is the share", "params=0")
    _assert_refused(model, "whole count >= 1", "params=2.5")
    _assert_refused(model, "KIND=VALUE", "macs")
    _assert_refused(model, "unknown allocation 'lamb'.*did you mean 'lamp'", "params=0.5", "lamb")
    _assert_refused(model, "pass example_inputs", "macs=0.5")
    _assert_refused(model, "needs sensitivity=", "params=0.5", "sensitivity")
    _assert_refused(model, "needs units removed physically", "latency=0.5", example_inputs=X)


def test_an_unreachable_budget_names_what_is_possible():
    model = mlp()
    # removing every weight still leaves the 32 biases
    _assert_refused(model, r"budget params=10 cannot be met.*still leaves 32 of the dense 592.*ask for params=32 or more",
                    "params=10", "global")
    _assert_refused(model, r"every layer keeps at least 1 neuron.*ask for params=0\.0",
                    "params=0.01", "uniform", granularity="neuron", example_inputs=X)
    # the curves end at 0.9: 288 + 172 + 43 weights of the three layers
    _assert_refused(model, "the sensitivity curves allow removing 503 of 560", "sparsity=0.95", "sensitivity",
                    sensitivity=_curves(model))


def test_layer_sparsity_is_checked_before_pruning():
    model = mlp()
    with pytest.raises(PrunekitError, match="names 'fc1', which is no prunable group here; the groups are: "
                                            "0.weight, 2.weight, 4.weight"):
        prune(model, layer_sparsity={"fc1": 0.5})
    with pytest.raises(PrunekitError, match=r"value must be a number in \[0, 1\)"):
        prune(model, layer_sparsity={"0.weight": 1.0})
    with pytest.raises(PrunekitError, match="scope 'layer'"):
        prune(model, layer_sparsity={"0.weight": 0.5}, scope="global")
    with pytest.raises(PrunekitError, match="not both"):
        prune(model, layer_sparsity={"0.weight": 0.5}, threshold=0.1)
    assert not get_masks(model)


def test_compare_runs_a_budget_and_records_the_allocation(tmp_path):
    from prunekit.harness import CompareConfig, run_compare

    config = CompareConfig("lenet300", "digits", ("magnitude", "neuron:l1"), (), allocation="lamp",
                           budget="params=0.2", train_epochs=1, finetune_epochs=0, cache_dir=str(tmp_path),
                           progress=False)
    weights, neurons = run_compare(config)
    assert weights["params_nonzero"] <= 0.2 * weights["params_dense"] < neurons["params"] + 100
    assert neurons["params"] <= 0.2 * neurons["params_dense"]
    for run in (weights, neurons):
        assert run["allocation"] == "lamp" and run["budget"] == "params=0.2"
        assert run["sparsity_target"] == pytest.approx(run["sparsity_achieved"])
    assert set(weights["layer_sparsity"]) == {"fc1.weight", "fc2.weight", "classifier.weight"}


@pytest.mark.parametrize("changes, message", [
    ({"budget": "flops=0.5"}, "unknown budget kind"),
    ({"budget": "macs=0.5", "sparsities": (0.5,)}, "replaces the sparsity list"),
    ({"budget": "macs=0.5", "sparsities": (), "methods": ("magnitude@0.5",)}, "leave out the '@sparsity'"),
    ({"allocation": "lamp", "methods": ("hybrid:l1@0.5+magnitude",)}, "run hybrid methods without"),
    ({"allocation": "lamb"}, "did you mean 'lamp'"),
    ({"sparsities": ()}, "has no sparsity to run"),
])
def test_compare_refuses_a_bad_allocation_before_training(tmp_path, changes, message):
    from dataclasses import replace

    from prunekit.harness import CompareConfig, run_compare

    config = CompareConfig("lenet300", "digits", ("magnitude",), (0.5,), cache_dir=str(tmp_path), progress=False)
    with pytest.raises(PrunekitError, match=message):
        run_compare(replace(config, **changes))
    assert not list(tmp_path.iterdir())  # no baseline was trained
