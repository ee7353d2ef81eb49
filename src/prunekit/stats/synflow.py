"""SynFlow's data-free evidence (Tanaka et al. 2020): |dR/dw| where R is the sum of the outputs of
a copy of the network whose parameters are all made non-negative, run on an input of ones.

Each weight's score |w * dR/dw| is then the total "synaptic flow" through it; no data or labels
are needed, only the input's shape. Pruning it iteratively (``Iterative(levels=100, every=1)``,
stepped without training) avoids layer collapse, the paper's point. The copy runs in float64 and
eval mode (BatchNorm uses its running statistics); the user's model is never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.inputs import call_model
from prunekit.masking import original_parameter


def collect_synflow(model: nn.Module, names: Sequence[str], example_inputs: object) -> dict[str, torch.Tensor]:
    """|dR/dw| for each parameter in `names`, on the all-positive float64 copy of `model` fed
    ones shaped like one example of `example_inputs` (masked weights stay zero there).

    >>> model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
    ...     _ = model[1].weight.copy_(torch.tensor([[-1.0, 0.5]]))
    >>> flow = collect_synflow(model, ["0.weight", "1.weight"], torch.zeros(5, 2))
    >>> flow["0.weight"].tolist(), flow["1.weight"].tolist()
    ([[1.0, 1.0], [0.5, 0.5]], [[3.0, 7.0]])
    """
    if not isinstance(example_inputs, torch.Tensor) or not example_inputs.is_floating_point():
        raise PrunekitError("synflow feeds the model an input of ones shaped like one example: pass "
                            "example_inputs=<a float tensor batch>, e.g. a few training images")
    probe = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.abs_()
    tensors = [original_parameter(probe, name) for name in names]
    ones = torch.ones_like(example_inputs[:1], dtype=torch.float64)
    total = call_model(probe, ones).sum()
    grads = torch.autograd.grad(total, tensors, allow_unused=True)
    return {name: (grad.abs() if grad is not None else torch.zeros_like(tensor)).to(torch.float32)
            for name, grad, tensor in zip(names, grads, tensors)}
