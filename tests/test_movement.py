"""Movement pruning (Sanh et al. 2020) against hand-computed references: the accumulated score
-w * dL/dw over backward passes, the criterion's ranking, hard movement on the cubic schedule
masking the lowest scores, soft movement's threshold under its cap, resuming with the same
scores, the harness runs and the errors for what cannot work."""

import math

import pytest
import torch
from torch import nn

from prunekit import Pruner, get_masks, prune
from prunekit.criteria import CRITERIA
from prunekit.errors import PrunekitError
from prunekit.harness import CompareConfig, run_compare
from prunekit.harness_schedules import check_schedule
from prunekit.loop_state import rewind, take_snapshot
from prunekit.methods import parse_method_spec
from prunekit.schedules import GradientThreshold, OneShot, Polynomial
from prunekit.types import Evidence, Signal

from invariants import LOOP_X, LOOP_Y, MLP_WEIGHTS, mlp, pruner_loop

X, Y, WEIGHTS, _loop = LOOP_X, LOOP_Y, MLP_WEIGHTS, pruner_loop


def _scores(pruner):
    return pruner.state_dict()["loop"]["movement"]["sums"]


def test_scores_are_the_hand_computed_sum_of_minus_w_times_grad():
    # out = w . x, loss = out^2 / 2, x = (1, 2), SGD lr 0.1, w starting at (1, -2):
    # pass 1: out -3,    grad (-3, -6),      -w*grad (3, -12);          w -> (1.3, -1.4)
    # pass 2: out -1.5,  grad (-1.5, -3),    -w*grad (1.95, -4.2);      w -> (1.45, -1.1)
    # pass 3: out -0.75, grad (-0.75, -1.5), -w*grad (1.0875, -1.65)
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = Pruner(model, "movement", 0.5, schedule=OneShot(at_step=5))
    x = torch.tensor([[1.0, 2.0]])
    for _ in range(3):
        (model(x) ** 2 / 2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
    expected = torch.tensor([[3 + 1.95 + 1.0875, -12 - 4.2 - 1.65]])  # the first weight grew, the second shrank
    assert torch.allclose(_scores(pruner)["weight"], expected, atol=1e-5)
    assert pruner.state_dict()["loop"]["movement"]["counts"] == {"weight": 3}
    pruner.release()


def test_criterion_returns_the_scores_and_ranks_unlike_magnitude():
    weight = torch.tensor([3.0, 0.1, -2.0, 0.5])
    scores = torch.tensor([-1.0, 0.2, 0.3, -0.1])  # the largest weight is moving towards zero
    evidence = Evidence((4,), weight=weight, signal=Signal(movement=scores))
    ranked = CRITERIA["movement"].score(evidence, torch.Generator())
    assert torch.equal(ranked, scores)
    assert ranked.argsort().tolist() == [0, 3, 1, 2]  # lowest first: 3.0 goes first, magnitude would keep it
    assert CRITERIA["magnitude"].score(evidence, torch.Generator()).argsort().tolist() == [1, 3, 2, 0]


def test_hard_movement_on_the_cubic_schedule_masks_the_lowest_scores_and_reaches_the_target():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    schedule = Polynomial(initial=0.0, final=0.7, begin_step=1, end_step=7, frequency=2)
    pruner = Pruner(model, "movement", scope="global", schedule=schedule)
    previous = {name: torch.ones_like(keep) for name, keep in get_masks(model).items()}
    events = []

    def check(step, result):
        target = schedule.sparsity_at(step, 0.7)
        assert result.sparsity_achieved == pytest.approx(round(target * WEIGHTS) / WEIGHTS, abs=1e-9)
        scores, masks = _scores(pruner), get_masks(model)
        removed = torch.cat([scores[n][previous.get(n, torch.ones_like(masks[n])) & ~masks[n]] for n in masks])
        kept = torch.cat([scores[n][masks[n]] for n in masks])
        if removed.numel():  # what went now scored no higher than anything that stays
            assert float(removed.max()) <= float(kept.min())
        for name, keep in masks.items():  # masks only grow
            assert not bool((keep & ~previous.get(name, torch.ones_like(keep))).any())
        previous.update(masks)
        events.append(step)

    _loop(model, pruner, optimizer, 9, check)
    assert events == [1, 3, 5, 7] and pruner.done
    assert pruner.sparsity.achieved == pytest.approx(round(0.7 * WEIGHTS) / WEIGHTS, abs=1e-9)


def test_soft_movement_removes_only_negative_scores_capped_by_the_ramp():
    for cap, expect_cap_binds in ((0.9, False), (0.1, True)):
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        pruner = Pruner(model, "movement", cap, scope="global",
                        schedule=Polynomial(begin_step=3, end_step=3, threshold=0.0))
        _loop(model, pruner, optimizer, 4)
        scores, masks = _scores(pruner), get_masks(model)
        negative = sum(int((scores[name] < 0).sum()) for name in masks)
        removed = torch.cat([scores[name][~masks[name]] for name in masks])
        assert bool((removed < 0).all())
        assert 0 < negative < WEIGHTS * 0.9  # the cap of 90% does not bind; 10% does
        assert removed.numel() == (round(cap * WEIGHTS) if expect_cap_binds else negative)


def test_state_dict_round_trip_resumes_with_the_same_scores():
    def fresh():
        model = mlp()
        schedule = Polynomial(initial=0.0, final=0.6, begin_step=1, end_step=5, frequency=2)
        return model, Pruner(model, "movement", scope="global", schedule=schedule), \
            torch.optim.SGD(model.parameters(), lr=0.05)

    model, pruner, optimizer = fresh()
    _loop(model, pruner, optimizer, 3)  # prunes at step 1: masks and scores to carry over
    state = pruner.state_dict()
    resumed_model, resumed, resumed_optimizer = fresh()
    rewind(resumed_model, take_snapshot(model))
    resumed.load_state_dict(state)
    for name, score in state["loop"]["movement"]["sums"].items():
        assert torch.equal(_scores(resumed)[name], score)
    _loop(model, pruner, optimizer, 4)
    _loop(resumed_model, resumed, resumed_optimizer, 4)
    for name, score in _scores(pruner).items():
        assert torch.allclose(_scores(resumed)[name], score, atol=1e-6)
    assert all(torch.equal(get_masks(resumed_model)[n], keep) for n, keep in get_masks(model).items())


def test_movement_with_no_training_step_before_pruning_is_refused_before_anything_changes():
    model = mlp()
    with pytest.raises(PrunekitError, match="needs a schedule that prunes after training steps"):
        prune(model, "movement", 0.5)
    assert get_masks(model) == {} and not model[0].weight._backward_hooks
    pruner = Pruner(model, "movement", 0.5, schedule=OneShot())
    with pytest.raises(PrunekitError, match="no backward pass reached the pruned weights"):
        pruner.step()
    assert get_masks(model) == {} and pruner.step_count == 0
    nn.functional.cross_entropy(model(X), Y).backward()  # after one backward pass the same step goes through
    assert pruner.step().sparsity_achieved == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=0.5, granularity="neuron", example_inputs=X, schedule=Polynomial(end_step=4)),
     "neuron method 'movement'"),
    (dict(sparsity=0.5, schedule=GradientThreshold(None, 0, 2)), "method 'gradient' or 'taylor'"),
    (dict(threshold=0.0, schedule=Polynomial(end_step=4, threshold=0.0)), "do not pass threshold"),
])
def test_bad_pruner_settings_are_refused(kwargs, message):
    model = mlp()
    with pytest.raises(PrunekitError, match=message):
        Pruner(model, "movement", **kwargs)
    assert get_masks(model) == {} and not model[0].weight._backward_hooks


def test_bad_threshold_and_comparison_settings_are_refused_before_training():
    with pytest.raises(PrunekitError, match="threshold"):
        Polynomial(end_step=4, threshold=math.nan)
    with pytest.raises(PrunekitError, match="scores single weights"):
        parse_method_spec("neuron:soft-movement")

    def refused(message, methods=("movement",), **settings):
        config = CompareConfig("lenet300", "digits", methods, (0.9,), **settings)
        with pytest.raises(PrunekitError, match=message):
            check_schedule(config, [parse_method_spec(text) for text in methods])

    refused("not lottery", schedule="lottery")
    refused("--finetune-epochs >= 1", methods=("soft-movement",), finetune_epochs=0)
    refused("does not take --tolerance", schedule="agp", tolerance=1.0)
    refused("use magnitude there", methods=("hybrid:l1@0.5+movement",))


def test_compare_prunes_movement_inside_the_fine_tuning_budget(tmp_path):
    # --schedule oneshot (the default) gives movement the cubic schedule inside the fine-tuning budget
    config = CompareConfig("lenet300", "digits", ("movement",), (0.8,), seeds=(0,), finetune_epochs=1,
                           train_epochs=1, batch_size=16, cache_dir=str(tmp_path), progress=False)
    [run] = run_compare(config)
    assert run["method"] == "movement" and run["sparsity_achieved"] == pytest.approx(0.8, abs=1e-3)
    assert run["accuracy_pruned"] is not None and run["prune_seconds"] > 0 and run["epochs_spent"] == 1
