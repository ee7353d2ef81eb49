"""The one interface every layer type implements, and the registry that picks a layer's handler.

A *handler* says, for one kind of layer, everything prunekit needs to know about it: which of its
weights unstructured pruning may zero, whether its outputs are the units of a structured
granularity (and how wide it is), which parameter slices go with a unit when a coupled group
passes through it, where its output channels are, what it costs in multiply-accumulates, and what
to refresh after its parameters are replaced. Only ``layers/`` and ``graph/`` name layer types;
everything else asks ``handler_for(module)``.

Adding a layer type = one handler class + one entry in ``layers/__init__.py``'s registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

Ints = Sequence[int]
#: One MAC count: (child module name or "" for the layer itself, dense MACs, nonzero MACs).
MacRow = tuple[str, int, int]


class UnsupportedCoupling(Exception):
    """A group reaches a layer or pattern that cannot be shrunk consistently; skip the group."""


class ProtectedUnits(UnsupportedCoupling):
    """A group's units reach the model output or an excluded layer; skip it by design."""


@dataclass(frozen=True)
class SliceBatch:
    """Slices ``positions[i]`` of `param` along `dim` (of length `size`) go with ``roots[i]``.

    A `param` starting with ``"#"`` is a virtual key: it only forces root indices to merge.
    """

    param: str
    dim: int
    size: int
    positions: tuple[int, ...]
    roots: tuple[int, ...]


def slice_batch(param: str, dim: int, size: int, positions: Ints, roots: Ints) -> SliceBatch:
    """A ``SliceBatch`` from any integer sequences.

    >>> slice_batch("fc.weight", 0, 4, [1, 3], [0, 1]).positions
    (1, 3)
    """
    return SliceBatch(param, dim, size, tuple(positions), tuple(roots))


def prefix(name: str) -> str:
    """``"name."`` for a submodule, ``""`` for the model itself.

    >>> prefix("fc1"), prefix("")
    ('fc1.', '')
    """
    return f"{name}." if name else ""


def nnz(tensor: torch.Tensor) -> int:
    """Number of nonzero entries, as a Python int.

    >>> nnz(torch.tensor([0.0, 1.0, -2.0]))
    2
    """
    return int(torch.count_nonzero(tensor))


def dead_rows(weight: torch.Tensor) -> torch.Tensor:
    """Per output row (dim 0) of a weight: True where every entry is zero.

    >>> dead_rows(torch.tensor([[0.0, 0.0], [1.0, 0.0]])).tolist()
    [True, False]
    """
    return (weight.reshape(weight.shape[0], -1) == 0).all(dim=1)


class LayerHandler:
    """What prunekit knows about one kind of layer. Defaults describe a layer it cannot prune."""

    #: the module classes this handler covers (a parametrized module still matches its class)
    types: tuple[type, ...] = ()
    #: the structured granularity whose units are this layer's outputs, if any
    unit_granularity: str | None = None
    #: its outputs are scaled per channel by an affine weight (BatchNorm, ...): bn-scale reads it,
    #: and activations are observed after it
    scales_units: bool = False
    #: costs no multiply-accumulates (norms, embeddings), so it is not reported as uncounted
    free: bool = False
    #: its MAC rule also counts its children (they are not hooked separately)
    counts_children: bool = False

    def matches(self, module: nn.Module) -> bool:
        """Whether this handler describes `module`."""
        return isinstance(module, self.types)

    def prunable_weights(self, module: nn.Module) -> list[str]:
        """Names of the module's own weights that unstructured pruning may zero (never biases)."""
        return []

    def out_width(self, module: nn.Module) -> int:
        """How many output units the layer has (only for layers with a `unit_granularity`)."""
        raise NotImplementedError(f"{type(module).__name__} has no structural output units")

    def slices(self, name: str, module: nn.Module, is_out: bool, idxs: Ints, roots: Ints) -> list[SliceBatch]:
        """Parameter slices that go with the output (`is_out`) or input indices `idxs` of the
        layer, each tagged with the root index that caused it; raise UnsupportedCoupling when the
        layer cannot lose those indices consistently."""
        raise UnsupportedCoupling(
            f"{type(module).__name__} '{name}' shares these units and prunekit cannot remove them "
            "from it consistently yet"
        )

    def activation_dim(self, module: nn.Module) -> int | None:
        """The dimension of the layer's output (first output for tuples) that holds its units."""
        return None

    def weight_layout(self, module: nn.Module, param_name: str) -> tuple[int, int] | None:
        """``(output dim, input dim)`` of the prunable weight `param_name`: the dim whose slices
        are the layer's output rows and the dim along which it reads its input features (row
        scope and N:M patterns work along these); None when the layer has no such layout."""
        return None

    def input_width(self, module: nn.Module) -> int | None:
        """How many input features the layer reads per observation, when its input is rows of
        features its weight's input dim indexes (Linear: ``in_features``); else None."""
        return None

    def input_features(self, module: nn.Module, args: tuple) -> torch.Tensor | None:
        """The layer's input (its positional forward arguments `args`) as rows of input features,
        ``(observations, input_width)``; None when the layer has no `input_width`."""
        width = self.input_width(module)
        return args[0].reshape(-1, width) if width is not None and args else None

    def macs(self, module: nn.Module, args: tuple, kwargs: dict, output) -> list[MacRow] | None:
        """MACs of one call, whole batch; None when there is no rule for this layer."""
        return None

    def structural_sparsity(self, module: nn.Module, weights: dict[str, torch.Tensor]) -> float:
        """Fraction of output units whose weights (the prunable ones, as the forward pass sees
        them) are all zero."""
        rows = [dead_rows(weight) for weight in weights.values()]
        dead = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.bool)
        return float(dead.float().mean()) if dead.numel() else 0.0

    def refresh(self, module: nn.Module) -> None:
        """Called after the module's parameters were replaced (sliced, baked)."""
