"""L0 regularisation with hard-concrete gates: gate arithmetic against hand-computed values,
gates and masks through one interface, gates becoming masks and removal, and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import PrunekitError
from prunekit.graph.types import UnitGroup
from prunekit.gates import GATE_LR, GatedMask, gate_banks, gate_parameters
from prunekit.masking import bake, fold_gates, get_masks, release_masks
from prunekit.regularizers import L0, PENALTY_METHODS
from prunekit.schedules import OneShot
from prunekit.training import _make_optimizer


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))


def _set_logits(model: nn.Module, seed: int = 1, scale: float = 3.0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bank in gate_banks(model):
            bank.log_alpha.copy_(torch.randn(bank.log_alpha.shape, generator=generator) * scale)


def test_gates_follow_the_hard_concrete_formulas():
    model = nn.Linear(3, 2)
    prunekit.Pruner(model, "l0", granularity="unstructured", regularizer=L0(0.5), schedule=OneShot(at_step=5))
    (bank,) = gate_banks(model)
    with torch.no_grad():
        bank.log_alpha.copy_(torch.tensor([[-3.0, 0.0, 0.4], [1.0, 2.5, -0.5]]))
        bank.noise.copy_(torch.tensor([[0.2, 0.5, 0.9], [0.01, 0.7, 0.3]]))
    log_alpha, noise = bank.log_alpha.detach(), bank.noise
    mean = torch.sigmoid(log_alpha) * 1.2 - 0.1
    assert torch.allclose(bank.gate(deterministic=True), mean.clamp(0, 1))
    sampled = torch.sigmoid((torch.log(noise) - torch.log(1 - noise) + log_alpha) / (2 / 3)) * 1.2 - 0.1
    assert torch.allclose(bank.gate(deterministic=False), sampled.clamp(0, 1))
    keep_probability = torch.sigmoid(log_alpha - (2 / 3) * math.log(0.1 / 1.1))
    assert torch.allclose(bank.keep_probability(), keep_probability)
    groups = prunekit.granularity.get_granularity("unstructured").find(model, None, ())
    assert L0(0.5).term(model, groups).item() == pytest.approx(0.5 * float(keep_probability.sum()), rel=1e-6)
    weight = model.parametrizations.weight.original.detach()
    model.eval()
    assert torch.allclose(model.weight, weight * mean.clamp(0, 1))
    model.train()
    assert torch.allclose(model.weight, weight * sampled.clamp(0, 1))


def test_unit_gates_cost_the_parameters_a_unit_owns_and_gate_every_slice():
    model = _mlp()
    x = torch.randn(4, 6)
    prunekit.Pruner(model, "l0", granularity="neuron", example_inputs=x, regularizer=L0(1e-3),
                    schedule=OneShot(at_step=10))
    banks = {bank.group_name: bank for bank in gate_banks(model)}
    # a neuron of layer 0 owns its row (6) and bias (1) and its column in layer 2 (5): 12
    assert banks["0"].unit_cost.tolist() == [12.0] * 8
    assert banks["2"].unit_cost.tolist() == [12.0] * 5  # 8 + 1 + 3
    with torch.no_grad():
        banks["0"].log_alpha.fill_(5.0)
        banks["0"].log_alpha[3] = -9.0  # shut: neuron 3 of layer 0
    model.eval()
    z = banks["0"].gate(deterministic=True)
    assert z[3] == 0 and z[0] == 1
    assert torch.all(model[0].weight[3] == 0) and model[0].bias[3] == 0 and torch.all(model[2].weight[:, 3] == 0)
    # layer 2's weight carries both banks: rows by its own gates, columns by layer 0's
    z2 = banks["2"].gate(deterministic=True)
    original = model[2].parametrizations.weight.original.detach()
    assert torch.allclose(model[2].weight, original * z2[:, None] * z[None, :])


def test_fold_gives_masks_and_the_same_eval_outputs_and_finalize_removes_shut_units():
    model, x = _mlp(), torch.randn(16, 6)
    pruner = prunekit.Pruner(model, "l0", granularity="neuron", example_inputs=x, regularizer=L0(1e-3),
                             schedule=OneShot(at_step=2))
    _set_logits(model)
    model.eval()
    expected = model(x).detach()
    shut = {bank.group_name: int((bank.mean_gate() <= 0).sum()) for bank in gate_banks(model)}
    assert sum(shut.values()) > 0
    masks_while_gated = get_masks(model)
    assert pruner.step() is None and pruner.step() is None
    result = pruner.step()  # step 2: the threshold (gate shut) decides, the gates become masks
    assert pruner.request.threshold == 0.0 and result.units_after == 13 - sum(shut.values())
    assert not list(gate_banks(model)) and gate_parameters(model) == []
    assert {name: mask.tolist() for name, mask in get_masks(model).items()} == \
        {name: mask.tolist() for name, mask in masks_while_gated.items()}
    assert torch.allclose(model(x), expected, atol=1e-6)
    pruner.finalize()
    assert model[0].out_features == 8 - shut["0"] and model[2].out_features == 5 - shut["2"]
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_sparsity_target_removes_the_lowest_gates_and_bake_folds_gates_like_masks():
    model = nn.Sequential(nn.Linear(10, 10))
    pruner = prunekit.Pruner(model, "l0", 0.3, regularizer=L0(1e-3), schedule=OneShot(at_step=1))
    _set_logits(model, scale=1.0)
    (bank,) = gate_banks(model)
    order = bank.mean_gate().detach().flatten().argsort()
    model.train()  # sampled gates zero entries at random in train mode; the result counts the deterministic ones
    pruner.step()
    result = pruner.step()
    keep = get_masks(model)["0.weight"].flatten()
    assert not keep[order[:30]].any() and keep[order[30:]].all()
    assert result.sparsity_achieved == pytest.approx(0.3) and result.units_after == 70
    # bake on a gated model multiplies by the deterministic gates, exactly as eval mode computes
    gated = nn.Linear(4, 4)
    prunekit.Pruner(gated, "l0", regularizer=L0(1e-3), schedule=OneShot(at_step=9))
    _set_logits(gated)
    gated.eval()
    x = torch.randn(3, 4)
    expected = gated(x).detach()
    bake(gated)
    assert not list(gate_banks(gated)) and torch.allclose(gated(x), expected, atol=1e-6)


def test_noise_is_drawn_per_step_so_every_slice_of_a_unit_sees_one_sample():
    model, x = _mlp(), torch.randn(4, 6)
    rng = torch.get_rng_state()
    pruner = prunekit.Pruner(model, "l0", granularity="neuron", example_inputs=x, regularizer=L0(1e-3),
                             schedule=OneShot(at_step=10))
    assert torch.equal(torch.get_rng_state(), rng)  # building the gates drew nothing from the caller's RNG
    model.train()
    first, again = model(x), model(x)
    assert torch.equal(first, again)
    noise = [bank.noise.clone() for bank in gate_banks(model)]
    pruner.step()
    assert any(not torch.equal(old, bank.noise) for old, bank in zip(noise, gate_banks(model)))


def test_penalty_trains_gates_shut_and_the_trainer_gives_gates_their_own_rate():
    model, x = _mlp(), torch.randn(32, 6)
    target = x[:, :3] * 2.0  # needs a few neurons, not all of them
    pruner = prunekit.Pruner(model, "l0", granularity="neuron", example_inputs=x, regularizer=L0(2e-3),
                             schedule=OneShot(at_step=200))
    optimizer = _make_optimizer(model, "adam", 1e-3, 1e-4)
    assert optimizer.param_groups[1]["lr"] == GATE_LR and optimizer.param_groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(p) for p in gate_parameters(model)}
    start = pruner.penalty().item()
    for _ in range(200):
        loss = (model(x) - target).pow(2).mean() + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
    assert pruner.penalty().item() < 0.8 * start
    result = pruner.step()
    assert 0 < result.units_before < 13 and result.units_after == result.units_before  # training shut the gates


def test_state_dict_round_trip_keeps_gates():
    model, x = _mlp(), torch.randn(4, 6)
    pruner = prunekit.Pruner(model, "l0", granularity="neuron", example_inputs=x, regularizer=L0(1e-3),
                             schedule=OneShot(at_step=5))
    _set_logits(model)
    pruner.step()
    twin = _mlp()
    twin_pruner = prunekit.Pruner(twin, "l0", granularity="neuron", example_inputs=x, regularizer=L0(1e-3),
                                  schedule=OneShot(at_step=5))
    twin.load_state_dict(model.state_dict())
    twin_pruner.load_state_dict(pruner.state_dict())
    model.eval(), twin.eval()
    assert torch.equal(model(x), twin(x)) and twin_pruner.step_count == 1


@pytest.mark.parametrize("make, words", [
    (lambda: L0(-1.0), "strength"),
    (lambda: L0(1e-4, temperature=0.0), "temperature"),
    (lambda: L0(1e-4, temperature=float("nan")), "temperature"),
    (lambda: L0(1e-4, low=0.1), "stretch"),
    (lambda: L0(1e-4, high=1.0), "stretch"),
    (lambda: L0(1e-4, init_keep=1.0), "init_keep"),
])
def test_bad_gate_settings_are_refused_before_any_model_is_touched(make, words):
    with pytest.raises(PrunekitError, match=words):
        make()


def test_l0_without_gates_and_gates_with_removal_are_refused_and_the_model_is_unchanged():
    model, x = _mlp(), torch.randn(4, 6)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match="regularizer=prunekit.regularizers.L0"):
        prunekit.Pruner(model, "l0", 0.5, granularity="neuron", example_inputs=x)
    with pytest.raises(PrunekitError, match="remove=False"):
        prunekit.Pruner(model, "l0", 0.5, granularity="neuron", example_inputs=x, regularizer=L0(1e-4),
                        remove=True)
    blocks = UnitGroup("blocks", "layer", 3, (), torch.zeros(0, dtype=torch.long))
    with pytest.raises(PrunekitError, match="member slices"):
        L0(1e-4).check(model, [blocks], "layer")
    assert not any(isinstance(m, GatedMask) for m in model.modules())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    prunekit.Pruner(model, "l0", granularity="neuron", example_inputs=x, regularizer=L0(1e-4))
    with pytest.raises(PrunekitError, match="another live Pruner"):
        prunekit.Pruner(model, "l0", granularity="neuron", example_inputs=x, regularizer=L0(1e-4))
    release_masks(model)  # the gates now belong to nobody, but they are still gates
    with pytest.raises(PrunekitError, match="already carries L0 gates"):
        prunekit.Pruner(model, "l0", granularity="neuron", example_inputs=x, regularizer=L0(1e-4))
    assert fold_gates(model) != [] and fold_gates(model) == []


def test_harness_strengths_differ_for_weights_and_units():
    method = PENALTY_METHODS["l0"]
    assert method.strength_for("unstructured") == 1e-4 and method.strength_for("channel") == 1e-5


def test_a_checkpoint_of_a_gated_model_holds_what_its_gates_become(tmp_path):
    from prunekit.arch import ArchSpec
    from prunekit.checkpoint import load_checkpoint, save_checkpoint
    from prunekit.zoo import build_model

    model = build_model("lenet300", (1, 8, 8), 10)
    x = torch.randn(5, 1, 8, 8)
    prunekit.Pruner(model, "l0", granularity="neuron", example_inputs=x, regularizer=L0(1e-3),
                    schedule=OneShot(at_step=9))
    _set_logits(model)
    model.eval()
    expected = model(x).detach()
    model.train()  # saving does not depend on the mode the model is in
    loaded, info = load_checkpoint(save_checkpoint(tmp_path / "gated.pt", model, ArchSpec("lenet300", (1, 8, 8), 10)))
    loaded.eval()
    assert info["masked"] and not list(gate_banks(loaded))
    assert torch.allclose(loaded(x), expected, atol=1e-6)
    assert model.training and list(gate_banks(model))  # the model saved is left as it was


def test_counts_see_the_deterministic_gates_in_any_mode():
    model = nn.Sequential(nn.Linear(10, 10))
    prunekit.Pruner(model, "l0", regularizer=L0(1e-3), schedule=OneShot(at_step=9))
    _set_logits(model)
    (bank,) = gate_banks(model)
    shut = int((bank.mean_gate() <= 0).sum())
    model.train()
    assert prunekit.count_params(model) == (110, 110 - shut) and model.training  # gate logits are not counted
