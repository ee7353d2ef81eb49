"""Measure a model: parameters, sparsity kinds, MACs per layer, latency, file size.

Everything here is pure measurement: the model's parameters, buffers, train/eval flags and hooks
are as they were afterwards, also when a forward pass raises. Works on plain models, masked
models (:mod:`prunekit.masking`), baked models (zeros in plain parameters) and physically
shrunk models alike, because it reads the parameters as the forward pass sees them. MAC
counting lives in :mod:`prunekit.macs` (see there for the rules and the transformer fast path).
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import PrunekitError
from prunekit.inputs import call_model
from prunekit.layers import handler_for, prunable_weights
from prunekit.layers.base import nnz
from prunekit.macs import MacCounts, count_macs, direct_parameters, is_parametrization_internal, macs_by_module
from prunekit.state import preserved_modes
from prunekit.masking import get_masks, named_effective_parameters, original_parameter
from prunekit.ties import tied_names

__all__ = [
    "LayerSummary",
    "ModelSummary",
    "count_macs",
    "count_params",
    "file_size_bytes",
    "format_summary",
    "latency_stats",
    "measure_latency",
    "paired_latency",
    "summary",
]


def _effective_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters under plain names with masks applied (parametrization internals left out); a
    tied tensor (an LM head sharing the embedding) counts once, under its first name."""
    ties = tied_names(model)
    with preserved_modes(model):
        model.eval()  # learned gates (prunekit.gates) counted as deployed: deterministic, not sampled
        return {
            name: tensor
            for name, tensor in named_effective_parameters(model)
            if not is_parametrization_internal(name) and ties.get(name, [name])[0] == name
        }


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) over all effective parameters: weights, biases, norm scales; no buffers.

    >>> model = nn.Linear(3, 2)
    >>> with torch.no_grad():
    ...     model.weight[0] = 0
    >>> count_params(model)
    (8, 5)
    """
    tensors = _effective_parameters(model).values()
    with torch.no_grad():
        return sum(t.numel() for t in tensors), sum(nnz(t) for t in tensors)


# --- summary -----------------------------------------------------------------------------------


@dataclass
class LayerSummary:
    """One layer that owns prunable weights; params/nonzero/sparsity are over those weights."""

    name: str
    kind: str
    params: int
    nonzero: int
    sparsity: float
    structural_sparsity: float
    relative_sparsity: float | None
    macs: int
    macs_nonzero: int


@dataclass
class ModelSummary:
    """Per-layer rows plus totals; ``sparsity`` is over prunable weights, ``params`` over all."""

    layers: list[LayerSummary]
    params: int  # all parameters, as count_params
    nonzero: int
    weight_params: int  # prunable weights: the sum over the rows
    weight_nonzero: int
    sparsity: float
    relative_sparsity: float | None
    macs: int
    macs_nonzero: int
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (rows as a list of dicts)."""
        return asdict(self)

    def __str__(self) -> str:
        return format_summary(self)


def weight_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's prunable weights (see :mod:`prunekit.layers`) as the forward pass sees them.

    >>> list(weight_tensors(nn.Linear(2, 3))), weight_tensors(nn.Embedding(4, 2))
    (['weight'], {})
    """
    own = direct_parameters(module)
    return {name: own[name] for name in prunable_weights(module) if name in own}


def _reference_parameters(
    model: nn.Module, reference: nn.Module | None, names: list[str], masked: set[str]
) -> dict[str, torch.Tensor]:
    """Effective parameters of `reference`, checked against the unmasked weights it must cover."""
    if reference is None:
        return {}
    ref_params = _effective_parameters(reference)
    own = _effective_parameters(model)
    for name in names:
        if name in masked:
            continue
        if name not in ref_params:
            raise PrunekitError(
                f"reference has no parameter '{name}'; pass the dense model this one was pruned "
                "from (same architecture and parameter names), or reference=None"
            )
        if ref_params[name].shape != own[name].shape:
            raise PrunekitError(
                f"'{name}' has shape {tuple(own[name].shape)} but the reference's has "
                f"{tuple(ref_params[name].shape)}; relative sparsity compares positions, so it "
                "needs an unshrunk model; pass reference=None for shrunk models"
            )
    return ref_params


def _pruned_magnitude(
    model: nn.Module, name: str, weight: torch.Tensor, masks: dict, ref_params: dict
) -> tuple[float, float] | None:
    """(|pruned| sum, |original| sum) of one weight tensor, or None when unknowable."""
    if name in masks:
        original = original_parameter(model, name).detach().abs()
        return float(original[~masks[name].to(original.device)].sum()), float(original.sum())
    if name in ref_params:
        ref = ref_params[name].detach().abs().to(weight.device)
        return float(ref[(weight == 0) & (ref != 0)].sum()), float(ref.sum())
    if masks:  # a masked model: weights without a mask were not pruned
        return 0.0, float(weight.detach().abs().sum())
    return None


def _kind(module: nn.Module) -> str:
    """The layer's class name; parametrize swaps in a subclass named ``Parametrized<Class>``."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls.__name__


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _layer_row(
    model: nn.Module, name: str, module: nn.Module, macs: MacCounts, masks: dict, refs: dict
) -> tuple[LayerSummary, list]:
    prefix = f"{name}." if name else ""
    weights = weight_tensors(module)
    params = sum(w.numel() for w in weights.values())
    nonzero = sum(nnz(w) for w in weights.values())
    magnitudes = [_pruned_magnitude(model, prefix + n, w, masks, refs) for n, w in weights.items()]
    relative = None
    if all(m is not None for m in magnitudes):
        relative = _ratio(sum(m[0] for m in magnitudes), sum(m[1] for m in magnitudes))
    dense_macs, nonzero_macs = macs.get(name, (0, 0))
    row = LayerSummary(
        name=name,
        kind=_kind(module),
        params=params,
        nonzero=nonzero,
        sparsity=1.0 - _ratio(nonzero, params) if params else 0.0,
        structural_sparsity=handler_for(module).structural_sparsity(module, weights),
        relative_sparsity=relative,
        macs=dense_macs,
        macs_nonzero=nonzero_macs,
    )
    return row, magnitudes


def summary(
    model: nn.Module,
    example_inputs: Any,
    reference: nn.Module | None = None,
    *,
    batch_size: int | None = None,
) -> ModelSummary:
    """Per-layer parameters, sparsity kinds and MACs of `model` for one example, plus totals.

    Rows are the modules that own prunable weights, the same weights ``prunekit.prune`` targets
    (Linear, Conv, ConvTranspose, RNN/LSTM/GRU, attention projections; see
    :mod:`prunekit.layers`; embeddings and layers prunekit does not know are not rows). Relative
    sparsity (share of the original weight magnitude that was pruned) uses the masks' original
    values on masked models, else `reference` (the dense model, same parameter names); it is
    None when neither is available. See :func:`count_macs` for what counts as a MAC.

    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> result = summary(model, torch.randn(1, 4))
    >>> result.macs, result.weight_params, [row.name for row in result.layers]
    (18, 18, ['0', '2'])
    """
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if not is_parametrization_internal(name) and weight_tensors(module)
    ]
    masks = get_masks(model)
    weight_names = [
        f"{name}.{n}" if name else n for name, module in layers for n in weight_tensors(module)
    ]
    refs = _reference_parameters(model, reference, weight_names, set(masks))
    macs, skipped = macs_by_module(model, example_inputs, batch_size)
    rows, magnitudes = [], []
    with torch.no_grad():
        for name, module in layers:
            row, row_magnitudes = _layer_row(model, name, module, macs, masks, refs)
            rows.append(row)
            magnitudes.extend(row_magnitudes)
        total, total_nonzero = count_params(model)
    weight_params = sum(row.params for row in rows)
    weight_nonzero = sum(row.nonzero for row in rows)
    relative = None
    if magnitudes and all(m is not None for m in magnitudes):
        relative = _ratio(sum(m[0] for m in magnitudes), sum(m[1] for m in magnitudes))
    return ModelSummary(
        layers=rows,
        params=total,
        nonzero=total_nonzero,
        weight_params=weight_params,
        weight_nonzero=weight_nonzero,
        sparsity=1.0 - _ratio(weight_nonzero, weight_params) if weight_params else 0.0,
        relative_sparsity=relative,
        macs=sum(d for d, _ in macs.values()),
        macs_nonzero=sum(n for _, n in macs.values()),
        skipped=skipped,
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_summary(result: ModelSummary) -> str:
    """A fixed-width table of `result` with a totals line (what ``str(result)`` returns).

    >>> table = format_summary(summary(nn.Linear(2, 2), torch.randn(1, 2)))
    >>> table.splitlines()[0].split()[:4]
    ['layer', 'type', 'params', 'nonzero']
    """
    header = ("layer", "type", "params", "nonzero", "sparsity%", "struct%", "relative%", "MACs",
              "nonzero_MACs")
    lines = [
        (row.name or "(model)", row.kind, f"{row.params:,}", f"{row.nonzero:,}",
         _percent(row.sparsity), _percent(row.structural_sparsity),
         _percent(row.relative_sparsity), f"{row.macs:,}", f"{row.macs_nonzero:,}")
        for row in result.layers
    ]
    totals = ("total", "", f"{result.weight_params:,}", f"{result.weight_nonzero:,}",
              _percent(result.sparsity), "", _percent(result.relative_sparsity),
              f"{result.macs:,}", f"{result.macs_nonzero:,}")
    widths = [max(len(line[i]) for line in [header, *lines, totals]) for i in range(len(header))]

    def render(cells: tuple[str, ...]) -> str:
        text = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(text).rstrip()

    rule = "-" * len(render(header))
    out = [render(header), rule, *map(render, lines), rule, render(totals)]
    out.append(f"all parameters: {result.params:,} ({result.nonzero:,} nonzero)")
    if result.skipped:
        out.append(f"MACs not counted (no rule) for: {', '.join(result.skipped)}")
    return "\n".join(out)


# --- latency and size --------------------------------------------------------------------------


def latency_stats(
    model: nn.Module, example_inputs: Any, warmup: int = 5, repeats: int = 20
) -> dict[str, float]:
    """Forward-pass wall time in eval mode under ``torch.inference_mode()``, after `warmup` runs.

    Returns ``median_ms``, ``p10_ms``, ``p90_ms``, ``mean_ms`` and ``repeats``. Every module's
    train/eval flag is restored afterwards. The thread count is left as the caller set it.

    >>> stats = latency_stats(nn.Linear(8, 8), torch.randn(1, 8), warmup=1, repeats=3)
    >>> stats["repeats"], stats["median_ms"] > 0
    (3, True)
    """
    if warmup < 0 or repeats < 1:
        raise PrunekitError(
            f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}"
        )
    synchronize = _synchronizer(model)
    times = []
    with preserved_modes(model), torch.inference_mode():
        model.eval()
        for _ in range(warmup):
            call_model(model, example_inputs)
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            call_model(model, example_inputs)
            synchronize()
            times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    deciles = statistics.quantiles(times, n=10, method="inclusive") if repeats > 1 else times * 9
    return {
        "median_ms": statistics.median(times),
        "p10_ms": deciles[0],
        "p90_ms": deciles[-1],
        "mean_ms": statistics.fmean(times),
        "repeats": repeats,
    }


def _synchronizer(model: nn.Module) -> Callable[[], None]:
    """Wait for queued GPU work, so timings measure the computation and not its launch."""
    devices = {p.device for p in model.parameters()}
    if any(device.type == "cuda" for device in devices):
        return torch.cuda.synchronize
    return lambda: None


def measure_latency(
    model: nn.Module, example_inputs: Any, warmup: int = 5, repeats: int = 20
) -> float:
    """Median milliseconds of one forward pass (see :func:`latency_stats`).

    >>> measure_latency(nn.Linear(8, 8), torch.randn(1, 8), warmup=1, repeats=3) > 0
    True
    """
    return latency_stats(model, example_inputs, warmup, repeats)["median_ms"]


def paired_latency(dense: nn.Module, pruned: nn.Module, inputs: Any, rounds: int = 5,
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


def file_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``, written to memory.

    Zeros take as much space as any value (no compression). A masked model also stores its
    original weights and the masks: bake it (:func:`prunekit.masking.bake`) to measure the size
    of the pruned dense model, or shrink it to measure real savings.

    >>> file_size_bytes(nn.Linear(100, 100)) > 100 * 100 * 4
    True
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes
