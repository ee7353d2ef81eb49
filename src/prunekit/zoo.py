"""Reference models, built by registry name for any (channels, height, width) input.

Every model is a plain ``nn.Module`` made of standard layers (so torch-pruning can trace it), has
no dropout, and ends in an ``nn.Linear`` stored at the attribute ``classifier``, which pruners find
and keep by that name. Shapes that depend on the input (flatten sizes, patch sizes) are worked out
when the model is built, so each model runs on both 28x28 MNIST and 8x8 digits.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from prunekit.errors import PrunekitError, unknown_name


def _flat_size(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Number of features `features` produces for one input, from a dummy forward pass."""
    with torch.no_grad():
        return features(torch.zeros(1, *input_shape)).flatten(1).shape[1]


class LeNet300(nn.Module):
    """LeNet-300-100 (Han et al. 2015): two hidden fully connected layers of 300 and 100 units."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(channels * height * width, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.classifier = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.classifier(self.relu2(self.fc2(x)))


class LeNet5(nn.Module):
    """Caffe's LeNet-5: two 5x5 conv + max-pool stages (20, 50 filters), a 500-unit hidden layer."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels = input_shape[0]
        # two unpadded 5x5 convs + 2x2 pools need >= 16 pixels; pad smaller inputs (8x8 digits)
        padding = 0 if min(input_shape[1:]) >= 16 else 2
        self.conv1 = nn.Conv2d(channels, 20, 5, padding=padding)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=padding)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(_flat_size(self._features, input_shape), 500)
        self.relu3 = nn.ReLU()
        self.classifier = nn.Linear(500, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        return self.flatten(self.pool2(self.relu2(self.conv2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.relu3(self.fc1(self._features(x))))


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class VGGSmall(nn.Module):
    """A small VGG: three blocks of two (3x3 conv, BN, ReLU) and a 2x2 max-pool, global pooling."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = input_shape[0]
        for width in widths:
            layers += _conv_bn_relu(in_channels, width) + _conv_bn_relu(width, width)
            layers.append(nn.MaxPool2d(2))  # 28 -> 14 -> 7 -> 3 and 8 -> 4 -> 2 -> 1
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN projects the shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.shortcut(x)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        out = out + identity
        return self.relu2(out)


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20 (He et al. 2016): 3 stages x 3 basic blocks, widths 16/32/64."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, blocks_per_stage: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, in_channels = [], 16
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(self.flatten(self.pool(x)))


class RowLSTM(nn.Module):
    """Reads the image row by row (one row = one time step) and classifies the last hidden state."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden_size: int = 128) -> None:
        super().__init__()
        channels, _, width = input_shape
        self.lstm = nn.LSTM(channels * width, hidden_size, batch_first=True)
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(batch, height, channels * width)
        outputs, _ = self.lstm(rows)
        return self.classifier(outputs[:, -1])


class TransformerTiny(nn.Module):
    """A tiny vision transformer: 4x4 grid of patches, 2 encoder layers, mean-pooled tokens."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, dim: int = 64,
                 depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        channels, height, width = input_shape
        patch = max(1, min(height, width) // 4)  # 28x28 -> 7x7 patches, 8x8 -> 2x2: 16 tokens
        tokens = (height // patch) * (width // patch)
        self.patch_embed = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.flatten = nn.Flatten(2)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0,
                                       batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.flatten(self.patch_embed(x)).transpose(1, 2) + self.pos_embed
        for layer in self.layers:
            tokens = layer(tokens)
        return self.classifier(self.norm(tokens).mean(dim=1))


@dataclass(frozen=True)
class _ModelSpec:
    description: str
    build: Callable[..., nn.Module]


_MODELS = MappingProxyType({
    "lenet300": _ModelSpec("LeNet-300-100 MLP (Han et al. 2015): fc1 300, fc2 100", LeNet300),
    "lenet5": _ModelSpec("LeNet-5 CNN: conv 20, conv 50 (5x5, max-pool), fc1 500", LeNet5),
    "vgg-small": _ModelSpec("VGG-style CNN: 3 blocks of 2x(3x3 conv, BN, ReLU), widths 16/32/64", VGGSmall),
    "resnet20": _ModelSpec("CIFAR-style ResNet-20: 3x3 basic blocks, widths 16/32/64, 1x1 projections",
                           ResNet20),
    "lstm": _ModelSpec("LSTM over image rows (128 hidden units), last step classified", RowLSTM),
    "transformer-tiny": _ModelSpec("tiny ViT: 16 patches, dim 64, 2 encoder layers x 4 heads", TransformerTiny),
})


def list_models() -> dict[str, str]:
    """Registered model names with a one-line description each.

    >>> "lenet300" in list_models()
    True
    """
    return {name: spec.description for name, spec in _MODELS.items()}


def _check_shape(input_shape: tuple[int, int, int], num_classes: int) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(size, int) and size > 0 for size in shape):
        raise PrunekitError(
            "input_shape must be (channels, height, width) of positive ints, e.g. (1, 28, 28); "
            f"got {input_shape!r}"
        )
    if not isinstance(num_classes, int) or num_classes < 2:
        raise PrunekitError(f"num_classes must be an int >= 2; got {num_classes!r}")
    return shape


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **kwargs) -> nn.Module:
    """Build the zoo model `name` for inputs shaped `input_shape` (no batch dimension).

    Extra keyword arguments go to the model's constructor (e.g. ``widths`` for vgg-small).
    Initial weights come from torch's global RNG: call ``torch.manual_seed`` first to fix them.

    >>> model = build_model("lenet300", (1, 28, 28), 10)
    >>> model(torch.zeros(2, 1, 28, 28)).shape, sum(p.numel() for p in model.parameters())
    (torch.Size([2, 10]), 266610)
    """
    if name not in _MODELS:
        raise unknown_name("model", name, _MODELS)
    shape = _check_shape(input_shape, num_classes)
    build = _MODELS[name].build
    try:
        inspect.signature(build).bind(shape, num_classes, **kwargs)
    except TypeError as error:
        raise PrunekitError(
            f"model '{name}' does not accept the options {sorted(kwargs)} ({error}); "
            f"its signature is {inspect.signature(build)}"
        ) from None
    return build(shape, num_classes, **kwargs)
