"""Unit activations: per-channel statistics of chosen modules' outputs (and their gradients).

Nothing is stored on the user's modules: outputs are captured by hooks that are removed on exit,
and gradients are taken with ``torch.autograd.grad`` in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.distributed import all_reduce_sum
from prunekit.inputs import call_model
from prunekit.stats.loop import LossFn, for_each_batch, loss_or_default, module_hooks


@dataclass(frozen=True)
class ActivationPoint:
    """Where a group's unit activations are observed: a module's output, along `channel_dim`.

    For modules returning a tuple (LSTM/GRU) the first element is used.
    """

    module_name: str
    channel_dim: int


@dataclass
class _Accumulator:
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: int = 0

    def add(self, key: str, per_channel_sum: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0) + per_channel_sum.double()


def _channels_last(tensor: torch.Tensor, channel_dim: int) -> torch.Tensor:
    return tensor.detach().movedim(channel_dim, -1).reshape(-1, tensor.shape[channel_dim])


@contextmanager
def capture_outputs(model: nn.Module, points: Sequence[ActivationPoint]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the outputs of the modules named in `points` while the block runs; hooks are
    removed on exit, also on error.

    >>> model = nn.Sequential(nn.Linear(3, 2))
    >>> with capture_outputs(model, [ActivationPoint("0", -1)]) as seen:
    ...     _ = model(torch.ones(1, 3))
    >>> seen["0"][0].shape
    torch.Size([1, 2])
    """
    seen: dict[str, list[torch.Tensor]] = {point.module_name: [] for point in points}

    def hook_for(name: str):
        def hook(module, args, output):
            seen[name].append(output[0] if isinstance(output, tuple) else output)
        return hook

    with module_hooks(model, {name: hook_for(name) for name in seen}):
        yield seen


def collect_activation_stats(
    model: nn.Module,
    data: Iterable,
    points: Sequence[ActivationPoint],
    loss_fn: LossFn | None = None,
    num_batches: int = 8,
    gradients: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per-channel activation statistics at each point, averaged over up to `num_batches` batches.

    Returns ``{module_name: {"mean_abs", "zero_fraction"[, "grad_abs", "taylor"]}}``, each a
    tensor with one value per channel. ``zero_fraction`` counts activations <= 0, i.e. the zeros a
    following ReLU produces (APoZ). Gradients are taken with ``torch.autograd.grad`` in eval mode.
    Under ``torch.distributed`` the sums and row counts of every rank are added up before they
    are divided, so every rank gets the statistics of all ranks' data together.

    >>> model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    >>> data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    >>> sorted(collect_activation_stats(model, data, [ActivationPoint("0", -1)], gradients=True)["0"])
    ['grad_abs', 'mean_abs', 'taylor', 'zero_fraction']
    """
    loss_fn = loss_or_default(loss_fn)
    accumulators = {point.module_name: _Accumulator() for point in points}
    dims = {point.module_name: point.channel_dim for point in points}

    def add_batch(inputs, targets) -> None:
        with torch.set_grad_enabled(gradients), capture_outputs(model, points) as seen:
            outputs = call_model(model, inputs)
        flat_outputs = [(name, out) for name, outs in seen.items() for out in outs]
        grads = [None] * len(flat_outputs)
        if gradients:
            grads = torch.autograd.grad(loss_fn(outputs, targets), [out for _, out in flat_outputs],
                                        allow_unused=True)
        for (name, out), grad in zip(flat_outputs, grads):
            values = _channels_last(out, dims[name])
            accumulator = accumulators[name]
            accumulator.rows += values.shape[0]
            accumulator.add("mean_abs", values.abs().sum(0))
            accumulator.add("zero_fraction", (values <= 0).sum(0))
            if grad is not None:
                grad_values = _channels_last(grad, dims[name])
                accumulator.add("grad_abs", grad_values.abs().sum(0))
                accumulator.add("taylor", (values * grad_values).abs().sum(0))

    for_each_batch(model, data, num_batches, add_batch)
    totals = all_reduce_sum({name: {"sums": acc.sums, "rows": acc.rows} for name, acc in accumulators.items()})
    return {
        name: {key: (total / max(seen["rows"], 1)).float() for key, total in seen["sums"].items()}
        for name, seen in totals.items()
    }
