"""Compare pruning methods on the same model, data, baseline and fine-tuning budget.

For each seed one dense baseline is trained (or loaded from the cache); every method x sparsity
prunes a copy of that same baseline, fine-tunes it for the same number of epochs with the masks
kept, and is evaluated on the held-out test split. Results go to ``results.json``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.data import load_dataset, make_loader
from prunekit.errors import PrunekitError
from prunekit.granularity import get_granularity
from prunekit.io import atomic_write_text
from prunekit.metrics import count_macs, count_params, measure_latency
from prunekit.hybrid import prune_hybrid
from prunekit.methods import MethodSpec, parse_method_spec
from prunekit.callbacks import PrunerCallback
from prunekit.pruner import Pruner, finalize
from prunekit.types import PruneResult
from prunekit.training import default_train_config, evaluate, get_baseline, train


#: Fine-tuning uses the model's training recipe (optimizer, schedule, augmentation) with its
#: learning rate times this factor; the unaugmented loader feeds data-driven criteria.
FINETUNE_LR_FACTOR = 0.3


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: every method x sparsity x seed on one model and dataset.

    `methods` are specs ``[granularity:]method[@sparsity]`` (see prunekit.methods); a spec without
    a granularity uses `granularity`.
    """

    model: str
    dataset: str
    methods: tuple[str, ...]
    sparsities: tuple[float, ...]
    scope: str = "global"
    granularity: str = "unstructured"
    seeds: tuple[int, ...] = (0,)
    finetune_epochs: int = 2
    finetune_lr: float | None = None
    batch_size: int = 64
    exclude: tuple[str, ...] = ()
    train_epochs: int | None = None
    cache_dir: str | None = None
    progress: bool = True


@dataclass
class _Baseline:
    model: nn.Module
    accuracy: float
    params: int
    macs: int
    meta: dict[str, Any] = field(default_factory=dict)


def _size(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    params, params_nonzero = count_params(model)
    macs, macs_nonzero = count_macs(model, example)
    return {"params": params, "params_nonzero": params_nonzero, "macs": macs, "macs_nonzero": macs_nonzero}


def paired_latency(dense: nn.Module, pruned: nn.Module, inputs: torch.Tensor, rounds: int = 5,
                   repeats: int = 15) -> tuple[float, float]:
    """Latency (ms) of both models, measured alternately; returns ``(dense_ms, pruned_ms)``.

    Each round times `repeats` forward passes of one model, then of the other, and keeps the
    median; each model's result is its fastest round. Other load on the machine only ever adds
    time, so a burst that hits one model's rounds would skew a mean or median of rounds, while
    the fastest round of each is what the model costs on the quiet machine.

    >>> dense_ms, pruned_ms = paired_latency(nn.Linear(4, 4), nn.Linear(4, 2), torch.ones(8, 4), 1, 3)
    >>> dense_ms > 0 and pruned_ms > 0
    True
    """
    dense_times, pruned_times = [], []
    for _ in range(rounds):
        dense_times.append(measure_latency(dense, inputs, warmup=3, repeats=repeats))
        pruned_times.append(measure_latency(pruned, inputs, warmup=3, repeats=repeats))
    return min(dense_times), min(pruned_times)


def _start_pruning(model: nn.Module, spec: MethodSpec, sparsity: float, config: CompareConfig, seed: int,
                   data_loaders, example: torch.Tensor) -> tuple[PruneResult, list[Pruner]]:
    """Prune `model` as `spec` says; returns the result and the Pruners that stay with training."""
    train_loader, val_loader = data_loaders
    if spec.granularity == "hybrid":
        return prune_hybrid(model, spec.method, spec.sparsity, spec.weight_method, sparsity, example,
                            scope=config.scope, data=train_loader, exclude=config.exclude, seed=seed), []
    # the loss when units are removed is measured on held-out data, everything else on training data
    needs = get_granularity(spec.granularity).criterion(spec.method).needs
    data = val_loader if needs == "removal-loss" else train_loader
    # one-shot: structured units go at once, so fine-tuning runs on the small model
    pruner = Pruner(model, spec.method, sparsity, granularity=spec.granularity, scope=config.scope, data=data,
                    example_inputs=example, exclude=config.exclude, seed=seed, remove=True)
    return pruner.step(), [pruner]


def _fine_tune(model: nn.Module, config: CompareConfig, seed: int, train_loader, pruners: list[Pruner]) -> float:
    """Fine-tune with the model's recipe, driving the live Pruners from the loop; returns the lr."""
    train_config = default_train_config(config.model, config.dataset)
    lr = config.finetune_lr if config.finetune_lr is not None else train_config.lr * FINETUNE_LR_FACTOR
    if config.finetune_epochs > 0:
        finetune_loader = make_loader(train_loader.dataset, train_config.batch_size, shuffle=True, seed=seed,
                                      augment_shift=train_config.augment_shift)
        train(model, finetune_loader, epochs=config.finetune_epochs, lr=lr, optimizer=train_config.optimizer,
              weight_decay=train_config.weight_decay, lr_schedule=train_config.lr_schedule, seed=seed,
              progress=config.progress, callbacks=[PrunerCallback(pruner) for pruner in pruners])
    return lr


def _one_run(config: CompareConfig, spec: MethodSpec, sparsity: float, seed: int, baseline: _Baseline,
             loaders, tensors) -> dict:
    train_loader, val_loader, test_loader = loaders
    example, latency_batch = tensors
    model = copy.deepcopy(baseline.model)
    result, pruners = _start_pruning(model, spec, sparsity, config, seed, (train_loader, val_loader), example)
    lr = _fine_tune(model, config, seed, train_loader, pruners)
    for pruner in pruners:
        pruner.finalize()
    finalize(model)  # as it would ship: the masks a hybrid run leaves are baked in too
    latency_dense, latency = paired_latency(baseline.model, model, latency_batch)
    return {
        "model": config.model,
        "dataset": config.dataset,
        "method": spec.label,
        "granularity": spec.granularity,
        "scope": config.scope,
        "sparsity_target": sparsity,
        "unit_sparsity": spec.sparsity if spec.granularity == "hybrid" else None,
        "seed": seed,
        "sparsity_achieved": result.sparsity_achieved,
        "unit": result.unit,
        "units_targeted": result.units_targeted,
        "relative_sparsity": result.relative_sparsity,
        **_size(model, example),
        "params_dense": baseline.params,
        "macs_dense": baseline.macs,
        "accuracy": evaluate(model, test_loader),
        "accuracy_dense": baseline.accuracy,
        "latency_ms": latency,
        "latency_dense_ms": latency_dense,
        "batch_size": config.batch_size,
        "prune_seconds": result.seconds,
        "finetune_epochs": config.finetune_epochs,
        "finetune_lr": lr,
        "shrink_record": result.shrink_record.to_dict() if result.shrink_record is not None else None,
    }


def _runs_for(spec: MethodSpec, config: CompareConfig) -> tuple[float, ...]:
    if spec.granularity == "hybrid":
        return (spec.weight_sparsity,) if spec.weight_sparsity is not None else config.sparsities
    return (spec.sparsity,) if spec.sparsity is not None else config.sparsities


def run_compare(config: CompareConfig, on_run: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the comparison and return one result dict per (seed, method, sparsity).

    Every method spec is parsed and validated before any training starts.

    >>> config = CompareConfig("lenet300", "digits", ("magnitude",), (0.5,), finetune_epochs=0, progress=False)
    >>> runs = run_compare(config)  # doctest: +SKIP
    """
    for sparsity in config.sparsities:
        if not 0.0 <= sparsity < 1.0:
            raise PrunekitError(f"every sparsity must lie in [0, 1); got {sparsity}")
    specs = [parse_method_spec(text, config.granularity) for text in config.methods]
    splits = load_dataset(config.dataset)
    train_config = default_train_config(config.model, config.dataset)
    test_loader = make_loader(splits.test, batch_size=256, shuffle=False)
    val_loader = make_loader(splits.val, batch_size=256, shuffle=False)
    example = splits.test.tensors[0][:2]
    latency_batch = splits.test.tensors[0][: config.batch_size]
    runs = []
    for seed in config.seeds:
        model, meta = get_baseline(config.model, config.dataset, seed, epochs=config.train_epochs,
                                   cache_dir=config.cache_dir, progress=config.progress)
        dense = _size(model, example)
        baseline = _Baseline(model, evaluate(model, test_loader), dense["params"], dense["macs"], meta)
        train_loader = make_loader(splits.train, batch_size=train_config.batch_size, shuffle=True, seed=seed)
        for spec in specs:
            for sparsity in _runs_for(spec, config):
                run = _one_run(config, spec, sparsity, seed, baseline, (train_loader, val_loader, test_loader),
                               (example, latency_batch))
                runs.append(run)
                if on_run is not None:
                    on_run(run)
    return runs


def write_results(out_dir: str | Path, config: CompareConfig, runs: list[dict]) -> Path:
    """Write ``out_dir/results.json`` atomically: ``{"config": ..., "runs": [...]}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"config": asdict(config), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "torch": torch.__version__, "runs": runs}
    return atomic_write_text(out_dir / "results.json", json.dumps(payload, indent=2))
