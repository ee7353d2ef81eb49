"""Collect what the model does on data (gradients now; activations with structured pruning).

Nothing is stored on the user's modules and their ``.grad`` fields are left untouched: gradients
are taken with ``torch.autograd.grad`` in eval mode (so BatchNorm running statistics do not move).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from prunekit.masking import original_parameter
from prunekit.types import ParamStats

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def collect_gradient_stats(
    model: nn.Module,
    data: Iterable,
    names: Sequence[str],
    loss_fn: LossFn | None = None,
    num_batches: int = 8,
) -> dict[str, ParamStats]:
    """Mean over up to `num_batches` batches of |dL/dw| for each parameter in `names`.

    `data` yields ``(inputs, targets)`` batches; `loss_fn(outputs, targets)` defaults to
    cross-entropy. Masked parameters get gradients of their stored values, which are zero at
    pruned positions.

    >>> model = nn.Linear(4, 3)
    >>> batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    >>> collect_gradient_stats(model, batches, ["weight"])["weight"].grad_abs_mean.shape
    torch.Size([3, 4])
    """
    loss_fn = loss_fn or F.cross_entropy
    tensors = [original_parameter(model, name) for name in names]
    sums = [torch.zeros_like(tensor) for tensor in tensors]
    was_training = model.training
    model.eval()
    batches = 0
    try:
        for inputs, targets in data:
            if batches >= num_batches:
                break
            loss = loss_fn(model(inputs), targets)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for total, grad in zip(sums, grads):
                if grad is not None:
                    total.add_(grad.detach().abs())
            batches += 1
    finally:
        model.train(was_training)
    if batches == 0:
        raise ValueError("data yielded no batches; pass a loader of (inputs, targets) batches")
    return {
        name: ParamStats(grad_abs_mean=total / batches, batches=batches)
        for name, total in zip(names, sums)
    }
