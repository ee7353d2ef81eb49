"""What each stage of a recipe did: per-layer units and weights before and after, as data and as text.

``layer_states(model)`` reads, for every layer that owns prunable weights, its output units (the
neurons / channels / hidden units it physically has; None for layers without such units) and its
weights (count and nonzero, as the forward pass sees them: masked weights count as zero).
A ``StageResult`` holds that before and after one stage, with the stage's ``PruneResult`` and the
validation accuracy around it; ``to_dict()`` is plain data, stored in a checkpoint's meta under
``"stages"``, and ``format_stages`` renders it (``prunekit info``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunekit.layers import handler_for
from prunekit.layers.base import nnz
from prunekit.macs import is_parametrization_internal
from prunekit.metrics import weight_tensors
from prunekit.types import PruneResult

if TYPE_CHECKING:  # only named in annotations: this module sits low, beside metrics
    from prunekit.recipe_schema import Stage


def layer_states(model: nn.Module) -> dict[str, dict[str, int | None]]:
    """``{layer: {"units", "params", "nonzero"}}`` for every layer with prunable weights.

    >>> layer_states(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))["0"]
    {'units': 3, 'params': 12, 'nonzero': 12}
    """
    states = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            weights = weight_tensors(module) if not is_parametrization_internal(name) else {}
            if not weights:
                continue
            handler = handler_for(module)
            units = handler.out_width(module) if handler is not None and handler.unit_granularity else None
            states[name or "(model)"] = {"units": units, "params": sum(w.numel() for w in weights.values()),
                                         "nonzero": sum(nnz(w) for w in weights.values())}
    return states


def _result_dict(result: PruneResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {"method": result.method, "granularity": result.granularity, "scope": result.scope,
            "unit": result.unit, "sparsity_target": result.sparsity_target,
            "sparsity_achieved": result.sparsity_achieved, "units_targeted": result.units_targeted,
            "units_before": result.units_before, "units_after": result.units_after,
            "seconds": result.seconds}


@dataclass
class StageResult:
    """One stage of a recipe run: what it was, what its pruning reported (None for stages that
    do not prune), validation accuracy before and after (None without validation data) and
    every layer's ``layer_states`` before and after."""

    index: int
    stage: Stage
    result: PruneResult | None
    accuracy_before: float | None
    accuracy_after: float | None
    layers_before: dict[str, dict[str, int | None]] = field(default_factory=dict)
    layers_after: dict[str, dict[str, int | None]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (loads with ``torch.load(weights_only=True)`` inside a checkpoint)."""
        return {"index": self.index, "label": self.stage.label, "stage": self.stage.to_dict(),
                "result": _result_dict(self.result), "accuracy_before": self.accuracy_before,
                "accuracy_after": self.accuracy_after, "seconds": self.seconds,
                "layers_before": self.layers_before, "layers_after": self.layers_after}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _sparsity(state: dict | None) -> str:
    if not state:
        return "-"
    return f"{100 * (1 - state['nonzero'] / state['params']):.1f}%" if state["params"] else "-"


def _count(state: dict | None) -> str:
    return "-" if not state else f"{state['params']:,}"


def _units(state: dict | None) -> str:
    return "-" if not state or state["units"] is None else str(state["units"])


def _layer_lines(before: dict, after: dict) -> list[str]:
    """One row per layer the stage changed (units or nonzero weights), then how many it left alone."""
    names = list(before) + [name for name in after if name not in before]
    changed = [name for name in names if before.get(name) != after.get(name)]
    rows = [(name, f"{_units(before.get(name))} -> {_units(after.get(name))}",
             f"{_count(before.get(name))} -> {_count(after.get(name))}",
             f"{_sparsity(before.get(name))} -> {_sparsity(after.get(name))}") for name in changed]
    unchanged = len(names) - len(changed)
    if not rows:
        return [f"     no layer changed ({unchanged} layer(s) with prunable weights)"]
    header = ("layer", "units", "weights", "sparsity")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(3)]
    lines = [f"     {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}".rstrip()
             for row in [header, *rows]]
    return lines + ([f"     ({unchanged} other layer(s) unchanged)"] if unchanged else [])


def format_stages(stages: list[dict[str, Any]]) -> str:
    """The stages stored by ``StageResult.to_dict`` as text: one line per stage, then the layers
    it changed: output units, prunable weights and their sparsity, each ``before -> after``.

    >>> from prunekit.pruner import prune
    >>> from prunekit.recipe_schema import PruneStage
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> before = layer_states(model)
    >>> result = prune(model, "l1", 0.5, granularity="neuron", example_inputs=torch.zeros(2, 4))
    >>> record = StageResult(1, PruneStage("l1", "neuron", 0.5), result, 0.75, 0.5, before, layer_states(model))
    >>> print(format_stages([record.to_dict()]))
    stage 1: neuron:l1 50% (0.0 s), accuracy 75.00% -> 50.00%, 50.0% of targeted neurons gone
         layer  units   weights  sparsity
         0      4 -> 2  16 -> 8  0.0% -> 0.0%
         2      2 -> 2  8 -> 4   0.0% -> 0.0%
    """
    lines = []
    for stage in stages:
        result = stage.get("result")
        achieved = ""
        if result is not None:
            achieved = f", {100 * result['sparsity_achieved']:.1f}% of targeted {result['unit']}s gone"
        accuracy = ""
        if stage.get("accuracy_before") is not None or stage.get("accuracy_after") is not None:
            accuracy = f", accuracy {_percent(stage.get('accuracy_before'))} -> {_percent(stage.get('accuracy_after'))}"
        seconds = f"{stage.get('seconds', 0.0):.1f} s"
        lines.append(f"stage {stage['index']}: {stage['label']} ({seconds}){accuracy}{achieved}")
        lines.extend(_layer_lines(stage.get("layers_before") or {}, stage.get("layers_after") or {}))
    return "\n".join(lines)


__all__ = ["StageResult", "format_stages", "layer_states"]
