"""Layer sensitivity: how much accuracy a model loses when one layer alone is pruned.

For every prunable group the granularity finds (a weight tensor, a layer's neurons or channels,
...), :func:`layer_sensitivity` prunes that group *alone* to each sparsity, without
fine-tuning, and measures the caller's metric (``evaluate_fn(model) -> float``, higher =
better; use held-out validation data, not the test split). Units are scored once on the model as
it is, exactly as ``prunekit.prune`` scores them, and each point prunes a copy: the model is left
bit-identical. The curves feed the ``"sensitivity"`` allocation (:mod:`prunekit.allocation`),
and :func:`write_sensitivity` saves them as ``sensitivity.json`` and ``sensitivity.png``.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from prunekit.errors import PrunekitError
from prunekit.io import atomic_write_bytes, atomic_write_text
from prunekit.masking import copy_model
from prunekit.request import PruneOptions
from prunekit.unit_plan import UnitPlan, plan_units

FORMAT = "prunekit-sensitivity"
DEFAULT_SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class LayerCurve:
    """One group's measurements: `sparsity[i]` (share of its units removed, as achieved) gave
    `metric[i]`; the first point is sparsity 0 (the dense model)."""

    num_units: int
    sparsity: tuple[float, ...]
    metric: tuple[float, ...]

    def drop_at(self, sparsity: np.ndarray | float, dense: float) -> np.ndarray:
        """Predicted metric drop (dense - pruned) at `sparsity`, linear between measured points;
        where two points share a sparsity the worse one counts.

        >>> LayerCurve(4, (0.0, 0.5, 1.0), (0.9, 0.8, 0.1)).drop_at(0.25, 0.9).round(3).item()
        0.05
        """
        worst: dict[float, float] = {}
        for point, value in zip(self.sparsity, self.metric):
            worst[point] = min(value, worst.get(point, value))
        points = sorted(worst)
        return dense - np.interp(sparsity, points, [worst[point] for point in points])


@dataclass(frozen=True)
class SensitivityResult:
    """Per-group metric-vs-sparsity curves of one model (see the module docstring)."""

    granularity: str
    method: str
    sparsities: tuple[float, ...]
    dense_metric: float
    layers: dict[str, LayerCurve]
    unit: str = "weight"
    metric_name: str = "accuracy"
    split: str = "validation"
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what ``sensitivity.json`` holds)."""
        return {"format": FORMAT, "version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SensitivityResult:
        """The result :meth:`to_dict` wrote (an error when `data` is something else).

        >>> curve = LayerCurve(2, (0.0, 0.5), (0.9, 0.7))
        >>> result = SensitivityResult("neuron", "l1", (0.0, 0.5), 0.9, {"fc1": curve}, unit="neuron")
        >>> SensitivityResult.from_dict(result.to_dict()) == result
        True
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PrunekitError(f"not a sensitivity result: expected the JSON that prunekit writes (format '{FORMAT}')")
        fields = {key: value for key, value in data.items() if key not in ("format", "version")}
        layers = {name: LayerCurve(int(curve["num_units"]), tuple(curve["sparsity"]), tuple(curve["metric"]))
                  for name, curve in fields.pop("layers").items()}
        return cls(**{**fields, "sparsities": tuple(fields["sparsities"]), "layers": layers})


def _check_sparsities(sparsities: Iterable[float]) -> tuple[float, ...]:
    """Sorted distinct sparsities in [0, 1) starting at 0 (the dense point is always measured)."""
    values = list(sparsities) if isinstance(sparsities, Iterable) else [sparsities]
    bad = [value for value in values
           if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0)]
    if bad or not values:
        raise PrunekitError(f"sparsities must be a non-empty list of numbers in [0, 1), e.g. [0.3, 0.6, 0.9]; "
                            f"got {sparsities!r}")
    return tuple(sorted({0.0, *map(float, values)}))


def _score(evaluate_fn: Callable[[nn.Module], float], model: nn.Module) -> float:
    value = evaluate_fn(model)
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
        raise PrunekitError(f"evaluate_fn must return a finite number (e.g. accuracy), got {value!r}")
    return float(value)


def _curve(plan: UnitPlan, model: nn.Module, index: int, sparsities: Sequence[float],
           measure: Callable[[nn.Module], float], dense: float) -> LayerCurve:
    """Group `index` pruned alone to each sparsity (a point that removes nothing new is `dense`)."""
    group = plan.groups[index]
    before = plan.removed_already()[group.name]
    points, values = [], []
    for sparsity in sparsities:
        removed = plan.removed(plan.keep({group.name: round(sparsity * group.num_units)}))[group.name]
        points.append(removed / group.num_units)
        values.append(dense if removed == before else measure(plan.pruned_copy(model, {group.name: removed})))
    return LayerCurve(group.num_units, tuple(points), tuple(values))


def layer_sensitivity(model: nn.Module, evaluate_fn: Callable[[nn.Module], float], sparsities: Iterable[float],
                      method: str | None = None, granularity: str = "unstructured", data: Iterable | None = None,
                      example_inputs: object = None, *, split: str = "validation", progress: bool = False,
                      **options) -> SensitivityResult:
    """Prune each group of `granularity` alone to each of `sparsities` (0 is always added) and
    record ``evaluate_fn(pruned copy)``; `model` is left bit-identical.

    `method`, `data`, `example_inputs` and the keyword `options` (``exclude``, ``seed``,
    ``loss_fn``, ``num_batches``, ``round_to``) mean what they mean for ``prunekit.prune``;
    `split` names the data `evaluate_fn` uses, for the record. A point that removes no unit
    (sparsity 0, or a layer too small to lose one) is the dense value, not measured again.

    >>> import torch
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> inputs = torch.randn(16, 4)
    >>> agreement = lambda m: float((m(inputs).argmax(1) == model(inputs).argmax(1)).float().mean())
    >>> result = layer_sensitivity(model, agreement, [0.5])
    >>> list(result.layers), result.layers["0.weight"].metric[0]
    (['0.weight', '2.weight'], 1.0)
    """
    if not callable(evaluate_fn):
        raise PrunekitError(f"evaluate_fn must be a function model -> metric (higher = better), got {evaluate_fn!r}")
    sparsities = _check_sparsities(sparsities)
    started = time.perf_counter()
    plan = plan_units(model, method, granularity, data, example_inputs, PruneOptions.from_kwargs(options))
    dense = _score(evaluate_fn, copy_model(model))  # a copy: whatever evaluate_fn does stays off the model
    bar = tqdm(total=len(plan.groups) * (len(sparsities) - 1), desc="sensitivity", disable=not progress, leave=False)

    def measure(pruned: nn.Module) -> float:
        bar.update()
        return _score(evaluate_fn, pruned)

    with bar:
        layers = {group.name: _curve(plan, model, index, sparsities, measure, dense)
                  for index, group in enumerate(plan.groups)}
    return SensitivityResult(plan.granularity.name, plan.step.request.method, sparsities, dense, layers,
                             unit=plan.granularity.unit, split=split, seconds=time.perf_counter() - started)


def plot_sensitivity(result: SensitivityResult) -> bytes:
    """A PNG of the curves: one line per layer, metric vs sparsity, the dense value dashed."""
    # the object-oriented API with the Agg canvas: no pyplot, so the caller's backend stays as it is
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, curve in result.layers.items():
        axes.plot([100 * point for point in curve.sparsity], [100 * value for value in curve.metric],
                  marker="o", markersize=3, label=f"{name} ({curve.num_units:,})")
    axes.axhline(100 * result.dense_metric, linestyle="--", color="black", label=f"dense ({100 * result.dense_metric:.2f})")
    axes.set_xlabel(f"sparsity of the one pruned layer (% of its {result.unit}s removed)")
    axes.set_ylabel(f"{result.metric_name} on the {result.split} split (%)")
    title = " ".join(str(result.meta[key]) for key in ("model", "dataset") if key in result.meta)
    axes.set_title(f"{title} layer sensitivity: {result.granularity}, {result.method}, no fine-tuning".strip())
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small", ncol=1 + len(result.layers) // 12, loc="lower left")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_sensitivity(result: SensitivityResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/sensitivity.json`` and ``out_dir/sensitivity.png`` atomically; returns both paths.

    >>> import tempfile
    >>> result = SensitivityResult("neuron", "l1", (0.0, 0.5), 0.9, {"fc1": LayerCurve(2, (0.0, 0.5), (0.9, 0.7))})
    >>> [path.name for path in write_sensitivity(result, tempfile.mkdtemp())]
    ['sensitivity.json', 'sensitivity.png']
    """
    out_dir = Path(out_dir)
    png = plot_sensitivity(result)  # rendered first: a failure leaves neither file half-updated
    json_path = atomic_write_text(out_dir / "sensitivity.json", json.dumps(result.to_dict(), indent=2))
    return json_path, atomic_write_bytes(out_dir / "sensitivity.png", png)


def load_sensitivity(path: str | Path) -> SensitivityResult:
    """The result in a ``sensitivity.json`` (or in the folder holding one)."""
    path = Path(path)
    path = path / "sensitivity.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PrunekitError(f"cannot read sensitivity results from '{path}': {error}; run "
                            "'prunekit sensitivity' to make them") from None
    return SensitivityResult.from_dict(data)


__all__ = ["DEFAULT_SPARSITIES", "LayerCurve", "SensitivityResult", "layer_sensitivity", "load_sensitivity",
           "plot_sensitivity", "write_sensitivity"]
