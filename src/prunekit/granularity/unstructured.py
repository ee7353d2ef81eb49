"""Single weights: each entry of each prunable weight tensor is a unit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph.record import ShrinkRecord
from prunekit.graph.types import UnitGroup
from prunekit.granularity.base import Granularity, Keep
from prunekit.layers import handler_for
from prunekit.masking import get_masks, named_effective_parameters, original_parameter, split_name
from prunekit.stats.input_norms import FeatureNorms
from prunekit.targets import resolve_targets
from prunekit.types import Evidence, Signal


def weight_layout(model: nn.Module, name: str) -> tuple[int, int] | None:
    """``(output dim, input dim)`` of the weight `name`, as its layer's handler gives them.

    >>> weight_layout(nn.Sequential(nn.Linear(3, 2)), "0.weight")
    (0, 1)
    """
    module_name, param_name = split_name(name)
    module = model.get_submodule(module_name)
    handler = handler_for(module)
    return handler.weight_layout(module, param_name) if handler is not None else None


def spread_over_inputs(per_input: torch.Tensor, group: UnitGroup) -> torch.Tensor:
    """`per_input` (one value per input feature of the group's layer) repeated along the other
    dims of the weight, so it is shaped like the weight (the group's `layout` says which dim).

    >>> group = UnitGroup("w", "unstructured", 6, (), torch.zeros(0), (3, 2), layout=(1, 0))  # Conv1D (in, out)
    >>> spread_over_inputs(torch.tensor([1.0, 2.0, 3.0]), group).tolist()
    [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]
    """
    if group.layout is None or group.shape[group.layout[1]] != per_input.numel():
        raise PrunekitError(
            f"input statistics of {per_input.numel()} features do not fit weight '{group.name}' of shape "
            f"{tuple(group.shape)} (input dim: {None if group.layout is None else group.layout[1]}); its layer's "
            "handler in prunekit.layers must give the weight's layout and input width"
        )
    view = [1] * len(group.shape)
    view[group.layout[1]] = per_input.numel()
    return per_input.reshape(view).expand(group.shape)


class UnstructuredGranularity(Granularity):
    """One group per prunable weight tensor (``prunekit.layers`` says which); scores, selection
    and keep-masks are shaped like the weight. Nothing is removed physically: ``finalize``
    bakes the zeros in.

    >>> groups = UnstructuredGranularity().find(nn.Sequential(nn.Linear(3, 2)), None, ())
    >>> [(g.name, g.shape) for g in groups]
    [('0.weight', (2, 3))]
    """

    name = "unstructured"
    unit = "weight"
    default_method = "magnitude"
    provides = frozenset({"weight", "signal.grad_abs", "signal.taylor", "signal.synflow", "gate",
                          "signal.movement", "predicted", "signal.input_norm"})
    collectors = MappingProxyType({"gradients": "weight-gradients", "synflow": "synflow",
                                   "input-norms": "input-norms"})
    min_keep = 0
    normalize = False
    supports_threshold = True
    supports_round_to = False
    removable = False

    def find(self, model: nn.Module, example_inputs: object, exclude: Sequence) -> list[UnitGroup]:
        targets = resolve_targets(model, exclude)
        for name in targets:
            if not torch.isfinite(original_parameter(model, name)).all():
                raise PrunekitError(
                    f"parameter '{name}' contains NaN or Inf values; fix or retrain the model before "
                    "pruning (scores of non-finite weights are meaningless)"
                )
        shapes = {name: tuple(tensor.shape) for name, tensor in named_effective_parameters(model)}
        empty = torch.zeros(0, dtype=torch.long)
        return [UnitGroup(name, self.name, int(torch.Size(shapes[name]).numel()), (), empty, shapes[name],
                          layout=weight_layout(model, name)) for name in targets]

    def probes(self, model: nn.Module, groups: Sequence[UnitGroup], kind: str) -> list:
        return [group.name for group in groups]

    def evidence(self, model: nn.Module, groups: Sequence[UnitGroup], observed: Mapping) -> dict[str, Evidence]:
        weights = dict(named_effective_parameters(model))
        evidence = {}
        for group in groups:
            weight = weights[group.name].detach()
            signal = None
            seen = observed[group.name] if observed else None
            if isinstance(seen, Signal):  # a training loop's own evidence (movement scores)
                signal = seen
            elif isinstance(seen, FeatureNorms):  # ‖X_j‖₂ of the layer's inputs (Wanda)
                signal = Signal(input_norm=spread_over_inputs(seen.norms.to(weight.device), group))
            elif seen is not None:  # a weight-gradient collector's mean |dL/dw|
                signal = Signal(mean_abs=weight.abs(), grad_abs=seen, taylor=weight.abs() * seen)
            evidence[group.name] = Evidence(group.shape, weight=weight, signal=signal)
        return evidence

    def kept(self, model: nn.Module, groups: Sequence[UnitGroup]) -> dict[str, torch.Tensor]:
        masks = get_masks(model)
        return {group.name: masks[group.name].cpu() if group.name in masks else torch.ones(group.shape, dtype=torch.bool)
                for group in groups}

    def present(self, model: nn.Module, groups: Sequence[UnitGroup]) -> dict[str, torch.Tensor]:
        weights = dict(named_effective_parameters(model))
        return {group.name: (weights[group.name] != 0).cpu() for group in groups}

    def to_masks(self, model: nn.Module, groups: Sequence[UnitGroup], keep: Keep) -> dict[str, torch.Tensor]:
        return {group.name: keep[group.name].view(group.shape) for group in groups if group.name in keep}

    def remove(self, model: nn.Module, groups: Sequence[UnitGroup], keep: Keep, example_inputs: object,
               check: bool = True) -> ShrinkRecord:
        raise PrunekitError("single weights are not removed physically; bake the masks instead (prunekit.bake)")

    def unit_magnitude(self, model: nn.Module, groups: Sequence[UnitGroup]) -> dict[str, torch.Tensor]:
        return {group.name: original_parameter(model, group.name).detach().abs().double().cpu() for group in groups}
