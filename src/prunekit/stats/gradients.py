"""Weight gradients: the mean over batches of |dL/dw| for chosen parameters.

Nothing is stored on the user's modules and their ``.grad`` fields are left untouched: gradients
are taken with ``torch.autograd.grad`` in eval mode (so BatchNorm running statistics do not move).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from prunekit.distributed import all_reduce_sum
from prunekit.inputs import call_model
from prunekit.masking import original_parameter
from prunekit.stats.loop import LossFn, for_each_batch, loss_or_default


def collect_gradient_stats(
    model: nn.Module,
    data: Iterable,
    names: Sequence[str],
    loss_fn: LossFn | None = None,
    num_batches: int = 8,
) -> dict[str, torch.Tensor]:
    """Mean over up to `num_batches` batches of |dL/dw| for each parameter in `names`.

    `data` yields ``(inputs, targets)`` batches; `loss_fn(outputs, targets)` defaults to
    cross-entropy. Masked parameters get gradients of their stored values, which are zero at
    pruned positions. Under ``torch.distributed`` the sums and batch counts of every rank are
    added up first: every rank gets the mean over all ranks' batches.

    >>> model = nn.Linear(4, 3)
    >>> batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    >>> collect_gradient_stats(model, batches, ["weight"])["weight"].shape
    torch.Size([3, 4])
    """
    loss_fn = loss_or_default(loss_fn)
    tensors = [original_parameter(model, name) for name in names]
    sums = [torch.zeros_like(tensor) for tensor in tensors]

    def add_batch(inputs, targets) -> None:
        grads = torch.autograd.grad(loss_fn(call_model(model, inputs), targets), tensors, allow_unused=True)
        for total, grad in zip(sums, grads):
            if grad is not None:
                total.add_(grad.detach().abs())

    batches = for_each_batch(model, data, num_batches, add_batch)
    totals = all_reduce_sum({"sums": sums, "batches": batches})
    return {name: total / totals["batches"] for name, total in zip(names, totals["sums"])}
