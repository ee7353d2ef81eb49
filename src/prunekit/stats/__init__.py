"""What a criterion needs to see on data, collected in one place.

Every collector runs the model through ``loop.for_each_batch`` (eval mode, at most
`num_batches` batches, modes and RNG restored) and is registered under the kind of evidence it
gathers. A granularity says where to look (``probes``); the pipeline calls ``collect(kind, ...)``.

    kind                  probes                      returns, per probe
    weight-gradients      parameter names             mean |dL/dw| (weight-shaped)
    activations           ActivationPoint             {"mean_abs", "zero_fraction"} per channel
    activation-gradients  ActivationPoint             ... plus "grad_abs", "taylor" per channel
    head-outputs          head UnitGroups             mean norm of each head's contribution
    removal-loss          block names                 loss increase when the block is skipped
    synflow               parameter names             |dR/dw| on an all-positive copy fed ones (no data)
    input-norms           parameter names             ‖X_j‖₂ of each input feature of the layer (forward only)

Under ``torch.distributed`` (``prunekit.distributed``) every collector sums what it saw with the
other ranks before averaging, so each rank gets the statistics of all ranks' data together and
every rank must call it. `num_batches` is per rank.

Adding a kind of evidence (input norms, Hessians, ...) = one collector + one registry line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from types import MappingProxyType
from typing import Any

from torch import nn

from prunekit.errors import unknown_name
from prunekit.stats.activations import ActivationPoint, capture_outputs, collect_activation_stats
from prunekit.stats.gradients import collect_gradient_stats
from prunekit.stats.heads import collect_head_norms, head_output_norms
from prunekit.stats.input_norms import FeatureNorms, collect_input_norms
from prunekit.state import preserved_state
from prunekit.stats.loop import LossFn, for_each_batch, loss_or_default
from prunekit.stats.removal import mean_loss, removal_costs
from prunekit.stats.synflow import collect_synflow

#: kinds that read no data, only the shape of the example inputs (passed in place of `data`)
INPUT_ONLY = frozenset({"synflow"})

#: kinds no collector gathers from `data`: a Pruner sums them over the user's own training loop
#: (``prunekit.loop_state``), so they need training steps before pruning, not data
LOOP_ONLY = frozenset({"movement"})

#: ``collector(model, probes, data, loss_fn, num_batches) -> {probe key: observation}``
Collector = Callable[[nn.Module, Sequence, Iterable, "LossFn | None", int], dict[str, Any]]


def _activations(model, points, data, loss_fn, num_batches):
    return collect_activation_stats(model, data, points, loss_fn, num_batches, gradients=False)


def _activation_gradients(model, points, data, loss_fn, num_batches):
    return collect_activation_stats(model, data, points, loss_fn, num_batches, gradients=True)


def _weight_gradients(model, names, data, loss_fn, num_batches):
    return collect_gradient_stats(model, data, names, loss_fn, num_batches)


def _input_norms(model, names, data, loss_fn, num_batches):
    return collect_input_norms(model, data, names, num_batches)


def _synflow(model, names, example_inputs, loss_fn, num_batches):
    return collect_synflow(model, names, example_inputs)


COLLECTORS: MappingProxyType = MappingProxyType({
    "weight-gradients": _weight_gradients,
    "synflow": _synflow,
    "activations": _activations,
    "activation-gradients": _activation_gradients,
    "head-outputs": collect_head_norms,
    "removal-loss": removal_costs,
    "input-norms": _input_norms,
})


def collect(kind: str, model: nn.Module, probes: Sequence, data: Iterable, loss_fn: LossFn | None = None,
            num_batches: int = 8) -> dict[str, Any]:
    """Run the collector registered for `kind` (see the module docstring).

    >>> import torch
    >>> model = nn.Linear(3, 2)
    >>> data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    >>> collect("weight-gradients", model, ["weight"], data)["weight"].shape
    torch.Size([2, 3])
    """
    if kind not in COLLECTORS:
        raise unknown_name("kind of statistics", kind, COLLECTORS)
    return COLLECTORS[kind](model, probes, data, loss_fn, num_batches)


__all__ = [
    "COLLECTORS", "INPUT_ONLY", "ActivationPoint", "FeatureNorms", "LossFn", "capture_outputs", "collect",
    "collect_activation_stats", "collect_input_norms",
    "collect_gradient_stats", "collect_head_norms", "for_each_batch", "head_output_norms", "mean_loss",
    "loss_or_default", "preserved_state", "removal_costs",
]
