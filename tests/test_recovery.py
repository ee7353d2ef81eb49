"""Recovery: distillation against a hand-computed loss, schedules fitted to a budget, the sparsity
search against its tolerance, lottery tickets against the weights they rewind to, and the harness
running every schedule on tiny budgets (accuracy after pruning recorded before recovery)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.harness import CompareConfig, run_compare
from prunekit.lottery import LotterySettings, rounds_for, run_lottery
from prunekit.recovery import Distillation, schedule_for
from prunekit.schedules import GradientThreshold, Iterative, Polynomial
from prunekit.search import search_sparsity

from invariants import mlp, same_state


def test_distillation_is_the_hinton_loss_computed_by_hand():
    teacher, student = mlp(seed=1), mlp(seed=2)
    inputs, targets = torch.randn(5, 20), torch.tensor([0, 1, 2, 3, 0])
    temperature, alpha = 3.0, 0.7
    s, t = student(inputs), teacher(inputs).detach()
    p_teacher = torch.softmax(t / temperature, dim=1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(s / temperature, dim=1))).sum(dim=1).mean()
    expected = alpha * temperature ** 2 * kl + (1 - alpha) * F.cross_entropy(s, targets)
    loss = Distillation(teacher, temperature, alpha)(student, inputs, targets)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is not trained


def test_distillation_keeps_the_teacher_mode_and_refuses_bad_settings():
    teacher = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    Distillation(teacher)(nn.Linear(4, 2), torch.ones(3, 4), torch.tensor([0, 1, 0]))
    assert teacher.training
    for kwargs, message in [({"temperature": 0}, "temperature"), ({"temperature": -2.0}, "temperature"),
                            ({"alpha": 1.5}, "alpha")]:
        with pytest.raises(PrunekitError, match=message):
            Distillation(teacher, **kwargs)
    with pytest.raises(PrunekitError, match="copy of the dense model"):
        Distillation(teacher)(teacher, torch.ones(3, 4), torch.tensor([0, 1, 0]))


def test_schedules_fit_inside_the_budget():
    agp = schedule_for("agp", 550)
    assert isinstance(agp, Polynomial) and agp.end_step == 137 and agp.finished(550)  # a quarter prunes
    iterative = schedule_for("iterative", 550)
    assert isinstance(iterative, Iterative) and [s for s in range(550) if iterative.prunes_at(s)] == [0, 68, 136]
    assert isinstance(schedule_for("gradient", 550), GradientThreshold)
    with pytest.raises(PrunekitError, match="finetune-epochs"):
        schedule_for("agp", 0)


def test_search_stops_at_the_first_level_beyond_the_tolerance_and_leaves_the_model_alone():
    model = mlp()
    before = copy.deepcopy(model)
    # accuracy falls one point per level: 0.5 -> 99%, 0.75 -> 98%, 0.875 -> 97% ...
    drops = iter([1.0, 0.99, 0.98, 0.97, 0.96])
    found = search_sparsity(model, lambda m: next(drops), tolerance=2.0, start=0.5, rate=0.5, max_sparsity=0.95)
    assert found.sparsity == 0.75 and [level["accepted"] for level in found.history] == [True, True, False]
    masks_left = sum(int(p.sum()) for name, p in found.model.state_dict().items() if name.endswith("keep_mask"))
    assert masks_left == round(0.25 * (20 * 16 + 16 * 12 + 12 * 4))
    assert same_state(model, before)


def test_search_with_an_unreachable_tolerance_says_so_and_leaves_the_model_alone():
    model = mlp()
    before = copy.deepcopy(model)
    accuracies = iter([0.9, 0.5])
    with pytest.raises(PrunekitError, match="already drops 40.00 points"):
        search_sparsity(model, lambda m: next(accuracies), tolerance=0.5)
    with pytest.raises(PrunekitError, match="tolerance"):
        search_sparsity(model, lambda m: 1.0, tolerance=-1)
    assert same_state(model, before)


def test_rounds_for_reaches_the_target_at_twenty_percent_per_round():
    for sparsity in (0.5, 0.8, 0.93, 0.99):
        rounds = rounds_for(sparsity)
        assert 0.8 ** rounds <= 1 - sparsity + 1e-9 < 0.8 ** (rounds - 1)


def test_lottery_ticket_starts_from_the_baseline_initialisation_and_control_shares_its_masks(tmp_path):
    outcome = run_lottery(LotterySettings("lenet300", "digits", sparsity=0.5, rounds=2, epochs_per_round=1))
    assert outcome.result.sparsity_achieved == pytest.approx(0.5, abs=1e-3)
    assert [round(r["sparsity"], 3) for r in outcome.rounds] == [0.0, round(1 - math.sqrt(0.5), 3), 0.5]
    assert outcome.epochs_spent == 3
    for (name, ticket), control in zip(outcome.ticket.state_dict().items(), outcome.control.state_dict().values()):
        if name.endswith("weight"):
            assert torch.equal(ticket == 0, control == 0), name  # the same masks on other weights
            assert not torch.equal(ticket, control)
    assert 0.0 < outcome.control_accuracy <= 1.0


@pytest.mark.parametrize("schedule, methods", [("agp", ("magnitude",)), ("iterative", ("neuron:l1",)),
                                               ("gradient", ("gradient",))])
def test_harness_runs_each_schedule_in_the_fine_tuning_budget(tmp_path, schedule, methods):
    config = CompareConfig("lenet300", "digits", methods, (0.5,), finetune_epochs=1, train_epochs=1,
                           cache_dir=str(tmp_path), progress=False, schedule=schedule, distill=True,
                           round_to=None)
    (run,) = run_compare(config)
    assert run["schedule"] == schedule and run["distill"] and run["epochs_spent"] == 1
    assert run["sparsity_achieved"] == pytest.approx(0.5, abs=0.01)
    assert run["accuracy_pruned"] is not None and 0 <= run["accuracy_pruned"] <= 1


def test_harness_records_accuracy_right_after_one_shot_pruning(tmp_path):
    config = CompareConfig("lenet300", "digits", ("magnitude",), (0.9,), finetune_epochs=0, train_epochs=1,
                           cache_dir=str(tmp_path), progress=False)
    (run,) = run_compare(config)
    assert run["accuracy_pruned"] == run["accuracy"]  # no recovery: the same model is measured twice
    assert run["accuracy_pruned"] < run["accuracy_dense"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(schedule="gradient", methods=("magnitude",)), "--methods gradient"),
    (dict(schedule="agp", finetune_epochs=0), "finetune-epochs >= 1"),
    (dict(schedule="agp", methods=("hybrid:l1@0.5+magnitude",)), "oneshot"),
    (dict(schedule="nope"), "schedule"),
    (dict(schedule="lottery", budget="sparsity=0.5"), "does not take --budget"),
    (dict(schedule="lottery", distill=True), "drop --distill"),
    (dict(schedule="iterative", tolerance=1.0, allocation="lamp"), "does not take --budget"),
    (dict(schedule="gradient", methods=("gradient",), budget="sparsity=0.5"), "does not take --budget"),
    (dict(schedule="iterative", tolerance=1.0, sparsities=(0.0,)), "where the search starts"),
])
def test_harness_refuses_a_schedule_it_cannot_run_before_training(tmp_path, kwargs, message):
    settings = dict(methods=("magnitude",), sparsities=(0.5,), finetune_epochs=1, cache_dir=str(tmp_path),
                    progress=False)
    settings.update(kwargs)
    config = CompareConfig("lenet300", "digits", **settings)
    with pytest.raises(PrunekitError, match=message):
        run_compare(config)
    assert not list(tmp_path.iterdir())  # refused before any baseline was trained


def test_harness_lottery_gives_the_ticket_and_its_reinitialised_control(tmp_path):
    config = CompareConfig("lenet300", "digits", ("magnitude",), (0.5,), train_epochs=2, cache_dir=str(tmp_path),
                           progress=False, schedule="lottery", round_to=None)
    ticket, control = run_compare(config)
    assert (ticket["schedule"], control["schedule"]) == ("lottery", "lottery-reinit")
    assert ticket["epochs_spent"] == 2 * (rounds_for(0.5) + 1) and control["epochs_spent"] == 2
    assert ticket["sparsity_achieved"] == pytest.approx(0.5, abs=1e-3)
    assert ticket["params_nonzero"] == control["params_nonzero"]  # the same masks
    assert [r["sparsity"] for r in ticket["lottery_rounds"]][0] == 0.0


def test_harness_search_reports_the_highest_sparsity_within_the_tolerance(tmp_path):
    config = CompareConfig("lenet300", "digits", ("magnitude",), (0.5,), finetune_epochs=1, train_epochs=2,
                           cache_dir=str(tmp_path), progress=False, schedule="iterative", tolerance=100.0,
                           round_to=None)
    (run,) = run_compare(config)  # a tolerance of 100 points accepts every level up to the last
    assert run["sparsity_reached"] == pytest.approx(0.995) and run["search"][-1]["accepted"]
    assert run["sparsity_achieved"] == pytest.approx(0.995, abs=1e-3)
    assert run["epochs_spent"] == len(run["search"])
    strict = CompareConfig("lenet300", "digits", ("magnitude",), (0.5,), finetune_epochs=0, train_epochs=2,
                           cache_dir=str(tmp_path), progress=False, schedule="iterative", tolerance=0.0,
                           round_to=None)
    with pytest.raises(PrunekitError, match="no sparsity stays within 0.0 points"):
        run_compare(strict)  # with no fine-tuning, 50% of an undertrained model costs accuracy


@pytest.mark.parametrize("method", ["synflow", "snip"])
def test_harness_prunes_at_initialisation_and_trains_for_the_same_total_epochs(tmp_path, method):
    config = CompareConfig("lenet300", "digits", (method,), (0.8,), finetune_epochs=1, train_epochs=1,
                           cache_dir=str(tmp_path), progress=False, round_to=None)
    (run,) = run_compare(config)
    assert run["schedule"] == "at-initialisation" and run["epochs_spent"] == 2  # baseline 1 + fine-tune 1
    assert run["sparsity_achieved"] == pytest.approx(0.8, abs=1e-3)
    assert run["accuracy"] > run["accuracy_pruned"]  # trained after pruning
    with pytest.raises(PrunekitError, match="drop --distill"):
        run_compare(CompareConfig("lenet300", "digits", (method,), (0.8,), cache_dir=str(tmp_path),
                                  progress=False, distill=True))
