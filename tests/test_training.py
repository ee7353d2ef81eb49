"""Training loop, evaluation, baseline cache and atomic writes."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Subset, TensorDataset

import prunekit.io
from prunekit import training
from prunekit.data import load_dataset, make_loader
from prunekit.errors import PrunekitError, UnknownNameError
from prunekit.io import atomic_save, atomic_write_text
from prunekit.training import (
    TrainConfig,
    baseline_path,
    default_train_config,
    evaluate,
    get_baseline,
    train,
)
from prunekit.zoo import build_model, list_models


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _same_weights(first: nn.Module, second: nn.Module) -> bool:
    reference = second.state_dict()
    return all(torch.equal(value, reference[key]) for key, value in first.state_dict().items())


def _fresh_model(name: str, splits, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, splits.input_shape, splits.num_classes)


def _small_loader(splits, seed: int = 0) -> DataLoader:
    return make_loader(Subset(splits.train, range(256)), 32, shuffle=True, seed=seed)


def test_default_configs_cover_the_zoo():
    assert set(training._DEFAULT_CONFIGS) == set(list_models())
    for name in list_models():
        config = default_train_config(name)
        assert isinstance(config, TrainConfig) and config.epochs >= 1 and config.lr > 0
    with pytest.raises(UnknownNameError, match="did you mean 'lenet5'"):
        default_train_config("lenet6")
    with pytest.raises(UnknownNameError, match="did you mean 'digits'"):
        default_train_config("lenet5", "digit")
    assert default_train_config("lenet5", "digits").augment_shift == 0


@pytest.mark.parametrize("name", ["lenet5", "vgg-small"])
def test_same_seed_gives_identical_weights(digits, name):
    def run(seed: int) -> dict[str, torch.Tensor]:
        model = _fresh_model(name, digits)
        train(model, _small_loader(digits, seed), epochs=1, seed=seed, progress=False)
        return model.state_dict()

    first, second, other = run(0), run(0), run(1)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_training_learns_digits(digits):
    model = _fresh_model("lenet300", digits)
    test_loader = make_loader(digits.test, 512, shuffle=False)
    before = evaluate(model, test_loader)
    history = train(model, make_loader(digits.train, 64, shuffle=True), epochs=5, progress=False,
                    val_loader=make_loader(digits.val, 512, shuffle=False))
    after = evaluate(model, test_loader)
    assert before < 0.3
    assert after >= 0.93
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4, 5]
    assert history[-1]["val_accuracy"] >= 0.9
    assert model.training


def test_evaluate_matches_hand_count_and_restores_modes():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.5))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    inputs = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 1, 1])
    model[1].train()
    model[2].eval()  # mixed modes must come back exactly as they were
    with torch.no_grad():
        model.eval()
        reference = (model(inputs).argmax(1) == targets).float().mean().item()
    model.train()
    model[2].eval()
    accuracy = evaluate(model, DataLoader(TensorDataset(inputs, targets), batch_size=2))
    assert accuracy == pytest.approx(reference)
    assert model.training and model[0].training and model[1].training and not model[2].training


def test_evaluate_rejects_empty_loader():
    empty = DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64)), batch_size=2)
    with pytest.raises(PrunekitError, match="no examples"):
        evaluate(nn.Linear(2, 2), empty)


class _KeepMask(nn.Module):
    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("keep", keep)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.keep


def test_training_works_through_parametrized_masks(digits):
    model = _fresh_model("lenet300", digits)
    keep = torch.rand_like(model.fc1.weight) > 0.5
    parametrize.register_parametrization(model.fc1, "weight", _KeepMask(keep))
    original_before = model.fc1.parametrizations.weight.original.detach().clone()
    train(model, _small_loader(digits), epochs=1, progress=False)
    effective = model.fc1.weight
    assert torch.all(effective[~keep] == 0)
    original_after = model.fc1.parametrizations.weight.original
    assert not torch.equal(original_after[keep], original_before[keep])  # kept weights trained
    # pruned originals get zero gradient; Adam moves nothing with zero gradient and no decay
    assert torch.equal(original_after[~keep], original_before[~keep])


def test_custom_loss_fn_is_used():
    calls = []

    def shrink_logits(model, inputs, targets):
        calls.append(len(targets))
        return model(inputs).pow(2).mean()

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    data = TensorDataset(torch.randn(40, 4), torch.zeros(40, dtype=torch.int64))
    inputs = data.tensors[0]
    before = model(inputs).pow(2).mean().item()
    train(model, DataLoader(data, batch_size=10), epochs=3, lr=0.05, loss_fn=shrink_logits, progress=False)
    assert calls == [10] * 12
    assert model(inputs).pow(2).mean().item() < 0.1 * before


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_schedule_against_hand_sum(schedule):
    # a constant gradient of 1 makes each Adam step move the weight by (almost exactly) the current lr
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    data = TensorDataset(torch.zeros(8, 1), torch.zeros(8, dtype=torch.int64))
    steps, lr = 8, 0.01  # 2 epochs x 4 batches
    train(model, DataLoader(data, batch_size=2), epochs=2, lr=lr, lr_schedule=schedule, progress=False,
          loss_fn=lambda m, x, y: m.weight.sum())
    if schedule == "constant":
        expected = -steps * lr
    else:
        expected = -sum(lr * (1 + math.cos(math.pi * step / steps)) / 2 for step in range(steps))
    assert model.weight.item() == pytest.approx(expected, rel=1e-5)


def test_bad_arguments_leave_the_model_untouched(digits):
    model = _fresh_model("lenet300", digits)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(UnknownNameError, match="did you mean 'adam'"):
        train(model, _small_loader(digits), epochs=1, optimizer="adma", progress=False)
    with pytest.raises(PrunekitError, match="lr must be a positive number"):
        train(model, _small_loader(digits), epochs=1, lr=0.0, progress=False)
    with pytest.raises(PrunekitError, match="epochs must be an int"):
        train(model, _small_loader(digits), epochs=1.5, progress=False)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_diverging_loss_is_reported():
    model = nn.Linear(2, 2)
    data = TensorDataset(torch.full((4, 2), float("nan")), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(PrunekitError, match="lower the learning rate"):
        train(model, DataLoader(data, batch_size=2), epochs=1, progress=False)


def test_get_baseline_leaves_global_rng_alone_and_keeps_the_old_weights(tmp_path, digits):
    torch.manual_seed(99)
    caller_state = torch.get_rng_state()
    model, _ = get_baseline("lenet300", "digits", seed=5, epochs=1, cache_dir=tmp_path, progress=False)
    assert torch.equal(torch.get_rng_state(), caller_state)
    get_baseline("lenet300", "digits", seed=5, epochs=1, cache_dir=tmp_path, progress=False)  # from the cache
    assert torch.equal(torch.get_rng_state(), caller_state)
    # what get_baseline did before: seed the global RNG, build, then train with the default recipe
    config = replace(default_train_config("lenet300", "digits"), epochs=1)
    reference = _fresh_model("lenet300", digits, seed=5)
    loader = make_loader(digits.train, config.batch_size, shuffle=True, seed=5, augment_shift=config.augment_shift)
    train(reference, loader, 1, lr=config.lr, optimizer=config.optimizer, lr_schedule=config.lr_schedule, seed=5,
          progress=False)
    assert _same_weights(model, reference)


def test_evaluate_leaves_global_rng_alone(digits):
    model = _fresh_model("lenet300", digits)
    caller_state = torch.get_rng_state()
    evaluate(model, DataLoader(digits.test, batch_size=512))  # a loader without a generator of its own
    assert torch.equal(torch.get_rng_state(), caller_state)


def test_baseline_cache_round_trip(tmp_path, monkeypatch, digits):
    model, meta = get_baseline("lenet300", "digits", seed=3, epochs=1, cache_dir=tmp_path, progress=False)
    path = tmp_path / "lenet300-digits-s3-e1.pt"
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert {"model": "lenet300", "dataset": "digits", "seed": 3, "epochs": 1}.items() <= meta.items()
    test_loader = make_loader(digits.test, 512, shuffle=False)
    assert meta["accuracy"] == evaluate(model, test_loader)
    assert 0.0 <= meta["val_accuracy"] <= 1.0 and meta["train_seconds"] > 0
    assert not model.training

    def no_training(*args, **kwargs):
        raise AssertionError("get_baseline trained although a cached baseline exists")

    monkeypatch.setattr(training, "train", no_training)
    reloaded, reloaded_meta = get_baseline("lenet300", "digits", seed=3, epochs=1, cache_dir=tmp_path,
                                           progress=False)
    assert reloaded_meta == meta
    inputs = digits.test.tensors[0]
    with torch.no_grad():
        assert torch.equal(model(inputs), reloaded(inputs))
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"state_dict", "meta"}


def test_baseline_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "env-cache"))
    assert baseline_path("lenet5", "mnist5k", 1, 4) == tmp_path / "env-cache" / "lenet5-mnist5k-s1-e4.pt"
    monkeypatch.delenv("PRUNEKIT_CACHE")
    monkeypatch.chdir(tmp_path)
    assert baseline_path("lenet5", "mnist5k", 1, 4) == Path(".prunekit-cache", "lenet5-mnist5k-s1-e4.pt")


def test_stale_cache_is_retrained(tmp_path):
    _, meta = get_baseline("lenet300", "digits", seed=0, epochs=1, cache_dir=tmp_path, progress=False)
    path = baseline_path("lenet300", "digits", 0, 1, tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["meta"]["config"]["lr"] *= 2  # as if the default recipe had changed since
    payload["state_dict"]["fc1.weight"].zero_()
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="retraining"):
        model, retrained_meta = get_baseline("lenet300", "digits", seed=0, epochs=1, cache_dir=tmp_path,
                                             progress=False)
    assert retrained_meta["config"] == meta["config"]
    assert model.fc1.weight.abs().sum() > 0
    assert torch.load(path, weights_only=True)["meta"]["config"] == meta["config"]


def test_baseline_rejects_bad_names_before_training(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown dataset 'digit'"):
        get_baseline("lenet300", "digit", seed=0, cache_dir=tmp_path)
    with pytest.raises(UnknownNameError, match="unknown model 'lenet'"):
        get_baseline("lenet", "digits", seed=0, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_atomic_save_writes_and_leaves_no_temp_files(tmp_path):
    path = atomic_save({"w": torch.arange(3)}, tmp_path / "sub" / "w.pt")
    assert path == tmp_path / "sub" / "w.pt"
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["w.pt"]
    atomic_write_text(tmp_path / "sub" / "note.txt", "hello")
    assert (tmp_path / "sub" / "note.txt").read_text() == "hello"
    assert sorted(p.name for p in path.parent.iterdir()) == ["note.txt", "w.pt"]


def test_failed_atomic_save_keeps_existing_file(tmp_path, monkeypatch):
    path = atomic_save({"w": torch.ones(2)}, tmp_path / "w.pt")

    def failing_save(obj, file):
        file.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(prunekit.io.torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]
