"""train's callbacks (on_loss, on_step) against hand-written loops, and train leaving the caller's
global RNG state as it found it while drawing exactly as a manual seed did."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from prunekit.data import load_dataset, make_loader
from prunekit.errors import PrunekitError
from prunekit.training import TrainCallback, train
from prunekit.zoo import build_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _fresh_model(name: str, splits, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, splits.input_shape, splits.num_classes)


def _small_loader(splits, seed: int = 0) -> DataLoader:
    return make_loader(Subset(splits.train, range(256)), 32, shuffle=True, seed=seed)


def _same_weights(first: nn.Module, second: nn.Module) -> bool:
    reference = second.state_dict()
    return all(torch.equal(value, reference[key]) for key, value in first.state_dict().items())


def _dropout_model_and_data(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(60, 6, generator=generator), torch.randint(0, 3, (60,), generator=generator))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    return model, data


def _shuffled(data) -> DataLoader:
    # no generator of its own: like dropout, its shuffling draws from torch's global RNG
    return DataLoader(data, batch_size=16, shuffle=True)


def _reference_train(model, loader, epochs: int, lr: float, seed: int, penalty=None,
                     val_loader=None) -> list[float]:
    """What `train` did before callbacks and forked RNGs, by hand: seed the global RNG, Adam, cosine."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    mean_task_losses = []
    for _ in range(epochs):
        model.train()
        total, count = 0.0, 0
        iter(loader)  # train's tqdm.auto progress bar opens one extra iterator, which draws a seed
        for inputs, targets in loader:
            task_loss = F.cross_entropy(model(inputs), targets)
            loss = task_loss if penalty is None else task_loss + penalty(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += task_loss.item() * len(targets)
            count += len(targets)
        mean_task_losses.append(total / count)
        if val_loader is not None:
            for _ in val_loader:  # evaluating drew a loader seed from the global RNG, as any iteration does
                pass
    return mean_task_losses


def _first_layer_penalty(model: nn.Module) -> torch.Tensor:
    return 0.1 * model[0].weight.pow(2).sum()


class _Penalty(TrainCallback):
    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def on_loss(self, loss, inputs, targets):
        return loss + _first_layer_penalty(self.model)


class _Recorder(TrainCallback):
    """Records the order of hook calls and whether the watched weight moved before each on_step."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight, self.events, self.moved = weight, [], []

    def on_loss(self, loss, inputs, targets):
        self.events.append("loss")
        self.weight_at_loss = self.weight.detach().clone()
        return loss

    def on_step(self, step):
        self.events.append(step)
        self.moved.append(not torch.equal(self.weight, self.weight_at_loss))


@pytest.mark.parametrize("with_val_loader", [False, True])
def test_train_leaves_global_rng_alone_and_draws_as_manual_seed_did(with_val_loader):
    model, data = _dropout_model_and_data()
    torch.manual_seed(123)
    torch.rand(3)  # any state the caller happens to be in
    caller_state = torch.get_rng_state()
    val_loader = DataLoader(data, batch_size=20) if with_val_loader else None
    history = train(model, _shuffled(data), epochs=3, lr=0.01, lr_schedule="cosine", seed=7, progress=False,
                    val_loader=val_loader)
    assert torch.equal(torch.get_rng_state(), caller_state)
    assert all(module.training for module in model.modules())

    reference, _ = _dropout_model_and_data()
    reference_losses = _reference_train(reference, _shuffled(data), 3, 0.01, seed=7, val_loader=val_loader)
    assert [entry["loss"] for entry in history] == reference_losses
    assert _same_weights(model, reference)


def test_on_step_follows_every_optimizer_step(digits):
    model = _fresh_model("lenet300", digits)
    loader = _small_loader(digits)
    recorder = _Recorder(model.fc1.weight)
    train(model, loader, epochs=2, progress=False, callbacks=[recorder])
    steps = 2 * len(loader)
    assert recorder.events == [event for step in range(1, steps + 1) for event in ("loss", step)]
    assert recorder.moved == [True] * steps  # the optimizer had already stepped when on_step ran


def test_on_loss_penalty_matches_a_hand_written_loop():
    def run(with_penalty: bool):
        model, data = _dropout_model_and_data()
        callbacks = [_Penalty(model)] if with_penalty else ()
        history = train(model, _shuffled(data), epochs=3, lr=0.01, lr_schedule="cosine", seed=4, progress=False,
                        callbacks=callbacks)
        return model, history

    penalised, history = run(with_penalty=True)
    plain, plain_history = run(with_penalty=False)
    reference, data = _dropout_model_and_data()
    reference_losses = _reference_train(reference, _shuffled(data), 3, 0.01, seed=4, penalty=_first_layer_penalty)
    assert _same_weights(penalised, reference)
    assert [entry["loss"] for entry in history] == reference_losses  # the task loss, before the penalty
    assert penalised[0].weight.norm() < plain[0].weight.norm()
    assert history != plain_history


def test_callbacks_apply_in_order_and_a_bad_return_is_named():
    seen = []

    class Double(TrainCallback):
        def on_loss(self, loss, inputs, targets):
            seen.append(("double", loss.item()))
            return 2 * loss

    class AddOne(TrainCallback):
        def on_loss(self, loss, inputs, targets):
            seen.append(("add one", loss.item()))
            return loss + 1

    class Nothing(TrainCallback):
        def on_loss(self, loss, inputs, targets):
            return None

    def one_sgd_step(callbacks):
        model = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(1.0)
        data = TensorDataset(torch.ones(2, 1), torch.zeros(2, dtype=torch.int64))
        history = train(model, DataLoader(data, batch_size=2), epochs=1, lr=0.5, optimizer="sgd",
                        progress=False, loss_fn=lambda m, x, y: m(x).pow(2).mean(), callbacks=callbacks)
        return model.weight.item(), history[0]["loss"]

    # task loss w^2 = 1; backpropagated 2 w^2 + 1 has gradient 4w = 4, so one step of lr 0.5 gives w = -1
    assert one_sgd_step([Double(), AddOne()]) == (pytest.approx(-1.0), 1.0)
    assert seen == [("double", 1.0), ("add one", 2.0)]
    assert one_sgd_step([]) == (pytest.approx(0.0), 1.0)  # gradient 2w = 2
    with pytest.raises(PrunekitError, match="Nothing.on_loss returned None; it must return"):
        one_sgd_step([Double(), Nothing()])


def test_non_finite_loss_after_callbacks_is_reported():
    class Explode(TrainCallback):
        def on_loss(self, loss, inputs, targets):
            return loss * float("inf")

    loader = DataLoader(TensorDataset(torch.randn(4, 2), torch.zeros(4, dtype=torch.int64)), batch_size=2)
    with pytest.raises(PrunekitError, match="after the callbacks' on_loss .*lower the penalty's weight"):
        train(nn.Linear(2, 2), loader, epochs=1, progress=False, callbacks=[Explode()])


def test_bad_callbacks_are_refused_before_training(digits):
    model = _fresh_model("lenet300", digits)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    recorder = _Recorder(model.fc1.weight)
    with pytest.raises(PrunekitError, match=r"callbacks\[1\] is 'on_step' \(str\), not a TrainCallback"):
        train(model, _small_loader(digits), epochs=1, progress=False, callbacks=[recorder, "on_step"])
    with pytest.raises(PrunekitError, match=r"a single _Recorder: pass callbacks=\[callback\]"):
        train(model, _small_loader(digits), epochs=1, progress=False, callbacks=recorder)
    with pytest.raises(PrunekitError, match=r"callbacks\[0\] is the class _Penalty, not an instance"):
        train(model, _small_loader(digits), epochs=1, progress=False, callbacks=[_Penalty])
    assert recorder.events == []
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
