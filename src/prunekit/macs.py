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

``nn.MultiheadAttention`` is counted by one rule, including its ``out_proj`` (which it applies
functionally, so the Linear's own hook would never fire); its children are not hooked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from prunekit.errors import PrunekitError

MacCounts = dict[str, tuple[int, int]]  # module name -> (dense MACs, nonzero MACs), whole batch

_ZERO_MAC_TYPES: tuple[type, ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
        nn.LayerNorm,
        nn.GroupNorm,
        getattr(nn, "RMSNorm", None),
        nn.Embedding,
        nn.EmbeddingBag,
        nn.PReLU,
    )
    if t is not None
)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


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


def weight_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The prunable weight matrices of a module: own parameters named *weight* with >= 2 dims."""
    return {n: p for n, p in direct_parameters(module).items() if "weight" in n and p.dim() >= 2}


def nnz(tensor: torch.Tensor) -> int:
    """Number of nonzero entries, as a Python int.

    >>> nnz(torch.tensor([0.0, 1.0, -2.0]))
    2
    """
    return int(torch.count_nonzero(tensor))


# --- MAC rules: (module, args, kwargs, output) -> [(child name or "", dense, nonzero)] ---------


def _linear_macs(module: nn.Linear, args, kwargs, output) -> list[tuple[str, int, int]]:
    rows = args[0].numel() // module.in_features  # every leading dim (batch, time, ...)
    weight = module.weight
    return [("", rows * weight.numel(), rows * nnz(weight))]


def _conv_macs(module: nn.Module, args, kwargs, output) -> list[tuple[str, int, int]]:
    positions = output.numel() // module.out_channels  # batch x output spatial size
    weight = module.weight  # (out, in / groups, *kernel): padding zeros are counted as MACs
    return [("", positions * weight.numel(), positions * nnz(weight))]


def _conv_transpose_macs(module: nn.Module, args, kwargs, output) -> list[tuple[str, int, int]]:
    positions = args[0].numel() // module.in_channels  # each input element meets its weights
    weight = module.weight
    return [("", positions * weight.numel(), positions * nnz(weight))]


def _rnn_macs(module: nn.RNNBase, args, kwargs, output) -> list[tuple[str, int, int]]:
    sequence = args[0] if args else kwargs["input"]
    if isinstance(sequence, PackedSequence):
        steps = sequence.data.shape[0]  # batch x time without the padding
    else:
        steps = sequence.shape[0] * (sequence.shape[1] if sequence.dim() == 3 else 1)
    # Per step, every layer and direction multiplies by weight_ih, weight_hh (and weight_hr).
    weights = weight_tensors(module).values()
    return [("", steps * sum(w.numel() for w in weights), steps * sum(nnz(w) for w in weights))]


def _mha_macs(module: nn.MultiheadAttention, args, kwargs, output) -> list[tuple[str, int, int]]:
    names = ("query", "key", "value")
    query, key, _ = (args[i] if len(args) > i else kwargs[names[i]] for i in range(3))
    if query.dim() == 3:
        time_dim = 1 if module.batch_first else 0
        batch = query.shape[1 - time_dim]
        target_len, source_len = query.shape[time_dim], key.shape[time_dim]
    else:
        batch, target_len, source_len = 1, query.shape[0], key.shape[0]
    embed = module.embed_dim
    if module._qkv_same_embed_dim:
        w = module.in_proj_weight
        q_w, k_w, v_w = w[:embed], w[embed : 2 * embed], w[2 * embed :]
    else:
        q_w, k_w, v_w = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    dense = batch * (target_len * q_w.numel() + source_len * (k_w.numel() + v_w.numel()))
    nonzero = batch * (target_len * nnz(q_w) + source_len * (nnz(k_w) + nnz(v_w)))
    attended = source_len + (module.bias_k is not None) + bool(module.add_zero_attn)
    attention = 2 * batch * target_len * attended * embed  # Q K^T and A V, counted dense
    out_w = module.out_proj.weight  # applied functionally inside MHA: its own hook never fires
    out = ("out_proj", batch * target_len * out_w.numel(), batch * target_len * nnz(out_w))
    return [("", dense + attention, nonzero + attention), out]


_MAC_RULES: tuple[tuple[tuple[type, ...], Callable], ...] = (
    ((nn.MultiheadAttention,), _mha_macs),
    ((nn.Linear,), _linear_macs),
    (_CONV, _conv_macs),
    (_CONV_TRANSPOSE, _conv_transpose_macs),
    ((nn.RNNBase,), _rnn_macs),
)


def _mac_rule(module: nn.Module) -> Callable | None:
    for types, rule in _MAC_RULES:
        if isinstance(module, types):
            return rule
    return None


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every module's own training flag on exit (``model.train(flag)`` would flatten).

    >>> model = nn.Sequential(nn.Dropout())
    >>> with preserved_modes(model):
    ...     _ = model.eval()
    >>> model[0].training
    True
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _mac_hooks(model: nn.Module) -> Iterator[tuple[MacCounts, list[str]]]:
    """Hook every module with a MAC rule or own parameters; yield (counts, skipped); unhook."""
    counts: MacCounts = {}
    skipped: list[str] = []
    handles = []

    def make_hook(name: str, module: nn.Module) -> Callable:
        rule = _mac_rule(module)

        def hook(mod, args, kwargs, output) -> None:
            if rule is None:
                if not isinstance(mod, _ZERO_MAC_TYPES) and name not in skipped:
                    skipped.append(name)
                return
            for child, dense, nonzero in rule(mod, args, kwargs, output):
                full = f"{name}.{child}" if name and child else (name or child)
                old = counts.get(full, (0, 0))
                counts[full] = (old[0] + dense, old[1] + nonzero)

        return hook

    covered: list[str] = []  # modules whose rule also counts their children (MHA.out_proj)
    try:
        for name, module in model.named_modules():
            if is_parametrization_internal(name) or any(
                name.startswith(prefix + ".") or not prefix for prefix in covered
            ):
                continue
            if _mac_rule(module) is None and not direct_parameters(module):
                continue
            if isinstance(module, nn.MultiheadAttention):
                covered.append(name)
            hook = make_hook(name, module)
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield counts, skipped
    finally:
        for handle in handles:
            handle.remove()


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    """Run `model` on a tensor, a tuple/list of positional inputs, or a dict of keyword inputs.

    >>> call_model(nn.Identity(), (torch.ones(1),))
    tensor([1.])
    """
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, PackedSequence):  # a namedtuple, yet one input
        return model(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def _batch_size(example_inputs: Any) -> int:
    if isinstance(example_inputs, PackedSequence):
        return int(example_inputs.batch_sizes[0])
    values = example_inputs.values() if isinstance(example_inputs, dict) else example_inputs
    values = [values] if isinstance(values, torch.Tensor) else list(values)
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.dim() == 0 or value.shape[0] == 0:
                break
            return int(value.shape[0])
    raise PrunekitError(
        "cannot tell the batch size of example_inputs: expected a tensor (or a tuple/list/dict "
        "whose first tensor is) with a non-empty first dimension, e.g. torch.randn(1, 3, 32, 32); "
        "or pass batch_size= explicitly"
    )


def macs_by_module(
    model: nn.Module, example_inputs: Any, batch_size: int | None
) -> tuple[MacCounts, list[str]]:
    """Per-module (dense, nonzero) MACs for ONE example, and the names of uncounted modules.

    MultiheadAttention puts its in-projection and attention matmuls under its own name and its
    output projection under ``<name>.out_proj``.

    >>> macs_by_module(nn.Sequential(nn.Linear(2, 3)), torch.randn(5, 2), batch_size=None)
    ({'0': (6, 6)}, [])
    """
    batch = batch_size if batch_size is not None else _batch_size(example_inputs)
    if batch < 1:
        raise PrunekitError(f"batch_size must be a positive integer, got {batch}")
    with preserved_modes(model), _mac_hooks(model) as (counts, skipped), torch.no_grad():
        model.eval()
        for module in model.modules():
            if isinstance(module, nn.TransformerEncoderLayer):
                module.training = True  # disables the fused fast path; children stay in eval
        call_model(model, example_inputs)
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
