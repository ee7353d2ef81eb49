"""Whether a model still has PyTorch's default initial weights: pruning-at-initialisation methods
(SNIP, SynFlow) are meant for an untrained network, and say so when handed a trained one.

``nn.Linear`` and ``nn.ConvNd`` draw their weights from U(-b, b) with b = 1 / sqrt(fan_in)
(kaiming_uniform with a = sqrt(5)); training moves some weights well past that bound.
"""

from __future__ import annotations

import math
import warnings

from torch import nn

from prunekit.masking import original_parameter

#: how far past the initial bound a weight must be before the layer counts as trained
TRAINED_FACTOR = 1.5
#: criteria meant for an untrained network (pruning at initialisation)
AT_INITIALISATION = ("snip", "synflow")


def looks_trained(model: nn.Module) -> list[str]:
    """Names of the Linear / Conv layers whose largest |weight| exceeds 1.5x PyTorch's default
    initial bound 1/sqrt(fan_in): a sign the model has been trained (empty when it looks fresh).

    >>> import torch
    >>> model = nn.Sequential(nn.Linear(100, 4), nn.Linear(4, 2))
    >>> looks_trained(model)
    []
    >>> with torch.no_grad():
    ...     _ = model[1].weight.mul_(10)
    >>> looks_trained(model)
    ['1']
    """
    trained = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        weight = original_parameter(model, f"{name}.weight" if name else "weight")
        fan_in = weight[0].numel()
        if fan_in and float(weight.detach().abs().max()) > TRAINED_FACTOR / math.sqrt(fan_in):
            trained.append(name)
    return trained


def warn_if_trained(model: nn.Module, method: str) -> None:
    """Warn (never refuse) when `method` prunes at initialisation and `model` looks trained."""
    if method not in AT_INITIALISATION:
        return
    trained = looks_trained(model)
    if trained:
        warnings.warn(f"method '{method}' prunes at initialisation, but layers {trained[:3]} hold weights far "
                      "past PyTorch's initial range, as a trained model does; its scores on a trained model "
                      "are not what the method was made for (prune the freshly built model, then train it)",
                      stacklevel=3)
