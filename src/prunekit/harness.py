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
from prunekit.io import atomic_write_text
from prunekit.masking import bake
from prunekit.metrics import count_macs, count_params, measure_latency
from prunekit.pruner import prune
from prunekit.training import default_train_config, evaluate, get_baseline, train


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: every method x sparsity x seed on one model and dataset."""

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
    latency_ms: float
    meta: dict[str, Any] = field(default_factory=dict)


def _measure_model(model: nn.Module, example: torch.Tensor, latency_batch: torch.Tensor) -> dict[str, Any]:
    """params / MACs / latency of `model` as deployed (masks baked into plain weights)."""
    deployed = bake(copy.deepcopy(model))
    params, params_nonzero = count_params(deployed)
    macs, macs_nonzero = count_macs(deployed, example)
    return {
        "params": params,
        "params_nonzero": params_nonzero,
        "macs": macs,
        "macs_nonzero": macs_nonzero,
        "latency_ms": measure_latency(deployed, latency_batch),
    }


def _one_run(config: CompareConfig, method: str, sparsity: float, seed: int, baseline: _Baseline, loaders, tensors) -> dict:
    train_loader, test_loader = loaders
    example, latency_batch = tensors
    model = copy.deepcopy(baseline.model)
    result = prune(
        model,
        method=method,
        sparsity=sparsity,
        granularity=config.granularity,
        scope=config.scope,
        data=train_loader,
        example_inputs=example,
        exclude=config.exclude,
        seed=seed,
    )
    train_config = default_train_config(config.model)
    lr = config.finetune_lr if config.finetune_lr is not None else train_config.lr * 0.3
    if config.finetune_epochs > 0:
        train(model, train_loader, epochs=config.finetune_epochs, lr=lr, optimizer=train_config.optimizer,
              seed=seed, progress=config.progress)
    measured = _measure_model(model, example, latency_batch)
    return {
        "model": config.model,
        "dataset": config.dataset,
        "method": method,
        "granularity": config.granularity,
        "scope": config.scope,
        "sparsity_target": sparsity,
        "seed": seed,
        "sparsity_achieved": result.sparsity_achieved,
        "params_targeted": result.params_targeted,
        "relative_sparsity": result.relative_sparsity,
        **measured,
        "params_dense": baseline.params,
        "macs_dense": baseline.macs,
        "accuracy": evaluate(model, test_loader),
        "accuracy_dense": baseline.accuracy,
        "latency_dense_ms": baseline.latency_ms,
        "batch_size": config.batch_size,
        "prune_seconds": result.seconds,
        "finetune_epochs": config.finetune_epochs,
        "finetune_lr": lr,
    }


def run_compare(config: CompareConfig, on_run: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the comparison and return one result dict per (seed, method, sparsity).

    >>> config = CompareConfig("lenet300", "digits", ("magnitude",), (0.5,), finetune_epochs=0, progress=False)
    >>> runs = run_compare(config)  # doctest: +SKIP
    """
    for sparsity in config.sparsities:
        if not 0.0 <= sparsity < 1.0:
            raise PrunekitError(f"every sparsity must lie in [0, 1); got {sparsity}")
    splits = load_dataset(config.dataset)
    train_config = default_train_config(config.model)
    test_loader = make_loader(splits.test, batch_size=256, shuffle=False)
    example = splits.test.tensors[0][:1]
    latency_batch = splits.test.tensors[0][: config.batch_size]
    runs = []
    for seed in config.seeds:
        model, meta = get_baseline(config.model, config.dataset, seed, epochs=config.train_epochs,
                                   cache_dir=config.cache_dir, progress=config.progress)
        dense = _measure_model(model, example, latency_batch)
        baseline = _Baseline(model, evaluate(model, test_loader), dense["params"], dense["macs"],
                             dense["latency_ms"], meta)
        train_loader = make_loader(splits.train, batch_size=train_config.batch_size, shuffle=True, seed=seed)
        for method in config.methods:
            for sparsity in config.sparsities:
                run = _one_run(config, method, sparsity, seed, baseline, (train_loader, test_loader),
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
