"""Count multiply-accumulates (MACs) with forward hooks: dense, and those whose weight is nonzero.

One forward pass runs with hooks on every module that has a MAC rule or owns parameters; the
hooks are removed on exit, also when the forward pass raises. The pass runs in eval mode under
``torch.no_grad()`` (so batch-norm statistics do not move and dropout draws no random numbers),
except that every ``nn.TransformerEncoderLayer`` has its own ``training`` flag (not its
children's) set for that pass. That switches off PyTorch's fused fast paths, which would bypass
the hooked submodules: the layer's fused kernel (torch 2.13 also skips it when hooks are
attached, older versions do not) and ``nn.TransformerEncoder``'s conversion of padded batches
to nested tensors (eval + ``src_key_padding_mask``), which no hook prevents. Padded positions
are therefore counted like real ones. All train/eval flags are restored afterwards.

The rule for each layer type lives with its handler in :mod:`prunekit.layers`; a handler whose
rule also counts its children (attention: ``out_proj``) keeps them from being hooked twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit import inputs
from prunekit.errors import PrunekitError
from prunekit.layers import LayerHandler, handler_for
from prunekit.layers.attention import unfused_transformer_layers
from prunekit.state import preserved_modes

MacCounts = dict[str, tuple[int, int]]  # module name -> (dense MACs, nonzero MACs), whole batch

__all__ = ["count_macs", "macs_by_module"]


def is_parametrization_internal(name: str) -> bool:
    """True for names inside torch's parametrization containers (``fc.parametrizations.weight``).

    >>> is_parametrization_internal("fc.parametrizations.weight.original")
    True
    """
    return "parametrizations" in name.split(".")


def direct_parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own parameters (not its children's) as the forward pass sees them."""
    params = {name: p for name, p in module._parameters.items() if p is not None}
    if parametrize.is_parametrized(module):
        params.update({name: getattr(module, name) for name in module.parametrizations})
    return params


def _hook_for(name: str, handler: LayerHandler | None, counts: MacCounts, skipped: list[str]) -> Callable:
    def hook(module, args, kwargs, output) -> None:
        rows = handler.macs(module, args, kwargs, output) if handler is not None else None
        if rows is None:
            if not (handler is not None and handler.free) and name not in skipped:
                skipped.append(name)
            return
        for child, dense, nonzero in rows:
            full = f"{name}.{child}" if name and child else (name or child)
            old = counts.get(full, (0, 0))
            counts[full] = (old[0] + dense, old[1] + nonzero)

    return hook


@contextlib.contextmanager
def _mac_hooks(model: nn.Module) -> Iterator[tuple[MacCounts, list[str]]]:
    """Hook every module with a MAC rule or own parameters; yield (counts, skipped); unhook."""
    counts: MacCounts = {}
    skipped: list[str] = []
    handles = []
    covered: list[str] = []  # modules whose rule also counts their children (attention's out_proj)
    try:
        for name, module in model.named_modules():
            inside_covered = any(name.startswith(prefix + ".") or not prefix for prefix in covered)
            if is_parametrization_internal(name) or inside_covered:
                continue
            handler = handler_for(module)
            if handler is None and not direct_parameters(module):
                continue
            if handler is not None and handler.counts_children:
                covered.append(name)
            hook = _hook_for(name, handler, counts, skipped)
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield counts, skipped
    finally:
        for handle in handles:
            handle.remove()


def macs_by_module(
    model: nn.Module, example_inputs: Any, batch_size: int | None
) -> tuple[MacCounts, list[str]]:
    """Per-module (dense, nonzero) MACs for ONE example, and the names of uncounted modules.

    MultiheadAttention puts its in-projection and attention matmuls under its own name and its
    output projection under ``<name>.out_proj``.

    >>> macs_by_module(nn.Sequential(nn.Linear(2, 3)), torch.randn(5, 2), batch_size=None)
    ({'0': (6, 6)}, [])
    """
    batch = batch_size if batch_size is not None else inputs.batch_size(example_inputs)
    if batch < 1:
        raise PrunekitError(f"batch_size must be a positive integer, got {batch}")
    with preserved_modes(model), _mac_hooks(model) as (counts, skipped), torch.no_grad():
        model.eval()
        with unfused_transformer_layers(model):
            inputs.call_model(model, example_inputs)
    per_example = {name: (dense // batch, nz // batch) for name, (dense, nz) in counts.items()}
    return per_example, list(skipped)


def count_macs(
    model: nn.Module, example_inputs: Any, *, batch_size: int | None = None
) -> tuple[int, int]:
    """(dense, nonzero) multiply-accumulates of ONE example of `example_inputs`.

    The batch size is the first dimension of the first input tensor unless `batch_size` is given.
    Counted: Linear (over every leading dim), Conv1d/2d/3d and ConvTranspose (padding included),
    RNN/LSTM/GRU (weight matrices per time step, layer and direction; gate arithmetic ignored),
    MultiheadAttention (projections + the two attention matmuls Q Kᵀ and A V, the latter counted
    dense). Norms, embeddings, activations, pooling and elementwise ops count 0 MACs. A nonzero
    MAC is one whose weight is nonzero. Modules with other parameters count 0 and are listed in
    ``summary(...).skipped``.

    >>> model = nn.Linear(3, 2)
    >>> count_macs(model, torch.randn(4, 3))
    (6, 6)
    """
    counts, _ = macs_by_module(model, example_inputs, batch_size)
    return sum(d for d, _ in counts.values()), sum(n for _, n in counts.values())
