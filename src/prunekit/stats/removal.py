"""Removal loss: how much the loss on data grows when one block alone is skipped."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from prunekit.distributed import all_reduce_mean
from prunekit.graph.layers import score_layers
from prunekit.inputs import call_model, to_device
from prunekit.stats.loop import LossFn, for_each_batch, loss_or_default


def mean_loss(model: nn.Module, batches: list, loss_fn: LossFn | None = None) -> float:
    """Mean of `loss_fn` (default cross-entropy) over ``(inputs, targets)`` batches, in eval mode.

    >>> model = nn.Linear(2, 2)
    >>> _ = nn.init.zeros_(model.bias)  # zero logits on zero inputs: loss ln 2
    >>> round(mean_loss(model, [(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))]), 4)
    0.6931
    """
    loss_fn = loss_or_default(loss_fn)
    losses: list[float] = []
    with torch.no_grad():
        for_each_batch(model, batches, len(batches),
                       lambda inputs, targets: losses.append(float(loss_fn(call_model(model, inputs), targets))))
    return sum(losses) / len(losses)


def removal_costs(
    model: nn.Module, blocks: Sequence[str], data: Iterable, loss_fn: LossFn | None = None, num_batches: int = 8
) -> dict[str, float]:
    """Per block, the loss increase on up to `num_batches` batches of `data` when it alone is
    skipped (``prunekit.graph.layers.score_layers``); every block is put back afterwards. The
    first batch's inputs serve as example inputs for blocks found by running the model. Under
    ``torch.distributed`` each rank's costs are weighted by its number of batches and averaged,
    which is the cost one process would measure on all ranks' batches together.

    >>> from prunekit.zoo import build_model
    >>> model = build_model("resnet20", (1, 8, 8), 10).eval()
    >>> data = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))]
    >>> sorted(removal_costs(model, ["layer1.1", "layer3.2"], data))
    ['layer1.1', 'layer3.2']
    """
    batches = list(itertools.islice(iter(data), num_batches))  # the same batches for every block
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example_inputs = to_device(batches[0][0], device) if batches else None  # for blocks found by running
    costs = score_layers(model, list(blocks), lambda net: -mean_loss(net, batches, loss_fn), example_inputs)
    return all_reduce_mean(costs, weight=len(batches))
