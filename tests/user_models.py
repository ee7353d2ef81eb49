"""Models as a user would write them, outside the zoo, for checkpoint tests.

Importable as ``user_models`` because tests/ is on pytest's pythonpath, so an ``ArchSpec`` can
name them as ``"user_models:SmallNet"``.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallNet(nn.Module):
    """Conv-BN-ReLU, conv-ReLU, global average pool, linear head; `width` channels per conv.

    >>> SmallNet(width=4)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, width: int = 8, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.bn1(self.conv1(inputs)))
        hidden = torch.relu(self.conv2(hidden))
        return self.fc(self.pool(hidden).flatten(1))


class TokenNet(nn.Module):
    """Token ids -> embedding -> mean over the sequence -> two-layer MLP.

    >>> TokenNet()(torch.zeros(2, 5, dtype=torch.int64)).shape
    torch.Size([2, 3])
    """

    def __init__(self, vocab_size: int = 20, dim: int = 8, hidden: int = 16, num_classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.embed(token_ids).mean(dim=1))))


def small_net(width: int = 8) -> SmallNet:
    """A factory function (not a class) that builds a SmallNet.

    >>> small_net(4).conv1.out_channels
    4
    """
    return SmallNet(width=width)


def not_a_model(width: int = 8) -> dict:
    """A factory that forgets to build a module.

    >>> not_a_model()
    {'width': 8}
    """
    return {"width": width}
