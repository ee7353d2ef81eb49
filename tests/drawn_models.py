"""Drawn tiny models for the property-based tests (tests/test_properties_*.py): hypothesis
strategies for MLPs, CNNs and residual nets, and the references the properties compare against."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import nn

from prunekit import get_masks
from prunekit.zoo import BasicBlock  # with equal channels: conv-bn-relu-conv-bn + identity, relu

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
CLASSES = 3
UNIT_GRANULARITY = {"mlp": "neuron", "cnn": "channel", "residual": "channel"}


# ---------------------------------------------------------------- drawn models


@dataclass(frozen=True)
class Spec:
    """A drawn model: `kind` "mlp" (`widths` = input, hidden..., output), "cnn" (`widths` = conv
    channels) or "residual" (`widths` = (channels,), `blocks` blocks). Built seeded by `seed`."""

    kind: str
    widths: tuple[int, ...]
    bias: bool = True
    batchnorm: tuple[bool, ...] = ()
    pool: bool = False
    blocks: int = 0
    in_channels: int = 1
    size: int = 8
    seed: int = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.widths[0],) if self.kind == "mlp" else (self.in_channels, self.size, self.size)

    def inputs(self, rows: int = 6, seed: int = 1) -> torch.Tensor:
        return torch.randn(rows, *self.input_shape, generator=torch.Generator().manual_seed(seed))

    def targets(self, rows: int = 6) -> torch.Tensor:
        return torch.arange(rows) % (self.widths[-1] if self.kind == "mlp" else CLASSES)

    def build(self) -> nn.Module:
        """The model in eval mode, with non-trivial BatchNorm affine parameters and statistics."""
        torch.manual_seed(self.seed)
        model = {"mlp": self._mlp, "cnn": self._cnn, "residual": self._residual}[self.kind]()
        return randomise_norms(model, self.seed).eval()

    def _mlp(self) -> nn.Module:
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(self.widths[:-1], self.widths[1:]):
            layers += [nn.Linear(fan_in, fan_out, bias=self.bias), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    def _cnn(self) -> nn.Module:
        layers: list[nn.Module] = []
        channels = self.in_channels
        for width, norm in zip(self.widths, self.batchnorm):
            layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=self.bias))
            layers += [nn.BatchNorm2d(width)] if norm else []
            layers.append(nn.ReLU())
            channels = width
        features = channels if self.pool else channels * self.size ** 2
        layers += [nn.AdaptiveAvgPool2d(1)] if self.pool else []
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, CLASSES))

    def _residual(self) -> nn.Module:
        (channels,) = self.widths
        return nn.Sequential(
            nn.Conv2d(self.in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Sequential(*[BasicBlock(channels, channels) for _ in range(self.blocks)]),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, CLASSES),
        )


def randomise_norms(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
                module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
    return model


seeds = st.integers(0, 2**16)
sparsities = st.integers(0, 95).map(lambda percent: percent / 100)  # spread over [0, 0.95], not piled near 0
# tiny models have few units: a coarser grid so that most draws remove some
unit_sparsities = st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95])
scopes = st.sampled_from(["layer", "global"])
weight_methods = st.sampled_from(["magnitude", "random", "normalized"])
widths = st.integers(2, 12)
pixels = st.integers(6, 10)


@st.composite
def mlps(draw, min_layers: int = 1) -> Spec:
    layers = draw(st.integers(min_layers, 3))
    return Spec("mlp", tuple(draw(st.lists(widths, min_size=layers + 1, max_size=layers + 1))),
                bias=draw(st.booleans()), seed=draw(seeds))


@st.composite
def cnns(draw) -> Spec:
    convs = draw(st.integers(1, 3))
    return Spec("cnn", tuple(draw(st.lists(st.integers(2, 8), min_size=convs, max_size=convs))),
                bias=draw(st.booleans()),
                batchnorm=tuple(draw(st.lists(st.booleans(), min_size=convs, max_size=convs))),
                pool=draw(st.booleans()), in_channels=draw(st.integers(1, 3)), size=draw(pixels),
                seed=draw(seeds))


@st.composite
def residual_nets(draw, min_blocks: int = 1) -> Spec:
    return Spec("residual", (draw(st.integers(2, 8)),), blocks=draw(st.integers(min_blocks, 3)),
                in_channels=draw(st.integers(1, 3)), size=draw(pixels), seed=draw(seeds))


any_model = st.one_of(mlps(), cnns(), residual_nets())
structured_model = st.one_of(mlps(min_layers=2), cnns(), residual_nets())


# ---------------------------------------------------------------- references


def weight_sizes(model: nn.Module) -> dict[str, int]:
    """Sizes of the Linear / Conv weights: what unstructured pruning targets (never biases)."""
    return {f"{name}.weight": module.weight.numel() for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d))}


def all_weights_nonzero(model: nn.Module) -> bool:
    return all(bool((model.get_submodule(name.rpartition(".")[0]).weight != 0).all()) for name in weight_sizes(model))


def pruned_counts(model: nn.Module) -> dict[str, int]:
    return {name: int((~keep).sum()) for name, keep in get_masks(model).items()}


def outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs)


def assert_same_outputs(a: nn.Module, b: nn.Module, inputs: torch.Tensor) -> None:
    torch.testing.assert_close(outputs(a, inputs), outputs(b, inputs), atol=1e-5, rtol=0)


def norm_statistics(model: nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
    return {name: (module.running_mean.clone(), module.running_var.clone(), module.num_batches_tracked.clone())
            for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)}


