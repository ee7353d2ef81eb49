"""prunekit.Pruner in a hand-written training loop: masks hold under every optimiser, resume from
state_dict is exact, structured masks become removed units at finalize, bad input changes nothing."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunekit import Pruner, get_masks, prune, remove_masked_units
from prunekit.errors import PrunekitError
from prunekit.graph import replay
from prunekit.schedules import OneShot

from invariants import mlp, random_batches, same_state, small_cnn

X = torch.randn(16, 20, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(2))


def _loop(model, pruner, optimizer, steps, inputs=X, targets=Y):
    """The loop a user writes: loss (+ penalty), backward, optimiser step, pruner step."""
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(inputs), targets) + pruner.penalty()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()


@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda params: torch.optim.Adam(params, lr=1e-2),
    lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
], ids=["sgd-momentum", "adam", "adamw"])
def test_masks_hold_in_a_hand_written_loop_with_an_optimizer_built_first(make_optimizer):
    model = mlp()
    reference = copy.deepcopy(model)
    optimizer = make_optimizer(model.parameters())  # built before the Pruner: it must keep working
    pruner = Pruner(model, "magnitude", 0.9, scope="global")
    _loop(model, pruner, optimizer, steps=1)  # the first step() prunes (after one dense update)
    masks = get_masks(model)
    weights_after_pruning = {name: model.get_submodule(name[:-7]).weight.detach().clone() for name in masks}
    _loop(model, pruner, optimizer, steps=5)
    for name, keep in masks.items():
        weight = model.get_submodule(name[:-7]).weight
        assert bool((weight[~keep] == 0).all()), "a pruned weight came back"
        assert not torch.equal(weight[keep], weights_after_pruning[name][keep]), "the optimiser stopped updating"
    assert pruner.sparsity.achieved == pytest.approx(0.9, abs=1 / 500)
    # the first step pruned exactly what torch's global L1 pruning picks on the same weights
    one_step = copy.deepcopy(reference)
    first = make_optimizer(one_step.parameters())
    nn.functional.cross_entropy(one_step(X), Y).backward()
    first.step()
    linears = [(one_step[index], "weight") for index in (0, 2, 4)]
    torch_prune.global_unstructured(linears, pruning_method=torch_prune.L1Unstructured, amount=0.9)
    for index in (0, 2, 4):
        assert torch.equal(masks[f"{index}.weight"], one_step[index].weight_mask.bool())


@pytest.mark.parametrize("saved_at", [1, 4], ids=["saved-before-pruning", "saved-after-pruning"])
@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    lambda params: torch.optim.Adam(params, lr=1e-2),
], ids=["sgd-momentum", "adam"])
def test_state_dict_resume_is_bit_identical_to_an_uninterrupted_run(saved_at, make_optimizer):
    def fresh():
        model = mlp()
        optimizer = make_optimizer(model.parameters())
        return model, optimizer, Pruner(model, "magnitude", 0.7, scope="global", schedule=OneShot(at_step=2))

    straight, straight_optimizer, straight_pruner = fresh()
    _loop(straight, straight_pruner, straight_optimizer, steps=6)

    first, first_optimizer, first_pruner = fresh()
    _loop(first, first_pruner, first_optimizer, steps=saved_at)
    saved = copy.deepcopy({"model": first.state_dict(), "optimizer": first_optimizer.state_dict(),
                           "pruner": first_pruner.state_dict()})
    resumed, resumed_optimizer, resumed_pruner = fresh()
    resumed_pruner.load_state_dict(saved["pruner"])  # masks first, so the model's state_dict keys match
    saved_masks, loaded_masks = get_masks(first), get_masks(resumed)  # before the model state could overwrite them
    assert loaded_masks.keys() == saved_masks.keys() and all(torch.equal(loaded_masks[k], saved_masks[k])
                                                               for k in saved_masks)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    assert resumed_pruner.sparsity == first_pruner.sparsity
    _loop(resumed, resumed_pruner, resumed_optimizer, steps=6 - saved_at)
    assert same_state(resumed, straight)
    assert resumed_pruner.state_dict()["step"] == straight_pruner.state_dict()["step"] == 6


def test_a_pruner_inside_train_prunes_where_a_hand_written_loop_does():
    """PrunerCallback drives a Pruner (pruning at step 3) from prunekit's train exactly as the loop
    a user writes: the same masks and weights."""
    from torch.utils.data import DataLoader, TensorDataset

    from prunekit.callbacks import PrunerCallback
    from prunekit.training import train

    loader = DataLoader(TensorDataset(X, Y), batch_size=4)
    by_train = mlp()
    pruner = Pruner(by_train, "magnitude", 0.6, schedule=OneShot(at_step=2))
    train(by_train, loader, 2, lr=0.01, optimizer="sgd", progress=False, callbacks=[PrunerCallback(pruner)])
    by_hand = mlp()
    hand_pruner = Pruner(by_hand, "magnitude", 0.6, schedule=OneShot(at_step=2))
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.01, momentum=0.9)
    by_hand.train()
    for _ in range(2):
        for inputs, targets in loader:
            loss = nn.functional.cross_entropy(by_hand(inputs), targets) + hand_pruner.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            hand_pruner.step()
    assert pruner.state_dict()["step"] == hand_pruner.state_dict()["step"] == 8
    assert all(torch.equal(get_masks(by_train)[k], mask) for k, mask in get_masks(by_hand).items())
    assert same_state(by_train, by_hand)


def test_structured_masks_while_training_then_finalize_removes_them():
    model, inputs = small_cnn(), torch.randn(12, 1, 8, 8)
    targets = torch.randint(0, 3, (12,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    params_before = sum(p.numel() for p in model.parameters())
    pruner = Pruner(model, "l1", 0.5, granularity="channel", example_inputs=inputs[:2])
    result = pruner.step()
    assert result.unit == "channel" and result.shrink_record is None  # masked, not removed yet
    assert sum(p.numel() for p in model.parameters()) == params_before  # the optimiser's tensors stay
    _loop(model, pruner, optimizer, steps=3, inputs=inputs, targets=targets)
    model.eval()
    with torch.no_grad():
        masked_output = model(inputs)
    assert pruner.finalize() is model and not get_masks(model)
    assert model[0].out_channels == 4 and model[1].num_features == 4 and model[3].in_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), masked_output, atol=1e-5, rtol=1e-5)
    fresh = replay(small_cnn(seed=1), inputs[:2], pruner.shrink_record)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(inputs), model(inputs))


def test_a_model_pruned_with_remove_false_can_be_shrunk_later():
    inputs = torch.randn(6, 1, 8, 8)
    masked, removed = small_cnn().eval(), small_cnn().eval()
    prune(masked, "l1", 0.5, granularity="channel", example_inputs=inputs[:2], remove=False)
    direct = prune(removed, "l1", 0.5, granularity="channel", example_inputs=inputs[:2])
    record = remove_masked_units(masked, "channel", inputs[:2])
    assert record.steps == direct.shrink_record.steps and not get_masks(masked)
    assert same_state(masked, removed)


def test_sparsity_reports_target_and_achieved_and_penalty_is_zero():
    model = mlp()
    pruner = Pruner(model, "magnitude", 0.6, schedule=OneShot(at_step=1))
    assert pruner.sparsity.target == 0.0 and pruner.sparsity.achieved == 0.0 and not pruner.done
    assert pruner.step() is None
    result = pruner.step()
    assert pruner.done and pruner.sparsity.target == 0.6
    assert pruner.sparsity.achieved == pytest.approx(result.sparsity_achieved)
    penalty = pruner.penalty()
    assert penalty.shape == () and float(penalty) == 0.0


# ---------------------------------------------------------------- state the user left


def _modes(model):
    return {name: module.training for name, module in model.named_modules()}


def _running_stats(model):
    return {name: buffer.clone() for name, buffer in model.named_buffers() if "running" in name}


@pytest.mark.parametrize("kwargs", [
    {"method": "taylor"},
    {"method": "taylor", "granularity": "channel", "remove": False},
    {"method": "activation-mean", "granularity": "channel"},
    {"method": "removal-cost", "granularity": "layer"},
], ids=["unstructured-taylor", "channel-taylor-masked", "channel-activation-removed", "layer-removal-cost"])
def test_modes_running_stats_and_global_rng_are_left_as_found(kwargs):
    """A BatchNorm the user froze stays in eval mode inside a model in train mode, no running
    statistic moves, and a shuffling DataLoader's draws do not leak into the global RNG."""
    from prunekit.zoo import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", (1, 8, 8), 10).train()
    model.layer2[0].bn1.eval()
    inputs, targets = random_batches((1, 8, 8), 10, rows=8)[0]
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=4, shuffle=True)
    modes, stats, rng = _modes(model), _running_stats(model), torch.get_rng_state()
    result = prune(model, sparsity=0.3, data=data, example_inputs=inputs[:2], **kwargs)
    assert result.units_after < result.units_before
    assert torch.equal(torch.get_rng_state(), rng)
    after = _modes(model)
    assert all(after[name] == mode for name, mode in modes.items() if name in after)
    assert not model.layer2[0].bn1.training and model.training
    if result.shrink_record is None or kwargs.get("granularity") == "layer":  # shapes unchanged
        now = _running_stats(model)
        assert all(torch.equal(now[name], value) for name, value in stats.items() if name in now)


def test_removing_pruner_reports_sparsity_of_the_original_units():
    model, inputs = small_cnn(), torch.randn(4, 1, 8, 8)
    pruner = Pruner(model, "l1", 0.5, granularity="channel", example_inputs=inputs[:2], remove=True)
    result = pruner.step()
    assert result.shrink_record.steps and model[0].out_channels == 4
    assert pruner.sparsity.achieved == result.sparsity_achieved == pytest.approx(7 / 14)
    assert pruner.state_dict()["shrink_record"] == result.shrink_record.to_dict()


def test_a_failed_step_changes_nothing_and_can_be_retried():
    model, batches = mlp(), random_batches((20,), 4, rows=8)
    data = []  # a loader that yields nothing: statistics cannot be collected
    pruner = Pruner(model, "taylor", 0.5, data=data)
    with pytest.raises(PrunekitError, match="yielded no batches"):
        pruner.step()
    assert pruner.state_dict()["step"] == 0 and not get_masks(model)
    data.extend(batches)  # the same loader object, now with data
    assert pruner.step() is not None and pruner.state_dict()["step"] == 1


def test_finalize_checkpoints_and_training_leave_modes_and_rng_as_found(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from prunekit import ArchSpec, load_checkpoint, save_checkpoint
    from prunekit.training import train

    model, inputs, targets = small_cnn(), torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=4, shuffle=True)  # draws from the global RNG
    model.train()
    model[1].eval()  # a BatchNorm the user froze
    modes, rng = _modes(model), torch.get_rng_state()
    pruner = Pruner(model, "l1", 0.5, granularity="channel", example_inputs=inputs[:2])
    pruner.step()
    train(model, loader, 1, progress=False)
    pruner.finalize()
    arch = ArchSpec("torch.nn:Sequential", (1, 8, 8))  # any importable Module class; checked by shapes only
    with pytest.raises(PrunekitError):
        save_checkpoint(tmp_path / "m.pt", model, arch, record=pruner.shrink_record)
    assert _modes(model) == modes and torch.equal(torch.get_rng_state(), rng)
    zoo = ArchSpec("lenet300", (1, 8, 8), 10)
    lenet = zoo.build().train()
    lenet.fc1.eval()
    modes = _modes(lenet)
    path = save_checkpoint(tmp_path / "lenet.pt", lenet, zoo)
    loaded, _ = load_checkpoint(path)
    assert _modes(lenet) == modes and torch.equal(torch.get_rng_state(), rng)
    assert same_state(loaded, lenet)
