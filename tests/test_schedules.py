"""Schedules through the Pruner in a hand-written loop, against hand-computed references: the
cubic ramp, geometric levels, lottery rewinding to the exact earlier weights, gradient sums
equal to a manual accumulation, structured schedules removing units at finalize, bad input."""

import copy

import pytest
import torch
from torch import nn

from prunekit import Pruner, get_masks
from prunekit.errors import PrunekitError
from prunekit.schedules import GradientThreshold, Iterative, Lottery, OneShot, Polynomial

from invariants import LOOP_X, LOOP_Y, MLP_WEIGHTS, mlp, pruner_loop, same_state

X, Y, WEIGHTS, _loop = LOOP_X, LOOP_Y, MLP_WEIGHTS, pruner_loop


def test_polynomial_ramp_is_zhu_and_gupta_cubic():
    schedule = Polynomial(initial=0.1, final=0.9, begin_step=10, end_step=50, frequency=10)
    for step in (10, 20, 30, 40, 50):
        progress = (step - 10) / 40
        assert schedule.sparsity_at(step, 0.9) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - progress) ** 3)
    assert [s for s in range(60) if schedule.prunes_at(s)] == [10, 20, 30, 40, 50]
    # end_step off the frequency grid still prunes there, so the final target is reached
    assert Polynomial(0.0, 0.5, 0, 25, 10).prunes_at(25)


def test_polynomial_in_a_loop_reaches_each_target_exactly_and_masks_only_grow():
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = Polynomial(initial=0.0, final=0.8, begin_step=0, end_step=6, frequency=2)
    pruner = Pruner(model, "magnitude", scope="global", schedule=schedule)
    seen = []

    def check(step, result):
        target = schedule.sparsity_at(step, 0.8)
        assert result.sparsity_achieved == pytest.approx(round(target * WEIGHTS) / WEIGHTS, abs=1e-9)
        masks = get_masks(model)
        if seen:  # a weight pruned earlier stays pruned
            for name, keep in masks.items():
                assert not bool((keep & ~seen[-1][name]).any())
        seen.append(masks)

    _loop(model, pruner, optimizer, 8, check)
    assert len(seen) == 4 and pruner.done
    assert pruner.sparsity.achieved == pytest.approx(0.8, abs=1 / WEIGHTS)


def test_iterative_levels_remove_the_same_share_of_what_is_left():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = Pruner(model, "magnitude", 0.875, scope="global", schedule=Iterative(levels=3, every=2))
    achieved = []
    _loop(model, pruner, optimizer, 6, lambda step, result: achieved.append((step, result.sparsity_achieved)))
    assert [step for step, _ in achieved] == [0, 2, 4]
    assert [round(value, 2) for _, value in achieved] == [0.5, 0.75, 0.88]


def test_lottery_rewinds_survivors_to_the_weights_after_rewind_step_updates():
    torch.manual_seed(0)
    model = mlp()
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = Pruner(model, "magnitude", 0.5, scope="global", schedule=Lottery(levels=1, every=4, rewind_step=2))
    results = []
    _loop(model, pruner, optimizer, 4, lambda step, result: results.append(result))
    # the reference takes the same 2 updates: these are the weights the ticket goes back to
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(2):
        nn.functional.cross_entropy(reference(X), Y).backward()
        ref_optimizer.step()
        ref_optimizer.zero_grad()
    assert len(results) == 1 and results[0].rewound
    masks = get_masks(model)
    for index in (0, 2, 4):
        keep = masks[f"{index}.weight"]
        weight, ref_weight = model[index].weight.detach(), reference[index].weight.detach()
        assert torch.equal(weight[keep], ref_weight[keep])
        assert bool((weight[~keep] == 0).all())
        assert torch.equal(model[index].bias, reference[index].bias)  # biases rewind too


def test_lottery_at_rewind_step_zero_goes_back_to_the_initialisation():
    model = mlp()
    initial = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner(model, "magnitude", 0.64, scope="global", schedule=Lottery(levels=2, every=3))
    _loop(model, pruner, optimizer, 6)
    masks = get_masks(model)
    assert pruner.sparsity.achieved == pytest.approx(0.64, abs=1 / WEIGHTS)
    for index in (0, 2, 4):
        keep = masks[f"{index}.weight"]
        assert torch.equal(model[index].weight.detach()[keep], initial[index].weight.detach()[keep])


def test_gradient_sums_equal_a_manual_accumulation_and_threshold_prunes_below_it():
    model = mlp()
    manual = {f"{i}.weight": torch.zeros_like(model[i].weight) for i in (0, 2, 4)}
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    schedule = GradientThreshold(theta=0.01, begin_step=2, end_step=2, frequency=1)
    pruner = Pruner(model, scope="global", schedule=schedule)
    for _ in range(3):  # steps 0, 1, 2: the pruning at step 2 reads the mean over all 3 passes
        nn.functional.cross_entropy(reference(X), Y).backward()
        for i in (0, 2, 4):
            manual[f"{i}.weight"] += reference[i].weight.grad.abs()
        ref_optimizer.step()
        ref_optimizer.zero_grad()
    _loop(model, pruner, optimizer, 3)
    masks = get_masks(model)
    for name, total in manual.items():
        expected_keep = (total / 3) >= 0.01
        assert torch.equal(masks[name], expected_keep), name
    assert 0 < pruner.sparsity.achieved < 1


def test_gradient_threshold_with_sparsity_caps_what_theta_removes():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = Pruner(model, sparsity=0.2, scope="global",
                    schedule=GradientThreshold(theta=1e9, begin_step=1, end_step=1, frequency=1))
    _loop(model, pruner, optimizer, 2)  # theta removes everything; the cap keeps 80%
    assert pruner.sparsity.achieved == pytest.approx(0.2, abs=1 / WEIGHTS)


def test_gradient_threshold_without_theta_targets_the_sparsity():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = Pruner(model, sparsity=0.6, scope="global",
                    schedule=GradientThreshold(theta=None, begin_step=0, end_step=4, frequency=2))
    achieved = []
    _loop(model, pruner, optimizer, 5, lambda step, result: achieved.append(result.sparsity_achieved))
    assert len(achieved) == 3 and achieved == sorted(achieved)
    assert achieved[-1] == pytest.approx(0.6, abs=1 / WEIGHTS)


def test_structured_polynomial_masks_while_training_and_removes_at_finalize():
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner(model, "l1", 0.5, granularity="neuron", example_inputs=X,
                    schedule=Polynomial(0.0, None, 0, 4, 2))
    _loop(model, pruner, optimizer, 5)
    masked_outputs = model(X).detach()
    assert model[0].out_features == 16  # still masked, not removed, while training
    pruner.finalize()
    assert model[0].out_features == 8 and model[2].out_features == 6
    torch.testing.assert_close(model(X), masked_outputs, rtol=1e-5, atol=1e-6)


def test_resumed_lottery_continues_exactly_like_an_uninterrupted_run():
    def run(split):
        torch.manual_seed(3)
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        schedule = Lottery(levels=2, every=3, rewind_step=1)
        pruner = Pruner(model, "magnitude", 0.75, scope="global", schedule=schedule)
        _loop(model, pruner, optimizer, split)
        if split < 6:
            state = copy.deepcopy(pruner.state_dict())
            pruner.release()
            fresh = Pruner(model, "magnitude", 0.75, scope="global", schedule=schedule)
            fresh.load_state_dict(state)
            _loop(model, fresh, optimizer, 6 - split)
        return model

    assert same_state(run(6), run(4))


@pytest.mark.parametrize("make, message", [
    (lambda: Polynomial(0.0, 0.9, begin_step=10, end_step=5), "end_step"),
    (lambda: Polynomial(0.0, 1.0, 0, 5), "[0, 1)"),
    (lambda: Polynomial(0.0, 0.5, 0, 5, frequency=0), "frequency"),
    (lambda: Polynomial(0.6, 0.5, 0, 5), "below initial"),
    (lambda: GradientThreshold(theta=-1.0, end_step=3), "theta"),
    (lambda: GradientThreshold(theta=float("nan"), end_step=3), "theta"),
    (lambda: Iterative(levels=(0.5, 0.4), every=2), "increasing"),
    (lambda: Iterative(levels=0), "levels"),
    (lambda: Lottery(levels=2, every=5, rewind_step=6), "rewind_step"),
    (lambda: OneShot(at_step=-1), "at_step"),
])
def test_bad_schedule_settings_are_refused_with_the_reason(make, message):
    with pytest.raises(PrunekitError, match=message.replace("[", r"\[").replace(")", r"\)")):
        make()


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="magnitude", sparsity=0.8, schedule=Polynomial(0.0, 0.5, 0, 5)), "disagrees"),
    (dict(sparsity=0.5, granularity="neuron", schedule=GradientThreshold(0.1, 0, 2))
     , "granularity='unstructured'"),
    (dict(method="magnitude", schedule=GradientThreshold(0.1, 0, 2)), "method 'gradient' or 'taylor'"),
    (dict(schedule=GradientThreshold(None, 0, 2)), "pass sparsity="),
    (dict(method="gradient", threshold=0.5, schedule=GradientThreshold(0.1, 0, 2)), "do not pass threshold"),
])
def test_bad_pruner_and_schedule_combinations_leave_the_model_untouched(kwargs, message):
    model = mlp()
    before = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match=message):
        Pruner(model, example_inputs=X, **kwargs)
    assert same_state(model, before) and not get_masks(model)


def test_a_schedule_resumed_on_a_different_model_is_refused():
    model = mlp()
    pruner = Pruner(model, "magnitude", 0.5, schedule=Lottery(levels=1, every=2))
    _loop(model, pruner, torch.optim.SGD(model.parameters(), lr=0.1), 2)
    other = mlp(widths=(20, 8, 4))
    before = copy.deepcopy(other)
    fresh = Pruner(other, "magnitude", 0.5, schedule=Lottery(levels=1, every=2))
    with pytest.raises(PrunekitError, match="model"):
        fresh.load_state_dict(pruner.state_dict())
    assert same_state(other, before)


def test_gradient_threshold_without_any_backward_pass_says_where_step_goes():
    model = mlp()
    before = copy.deepcopy(model)
    pruner = Pruner(model, sparsity=0.5, schedule=GradientThreshold(None, 0, 0, 1))
    with pytest.raises(PrunekitError, match="after\\s+loss.backward"):
        pruner.step()
    assert same_state(model, before)


def _loop_images(model, pruner, optimizer, images, labels, steps):
    for _ in range(steps):
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()


def test_lottery_on_channels_rewinds_and_removes_the_masked_channels_at_finalize():
    from invariants import small_cnn

    model = small_cnn()
    initial = copy.deepcopy(model)
    images, labels = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = Pruner(model, "l1", 0.5, granularity="channel", example_inputs=images[:2],
                    schedule=Lottery(levels=2, every=2))
    _loop_images(model, pruner, optimizer, images, labels, 4)  # the last pruning (step 3) rewinds
    keep = get_masks(model)["0.weight"].flatten(1).any(dim=1)
    assert int(keep.sum()) == 4  # half of conv 0's 8 channels
    assert torch.equal(model[0].weight.detach()[keep], initial[0].weight.detach()[keep])
    _loop_images(model, pruner, optimizer, images, labels, 1)
    model.eval()
    masked_outputs = model(images).detach()
    pruner.finalize()
    assert model[0].out_channels == 4 and model[3].out_channels == 3
    torch.testing.assert_close(model(images), masked_outputs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule, expected", [
    (Polynomial(0.0, 0.9, 0, 4, 2), [0.0, 0.3 * (1 - 0.5 ** 3), 0.3]),
    (Iterative(levels=(0.45, 0.9), every=2), [0.15, 0.3]),
])
def test_per_layer_targets_ramp_with_a_schedule_that_sets_its_own_final(schedule, expected):
    model = mlp()
    pruner = Pruner(model, "magnitude", schedule=schedule, layer_sparsity={"0.weight": 0.3, "2.weight": 0.3})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    reached = []
    _loop(model, pruner, optimizer, 5, lambda step, result: reached.append(result.layer_sparsity["0.weight"]))
    assert reached == pytest.approx(expected, abs=1 / 320)


def test_gradient_sums_start_afresh_after_each_pruning():
    model = mlp()
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    pruner = Pruner(model, scope="global", schedule=GradientThreshold(theta=0.004, begin_step=1, end_step=3,
                                                                      frequency=2))
    _loop(model, pruner, optimizer, 2)  # prunes at step 1 on passes 0-1
    first = {name: mask.clone() for name, mask in get_masks(model).items()}
    since = {name: torch.zeros_like(keep, dtype=torch.float32) for name, keep in first.items()}
    # the reference replays the same updates with the first masks, summing |grad| of passes 2-3 only
    for step in range(4):
        loss = nn.functional.cross_entropy(reference(X), Y)
        loss.backward()
        for i in (0, 2, 4):
            if step >= 1:
                reference[i].weight.grad *= first[f"{i}.weight"]  # masked weights get no gradient
            if step >= 2:
                since[f"{i}.weight"] += reference[i].weight.grad.abs()
        ref_optimizer.step()
        ref_optimizer.zero_grad()
        if step == 1:
            with torch.no_grad():
                for i in (0, 2, 4):
                    reference[i].weight *= first[f"{i}.weight"]
    _loop(model, pruner, optimizer, 2)  # prunes at step 3 on passes 2-3
    for name, keep in get_masks(model).items():
        expected = first[name] & ((since[name] / 2) >= 0.004)
        assert torch.equal(keep, expected), name
    assert pruner._loop.gradients._handles == []  # the schedule is over: hooks removed
