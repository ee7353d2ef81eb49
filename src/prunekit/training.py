"""Train and evaluate models, and cache trained baselines on disk.

``train`` is a plain supervised loop (cross-entropy by default, or any ``loss_fn``) that is
deterministic on CPU for a given seed and loader, and leaves the caller's global RNG state as it found
it. :class:`TrainCallback` hooks let a caller add a penalty to each batch's loss or act after each
optimiser step (e.g. drive a pruner) without patching anything. It builds its optimiser from
``model.parameters()``, so it works unchanged on models whose weights carry
``torch.nn.utils.parametrize`` keep-masks: the optimiser then updates the ``original`` tensors and
the masks keep pruned weights at zero in every forward pass.

``get_baseline`` trains a zoo model on a bundled dataset with its default recipe once, and then
reloads it from ``{cache_dir}/{model}-{dataset}-s{seed}-e{epochs}.pt``.
"""

from __future__ import annotations

import os
import reprlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from prunekit.data import DatasetSplits, list_datasets, load_dataset, make_loader
from prunekit.callbacks import TrainCallback, validated_callbacks
from prunekit.state import cuda_devices_of, preserved_modes, seeded_rng
from prunekit.gates import GATE_LR, gate_parameters
from prunekit.errors import PrunekitError, unknown_name
from prunekit.io import atomic_save
from prunekit.zoo import build_model, list_models

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

CACHE_ENV_VAR = "PRUNEKIT_CACHE"
DEFAULT_CACHE_DIR = ".prunekit-cache"
EVAL_BATCH_SIZE = 500


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe: how long, how fast, with which optimiser and batch size."""

    epochs: int
    lr: float
    optimizer: str = "adam"
    batch_size: int = 64
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # or "cosine": anneal to 0 over the run, per step
    augment_shift: int = 0  # random whole-pixel shifts of training images, see data.random_shift


# Recipes tuned on mnist5k (3,500 training images) with seed 0 on 2 CPU cores: Adam, batch 64,
# cosine decay, random shifts of up to 2 pixels (worth +2 points for lenet300, +0.5 for lenet5).
# Test accuracy / seconds per epoch measured there: lenet300 95.7% / 0.3 s, lenet5 97.8% / 1.4 s,
# vgg-small 98.0% / 3 s, resnet20 97.8% / 12 s, lstm 95.3% / 1 s, transformer-tiny 95.2% / 1.3 s.
_DEFAULT_CONFIGS = MappingProxyType({
    "lenet300": TrainConfig(epochs=40, lr=1e-3, lr_schedule="cosine", augment_shift=2),
    "lenet5": TrainConfig(epochs=20, lr=1e-3, lr_schedule="cosine", augment_shift=2),
    "vgg-small": TrainConfig(epochs=10, lr=2e-3, lr_schedule="cosine", augment_shift=2),
    "resnet20": TrainConfig(epochs=10, lr=2e-3, lr_schedule="cosine", augment_shift=2),
    "lstm": TrainConfig(epochs=20, lr=2e-3, lr_schedule="cosine", augment_shift=1),
    "transformer-tiny": TrainConfig(epochs=30, lr=2e-3, lr_schedule="cosine", augment_shift=2),
})

# per-dataset changes to the mnist5k recipes above
_DATASET_OVERRIDES = MappingProxyType({
    "mnist5k": MappingProxyType({}),
    "digits": MappingProxyType({"augment_shift": 0}),  # 2 pixels is a quarter of an 8x8 image
})

_OPTIMIZERS = ("adam", "sgd")
_LR_SCHEDULES = ("constant", "cosine")


def default_train_config(model_name: str, dataset_name: str = "mnist5k") -> TrainConfig:
    """The default training recipe for a zoo model on a bundled dataset.

    The recipes are tuned on mnist5k; on the 8x8 digits the random-shift augmentation is turned
    off (two pixels is a quarter of the image there).

    >>> default_train_config("lenet300").optimizer
    'adam'
    >>> default_train_config("lenet300", "digits").augment_shift
    0
    """
    if model_name not in _DEFAULT_CONFIGS:
        raise unknown_name("model", model_name, list_models())
    if dataset_name not in _DATASET_OVERRIDES:
        raise unknown_name("dataset", dataset_name, list_datasets())
    return replace(_DEFAULT_CONFIGS[model_name], **_DATASET_OVERRIDES[dataset_name])


def cross_entropy_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default ``loss_fn`` of :func:`train`: cross-entropy of ``model(inputs)`` against `targets`.

    >>> model = nn.Linear(4, 3)
    >>> cross_entropy_loss(model, torch.zeros(2, 4), torch.tensor([0, 2])).shape
    torch.Size([])
    """
    return F.cross_entropy(model(inputs), targets)


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The recipe's optimiser; L0 gate logits (``prunekit.gates``), when the model has them, get
    their own group at ``GATE_LR`` without weight decay."""
    gates = {id(param) for param in gate_parameters(model)}
    groups = [{"params": [param for param in model.parameters() if id(param) not in gates]}]
    if gates:
        groups.append({"params": gate_parameters(model), "lr": GATE_LR, "weight_decay": 0.0})
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _validate_train_args(model: nn.Module, loader: DataLoader, epochs: int, lr: float, optimizer: str,
                         lr_schedule: str) -> None:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise PrunekitError(f"epochs must be an int >= 0; got {epochs!r}")
    if not lr > 0:
        raise PrunekitError(f"lr must be a positive number; got {lr!r}")
    if optimizer not in _OPTIMIZERS:
        raise unknown_name("optimizer", optimizer, _OPTIMIZERS)
    if lr_schedule not in _LR_SCHEDULES:
        raise unknown_name("lr_schedule", lr_schedule, _LR_SCHEDULES)
    if next(model.parameters(), None) is None:
        raise PrunekitError("the model has no parameters to train")
    if len(loader) == 0:
        raise PrunekitError("the training loader yields no batches; pass a non-empty dataset")


@dataclass(frozen=True)
class _Loop:
    """What every batch of one `train` run uses."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    loss_fn: LossFn
    callbacks: tuple[TrainCallback, ...]
    progress: bool


def _batch_losses(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  loop: _Loop) -> tuple[torch.Tensor, torch.Tensor]:
    """The task loss of one batch and the loss to backpropagate (after every callback's ``on_loss``)."""
    task_loss = loop.loss_fn(model, inputs, targets)
    loss = task_loss
    for callback in loop.callbacks:
        loss = callback.on_loss(loss, inputs, targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise PrunekitError(f"{type(callback).__name__}.on_loss returned {reprlib.repr(loss)}; it must "
                                "return the loss as a one-element tensor, e.g. `return loss + penalty`")
    return task_loss, loss


def _check_finite(task_loss: torch.Tensor, loss: torch.Tensor, where: str) -> None:
    if torch.isfinite(loss):
        return
    if loss is task_loss or not torch.isfinite(task_loss):
        raise PrunekitError(f"training loss became {loss.item()} ({where}); lower the learning rate")
    raise PrunekitError(f"training loss became {loss.item()} after the callbacks' on_loss ({where}; the task "
                        f"loss was {task_loss.item()}); lower the penalty's weight or the learning rate")


def _train_epoch(model: nn.Module, loader: DataLoader, loop: _Loop, progress_bar_title: str,
                 steps_done: int) -> tuple[float, int]:
    """One pass over `loader`; returns the mean task loss over examples and the steps done so far."""
    device = _model_device(model)
    total_loss, total_examples = 0.0, 0
    # tqdm.auto opens (and drops) one extra iterator of `loader`, which draws a seed from its generator;
    # trained weights (and so cached baselines) depend on that stream: keep the call as it is
    batches = tqdm(loader, desc=progress_bar_title, disable=not loop.progress, leave=False)
    for inputs, targets in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        task_loss, loss = _batch_losses(model, inputs, targets, loop)
        _check_finite(task_loss, loss, progress_bar_title)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        if loop.scheduler is not None:
            loop.scheduler.step()
        steps_done += 1
        for callback in loop.callbacks:
            callback.on_step(steps_done)
        batch_loss = task_loss.item()
        total_loss += batch_loss * len(targets)
        total_examples += len(targets)
        batches.set_postfix(loss=f"{batch_loss:.4f}", refresh=False)
    return total_loss / max(total_examples, 1), steps_done


def train(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    *,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    lr_schedule: str = "constant",
    seed: int = 0,
    progress: bool = True,
    val_loader: DataLoader | None = None,
    loss_fn: LossFn | None = None,
    callbacks: Sequence[TrainCallback] = (),
) -> list[dict[str, float]]:
    """Train `model` in place and return one history entry per epoch.

    Every random draw inside (dropout, a loader's shuffling when it has no generator of its own)
    comes from torch's RNG seeded with `seed` exactly as ``torch.manual_seed(seed)`` would, inside
    ``torch.random.fork_rng``: the caller's global RNG state is left as it was. With a loader from
    :func:`prunekit.data.make_loader` two runs from the same weights, seed and fresh loader give
    bit-identical weights on CPU. `optimizer` is ``"adam"`` or ``"sgd"`` (momentum 0.9);
    `lr_schedule` ``"cosine"`` anneals the learning rate from `lr` to 0 over all steps of the run.
    `loss_fn(model, inputs, targets)` replaces the default cross-entropy (e.g. for distillation).
    Each :class:`TrainCallback` in `callbacks` may change each batch's loss (``on_loss``, applied
    in order) and hears each step (``on_step``); all are checked before any training happens.
    Each entry holds ``epoch``, ``loss`` (mean training loss of `loss_fn`, before any callback's
    ``on_loss``), ``seconds`` and, with a `val_loader`, ``val_accuracy``. The whole model trains in
    train mode; afterwards every module is back in the mode it had (a model passed in eval mode
    comes back in eval mode).

    >>> from prunekit.data import load_dataset, make_loader
    >>> from prunekit.zoo import build_model
    >>> splits = load_dataset("digits")
    >>> model = build_model("lenet300", splits.input_shape, splits.num_classes)
    >>> history = train(model, make_loader(splits.train, 64, shuffle=True), epochs=1, progress=False)
    >>> sorted(history[0])
    ['epoch', 'loss', 'seconds']
    """
    _validate_train_args(model, loader, epochs, lr, optimizer, lr_schedule)
    callbacks = validated_callbacks(callbacks)
    optimizer_instance = _make_optimizer(model, optimizer, lr, weight_decay)
    scheduler = None
    if lr_schedule == "cosine" and epochs > 0:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer_instance, T_max=epochs * len(loader))
    loop = _Loop(optimizer_instance, scheduler, cross_entropy_loss if loss_fn is None else loss_fn, callbacks,
                 progress)
    history, steps_done = [], 0
    with seeded_rng(seed, cuda_devices_of(model)), preserved_modes(model):
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            mean_loss, steps_done = _train_epoch(model, loader, loop, f"epoch {epoch}/{epochs}", steps_done)
            entry = {"epoch": epoch, "loss": mean_loss, "seconds": time.perf_counter() - start}
            if val_loader is not None:
                entry["val_accuracy"] = _accuracy(model, val_loader)  # draws inside the seeded RNG, as before
            history.append(entry)
    return history


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own previous mode afterwards."""
    with preserved_modes(model):
        model.eval()
        yield


def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of `model` over `loader`, a fraction in [0, 1].

    Runs under ``torch.no_grad()`` in eval mode and restores every submodule's previous mode and
    torch's global RNG state.

    >>> from torch.utils.data import TensorDataset
    >>> model = nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
    >>> data = TensorDataset(torch.tensor([[1., 0.], [0., 1.], [1., 0.]]), torch.tensor([0, 1, 1]))
    >>> round(evaluate(model, DataLoader(data, batch_size=2)), 4)
    0.6667
    """
    with torch.random.fork_rng(devices=[]):  # a loader without its own generator draws a seed from it
        return _accuracy(model, loader)


def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    """:func:`evaluate` without restoring torch's RNG state (inside `train`, whose RNG is forked already)."""
    device = _model_device(model)
    correct, total = 0, 0
    with _eval_mode(model), torch.no_grad():
        for inputs, targets in loader:
            predictions = model(inputs.to(device)).argmax(dim=1)
            correct += (predictions == targets.to(device)).sum().item()
            total += len(targets)
    if total == 0:
        raise PrunekitError("the evaluation loader yields no examples; pass a non-empty dataset")
    return correct / total


def default_cache_dir() -> Path:
    """Where baselines are cached: ``$PRUNEKIT_CACHE`` if set, else ``.prunekit-cache`` in the cwd.

    >>> isinstance(default_cache_dir(), Path)
    True
    """
    return Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR)


def baseline_path(model_name: str, dataset_name: str, seed: int, epochs: int,
                  cache_dir: str | Path | None = None) -> Path:
    """The cache file of one baseline: ``{cache_dir}/{model}-{dataset}-s{seed}-e{epochs}.pt``.

    >>> baseline_path("lenet300", "digits", 0, 5, "cache").as_posix()
    'cache/lenet300-digits-s0-e5.pt'
    """
    directory = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return directory / f"{model_name}-{dataset_name}-s{seed}-e{epochs}.pt"


def _load_cached(path: Path, model: nn.Module, config: TrainConfig) -> dict[str, Any] | None:
    """Load a cached baseline into `model`; None (with a warning) when it is stale or unreadable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["meta"].get("config") != asdict(config):
            raise ValueError(f"it was trained with {payload['meta'].get('config')}, now {asdict(config)}")
        model.load_state_dict(payload["state_dict"], strict=True)
    except Exception as error:  # any unreadable/stale file: retrain rather than fail
        warnings.warn(f"ignoring cached baseline '{path}' and retraining: {error}", stacklevel=3)
        return None
    return payload["meta"]


def _train_baseline(model: nn.Module, model_name: str, splits: DatasetSplits, seed: int,
                    config: TrainConfig, progress: bool) -> dict[str, Any]:
    train_loader = make_loader(splits.train, config.batch_size, shuffle=True, seed=seed,
                               augment_shift=config.augment_shift)
    start = time.perf_counter()
    train(model, train_loader, config.epochs, lr=config.lr, optimizer=config.optimizer,
          weight_decay=config.weight_decay, lr_schedule=config.lr_schedule, seed=seed, progress=progress)
    train_seconds = time.perf_counter() - start
    return {
        "model": model_name,
        "dataset": splits.name,
        "seed": seed,
        "epochs": config.epochs,
        "accuracy": evaluate(model, make_loader(splits.test, EVAL_BATCH_SIZE, shuffle=False)),
        "val_accuracy": evaluate(model, make_loader(splits.val, EVAL_BATCH_SIZE, shuffle=False)),
        "train_seconds": train_seconds,
        "config": asdict(config),
        "torch": str(torch.__version__),  # TorchVersion would not load with weights_only=True
    }


def get_baseline(
    model_name: str,
    dataset_name: str,
    seed: int,
    epochs: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """A zoo model trained on a bundled dataset with its default recipe, cached on disk.

    Weights are initialised and trained with `seed` (the caller's global RNG state is left as it
    was); `epochs` overrides the recipe's epoch count.
    The first call trains and writes ``{cache_dir}/{model}-{dataset}-s{seed}-e{epochs}.pt``
    atomically; later calls load it. A cached file made with a different recipe or an older
    architecture is retrained (with a warning). Returns ``(model in eval mode, meta)`` where meta
    holds model, dataset, seed, epochs, accuracy (test), val_accuracy, train_seconds and config.

    >>> import tempfile
    >>> model, meta = get_baseline("lenet300", "digits", seed=0, epochs=1, cache_dir=tempfile.mkdtemp(),
    ...                            progress=False)
    >>> meta["epochs"], 0.0 <= meta["accuracy"] <= 1.0
    (1, True)
    """
    config = default_train_config(model_name, dataset_name)  # validates both names before training
    splits = load_dataset(dataset_name)
    if epochs is not None:
        config = replace(config, epochs=epochs)
    if not isinstance(config.epochs, int) or isinstance(config.epochs, bool) or config.epochs < 1:
        raise PrunekitError(f"epochs must be an int >= 1 (or None for the default); got {epochs!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise PrunekitError(f"seed must be an int >= 0 (it names the cache file); got {seed!r}")
    path = baseline_path(model_name, dataset_name, seed, config.epochs, cache_dir)
    with seeded_rng(seed):  # the same initial weights as torch.manual_seed(seed); caller's RNG kept
        model = build_model(model_name, splits.input_shape, splits.num_classes)
        meta = _load_cached(path, model, config) if path.is_file() else None
        if meta is None:
            meta = _train_baseline(model, model_name, splits, seed, config, progress)
            atomic_save({"state_dict": model.state_dict(), "meta": meta}, path)
    return model.eval(), meta
