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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.allocation import allocate, as_budget
from prunekit.budget import Budget
from prunekit.data import load_dataset, make_loader
from prunekit.errors import PrunekitError
from prunekit.granularity import get_granularity
from prunekit.io import atomic_write_text
from prunekit.metrics import count_macs, count_params
from prunekit.paired_timing import paired_timing
from prunekit.hybrid import prune_hybrid
from prunekit.methods import MethodSpec
from prunekit.callbacks import PrunerCallback
from prunekit.harness_movement import MOVEMENT_METHODS, movement_pruner
from prunekit.harness_plan import plan as plan_compare
from prunekit.harness_schedules import at_init_run, lottery_runs, search_run
from prunekit.layers.init_bounds import AT_INITIALISATION
from prunekit.recovery import Distillation, PruningWatch, finetune_lr, schedule_for
from prunekit.pruner import Pruner, finalize
from prunekit.regularizers import PENALTY_METHODS
from prunekit.schedules import OneShot
from prunekit.sensitivity import DEFAULT_SPARSITIES, layer_sensitivity
from prunekit.sweep import Job, stamp
from prunekit.types import PruneResult
from prunekit.widths import WidthChoice, preferred_channel_multiple
from prunekit.training import default_train_config, evaluate, get_baseline, train


#: Granularities whose kept counts ``round_to="auto"`` rounds to a measured multiple: convolution
#: kernels compute output channels in blocks, so irregular channel counts waste time.
AUTO_ROUND_TO = ("channel",)


#: penalty methods train with their penalty for this share of the fine-tuning budget, then prune
PENALTY_SHARE = 0.5


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
    allocation: str | None = None  # per-layer amounts (prunekit.allocation); None: `scope` decides
    budget: str | None = None  # e.g. "macs=0.25": one run per method, replacing `sparsities`
    schedule: str = "oneshot"  # see prunekit.recovery.SCHEDULE_NAMES; gradual ones prune inside the budget
    distill: bool = False  # fine-tune with distillation from the dense baseline
    tolerance: float | None = None  # iterative search: raise sparsity while the val drop stays within (points)
    round_to: int | str | None = "auto"  # kept units per layer a multiple of this; "auto": see _round_to


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


#: The allocation a budget uses when the config names none: the one that matches its scope.
_SCOPE_ALLOCATIONS = {"layer": "uniform", "global": "global", "lamp": "lamp"}


def _goal(model: nn.Module, spec: MethodSpec, sparsity: float | None, config: CompareConfig, seed: int,
          data, val_loader, example: torch.Tensor, round_to: int | None) -> dict:
    """The Pruner's target: `sparsity` in `config.scope`, or with an allocation or a budget each
    layer's own amount (``allocation="sensitivity"`` measures the curves on the validation split)."""
    if config.allocation is None and config.budget is None:
        return {"sparsity": sparsity, "scope": config.scope}
    allocation = config.allocation or _SCOPE_ALLOCATIONS[config.scope]
    budget = config.budget if config.budget is not None else Budget("sparsity", sparsity)
    options = {"exclude": config.exclude, "seed": seed, "round_to": round_to}
    curves = None
    if allocation == "sensitivity":
        curves = layer_sensitivity(model, lambda pruned: evaluate(pruned, val_loader), DEFAULT_SPARSITIES,
                                   spec.method, spec.granularity, data, example, **options)
    if as_budget(budget).kind == "latency":  # timed at the latency batch size, as the runs report it
        example = next(iter(val_loader))[0][:config.batch_size]
    allocated = allocate(model, budget, allocation, method=spec.method, granularity=spec.granularity, data=data,
                         example_inputs=example, sensitivity=curves, **options)
    return {"layer_sparsity": allocated.layer_sparsity, "scope": "layer"}


def _start_pruning(model: nn.Module, spec: MethodSpec, sparsity: float, config: CompareConfig, seed: int,
                   data_loaders, example: torch.Tensor, round_to: int | None = None
                   ) -> tuple[PruneResult | None, list[Pruner]]:
    """Prune `model` as `spec` says; returns the result (None while a schedule has yet to prune)
    and the Pruners that stay with training."""
    train_loader, val_loader = data_loaders
    if spec.granularity == "hybrid":
        return prune_hybrid(model, spec.method, spec.sparsity, spec.weight_method, sparsity, example,
                            scope=config.scope, data=train_loader, exclude=config.exclude, seed=seed), []
    if spec.method in MOVEMENT_METHODS:  # scores come from fine-tuning: pruning happens inside the budget
        total_steps = config.finetune_epochs * len(train_loader)
        return None, [movement_pruner(model, spec, sparsity, config, seed, total_steps)]
    # the loss when units are removed is measured on held-out data, everything else on training data
    criterion = PENALTY_METHODS[spec.method].criterion if spec.method in PENALTY_METHODS else spec.method
    needs = get_granularity(spec.granularity).criterion(criterion).needs
    data = val_loader if needs == "removal-loss" else train_loader
    if spec.method in PENALTY_METHODS:  # train with the penalty for part of the budget, prune, recover without
        method = PENALTY_METHODS[spec.method]
        at_step = int(config.finetune_epochs * len(train_loader) * PENALTY_SHARE)
        return None, [Pruner(model, method.criterion, sparsity, granularity=spec.granularity, scope=config.scope,
                             data=data, example_inputs=example, exclude=config.exclude, seed=seed,
                             schedule=OneShot(at_step=at_step), regularizer=method.penalty(method.strength_for(spec.granularity)),
                             round_to=round_to)]
    goal = _goal(model, spec, sparsity, config, seed, data, val_loader, example, round_to)
    if config.schedule != "oneshot":  # pruning happens inside the fine-tuning budget; units masked until finalize
        schedule = schedule_for(config.schedule, config.finetune_epochs * len(train_loader))
        return None, [Pruner(model, spec.method, granularity=spec.granularity, **goal,
                             data=data, example_inputs=example, exclude=config.exclude, seed=seed,
                             round_to=round_to, schedule=schedule)]
    # one-shot: structured units go at once, so fine-tuning runs on the small model
    pruner = Pruner(model, spec.method, granularity=spec.granularity, **goal, data=data,
                    example_inputs=example, exclude=config.exclude, seed=seed, round_to=round_to, remove=True)
    return pruner.step(), [pruner]


def _round_to(config: CompareConfig, spec: MethodSpec, sparsity: float, seed: int, baseline: _Baseline,
              data_loaders, tensors, cache: dict) -> tuple[int | None, WidthChoice | None]:
    """The run's ``round_to``: the config's number where the granularity rounds unit counts; with
    ``"auto"`` and a granularity in AUTO_ROUND_TO, the multiple that times best on this model
    (prunekit.widths: copies pruned one-shot with each candidate, timed against the baseline at
    the latency batch), measured once per granularity and target and kept in `cache`."""
    if spec.granularity == "hybrid" or not get_granularity(spec.granularity).supports_round_to:
        return None, None
    if config.allocation is not None or config.budget is not None or spec.method in PENALTY_METHODS:
        # allocated amounts are not probed, nor a penalty method's (it prunes after training with the penalty)
        return (None if config.round_to == "auto" else config.round_to), None
    if config.round_to != "auto":
        return config.round_to, None
    if spec.granularity not in AUTO_ROUND_TO:
        return None, None
    example, latency_batch = tensors
    one_shot = replace(config, schedule="oneshot")

    def prune_copy(round_to: int | None) -> nn.Module:
        model = copy.deepcopy(baseline.model)
        _start_pruning(model, spec, sparsity, one_shot, seed, data_loaders, example, round_to)
        return model

    choice = preferred_channel_multiple(baseline.model, prune_copy, latency_batch, cache=cache,
                                        cache_key=(spec.granularity, spec.method, config.scope, sparsity))
    return choice.round_to, choice


def _fine_tune(model: nn.Module, config: CompareConfig, seed: int, train_loader, pruners: list[Pruner],
               teacher: nn.Module, watch: PruningWatch) -> float:
    """Fine-tune with the model's recipe, driving the live Pruners from the loop (distilling
    from `teacher` with ``config.distill``); returns the lr."""
    train_config = default_train_config(config.model, config.dataset)
    lr = config.finetune_lr if config.finetune_lr is not None else finetune_lr(config.model, train_config.lr)
    if config.finetune_epochs > 0:
        finetune_loader = make_loader(train_loader.dataset, train_config.batch_size, shuffle=True, seed=seed,
                                      augment_shift=train_config.augment_shift)
        train(model, finetune_loader, epochs=config.finetune_epochs, lr=lr, optimizer=train_config.optimizer,
              weight_decay=train_config.weight_decay, lr_schedule=train_config.lr_schedule, seed=seed,
              progress=config.progress, loss_fn=Distillation(teacher) if config.distill else None,
              callbacks=[*(PrunerCallback(pruner) for pruner in pruners), watch])
    return lr


def _one_run(config: CompareConfig, spec: MethodSpec, sparsity: float, seed: int, baseline: _Baseline,
             loaders, tensors, width_cache: dict) -> dict:
    train_loader, val_loader, test_loader = loaders
    example, latency_batch = tensors
    round_to, width_choice = _round_to(config, spec, sparsity, seed, baseline, (train_loader, val_loader), tensors,
                                       width_cache)
    model = copy.deepcopy(baseline.model)
    result, pruners = _start_pruning(model, spec, sparsity, config, seed, (train_loader, val_loader), example,
                                     round_to)
    watch = PruningWatch(pruners, lambda: evaluate(model, test_loader))
    if result is not None:  # one-shot: the accuracy right after pruning, before any recovery
        watch.measured, watch.seconds = evaluate(model, test_loader), result.seconds
    lr = _fine_tune(model, config, seed, train_loader, pruners, baseline.model, watch)
    if result is None:
        result = pruners[0].last_result
        if result is None or not pruners[0].done:
            raise PrunekitError(f"schedule '{config.schedule}' did not finish pruning within "
                                f"{config.finetune_epochs} fine-tune epoch(s); give more epochs")
    for pruner in pruners:
        pruner.finalize()
    return _record(config, spec, (sparsity, seed), baseline, model, result, tensors, test_loader, {
        "round_to": round_to,
        "round_to_probes": width_choice.to_dict()["probes"] if width_choice is not None else None,
        "prune_seconds": watch.seconds,
        "accuracy_pruned": watch.measured,
        "epochs_spent": config.finetune_epochs,
        "finetune_lr": lr,
    })


def _runs(config: CompareConfig, spec: MethodSpec, sparsity: float, seed: int, baseline: _Baseline,
          loaders, tensors, width_cache: dict) -> list[dict]:
    """The runs of one (spec, sparsity, seed): one, or a lottery ticket and its control."""
    train_loader, val_loader, test_loader = loaders

    def record(model: nn.Module, result: PruneResult, fields: dict) -> dict:
        return _record(config, spec, (sparsity, seed), baseline, model, result, tensors, test_loader, fields)

    if config.schedule == "lottery":
        return lottery_runs(config, spec, sparsity, seed, tensors[0], record)
    if spec.method in AT_INITIALISATION:
        return [at_init_run(config, spec, sparsity, seed, tensors[0], record)]
    if config.tolerance is not None:
        def fine_tune(model: nn.Module, pruner: Pruner) -> None:
            _fine_tune(model, config, seed, train_loader, [], baseline.model, PruningWatch([], lambda: None))

        return [search_run(config, spec, sparsity, seed, baseline.model, (train_loader, val_loader), fine_tune,
                           tensors[0], record)]
    return [_one_run(config, spec, sparsity, seed, baseline, loaders, tensors, width_cache)]


def _record(config: CompareConfig, spec: MethodSpec, where: tuple, baseline: _Baseline, model: nn.Module,
            result: PruneResult, tensors, test_loader, fields: dict) -> dict:
    """One run's results, measured on `model` as it would ship (masks baked); `where` is
    ``(sparsity, seed)``, `fields` what the kind of run adds."""
    sparsity, seed = where
    example, latency_batch = tensors
    finalize(model)  # as it would ship: the masks a hybrid run leaves are baked in too
    timing = paired_timing(baseline.model, model, latency_batch)  # marked noisy when the rounds disagree
    latency_dense, latency = timing.dense_ms, timing.pruned_ms
    return {
        "model": config.model,
        "dataset": config.dataset,
        "method": spec.label,
        "granularity": spec.granularity,
        "scope": config.scope,
        "allocation": (config.allocation or _SCOPE_ALLOCATIONS[config.scope]
                       if config.allocation is not None or config.budget is not None else None),
        "budget": config.budget,
        "layer_sparsity": result.layer_sparsity,
        "sparsity_target": sparsity if sparsity is not None else result.sparsity_target,
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
        **timing.fields(),  # latency_ms, latency_dense_ms, latency_spread / _noisy / _rounds, load_avg_1m
        "latency_per_mac": _latency_per_mac(latency_dense, latency, baseline.macs, model, example),
        "batch_size": config.batch_size,
        "schedule": config.schedule,
        "distill": config.distill,
        "finetune_epochs": config.finetune_epochs,
        "shrink_record": result.shrink_record.to_dict() if result.shrink_record is not None else None,
        **fields,
    }


def _latency_per_mac(latency_dense: float, latency: float, macs_dense: int, model: nn.Module,
                     example: torch.Tensor) -> float:
    """Speedup / MAC reduction: 1.0 when latency falls exactly as the MACs do."""
    macs_nonzero = count_macs(model, example)[1]
    return (latency_dense / latency) / (macs_dense / macs_nonzero) if macs_nonzero else float("nan")


def run_compare(config: CompareConfig, on_run: Callable[[dict], None] | None = None,
                skip: Callable[[Job], bool] | None = None) -> list[dict]:
    """Run the comparison and return one result dict per (seed, method, sparsity).

    Every method spec is parsed and validated before any training starts. `on_run` hears each
    run as it finishes; jobs (prunekit.sweep) for which `skip(job)` is True are left out, and
    a seed none of whose jobs run trains no baseline. Each run names its job in ``run["job"]``.

    >>> config = CompareConfig("lenet300", "digits", ("magnitude",), (0.5,), finetune_epochs=0, progress=False)
    >>> runs = run_compare(config)  # doctest: +SKIP
    """
    plan = [(job, spec) for job, spec in plan_compare(config) if skip is None or not skip(job)]
    if not plan:
        return []
    splits = load_dataset(config.dataset)
    train_config = default_train_config(config.model, config.dataset)
    test_loader = make_loader(splits.test, batch_size=256, shuffle=False)
    val_loader = make_loader(splits.val, batch_size=256, shuffle=False)
    tensors = (splits.test.tensors[0][:2], splits.test.tensors[0][: config.batch_size])  # example, latency batch
    runs, width_cache = [], {}  # round_to="auto": one measurement per granularity and target
    for seed in config.seeds:
        todo = [(job, spec) for job, spec in plan if job.seed == seed]
        if not todo:
            continue
        model, meta = get_baseline(config.model, config.dataset, seed, epochs=config.train_epochs,
                                   cache_dir=config.cache_dir, progress=config.progress)
        dense = _size(model, tensors[0])
        baseline = _Baseline(model, evaluate(model, test_loader), dense["params"], dense["macs"], meta)
        train_loader = make_loader(splits.train, batch_size=train_config.batch_size, shuffle=True, seed=seed)
        for job, spec in todo:
            job_runs = _runs(config, spec, job.sparsity, seed, baseline, (train_loader, val_loader, test_loader),
                             tensors, width_cache)
            for part, run in enumerate(job_runs, 1):
                runs.append(stamp(run, job, part, len(job_runs)))
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
