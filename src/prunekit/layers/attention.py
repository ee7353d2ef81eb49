"""Attention layers: what they cost, what unstructured pruning may zero, where their heads live.

Head layouts prunekit recognises (anything else has no heads to remove):

* ``nn.MultiheadAttention`` with packed ``in_proj_weight`` (``kdim == vdim == embed_dim``), no
  ``bias_k``/``bias_v``, no ``add_zero_attn``; batch_first or not; and prunekit's own
  ``PrunedMultiheadAttention`` (what head removal turns it into).
* Hugging Face BERT-style self-attention (transformers 5.x ``BertSelfAttention``, RoBERTa, ...):
  a module with ``query``/``key``/``value`` ``nn.Linear`` children and integer attributes
  ``num_attention_heads`` and ``attention_head_size``, whose parent has ``output.dense``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunekit.errors import PrunekitError
from prunekit.layers.base import LayerHandler, MacRow, nnz
from prunekit.layers.pruned_attention import AttentionMasks, PrunedMultiheadAttention, attention_context

HF_PROJECTIONS = ("query", "key", "value")
_PACKED = (nn.MultiheadAttention, PrunedMultiheadAttention)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _lengths(module: nn.Module, args: tuple, kwargs: dict) -> tuple[int, int, int]:
    """(batch, target length, source length) of one packed attention call."""
    names = ("query", "key", "value")
    query, key = (args[i] if len(args) > i else kwargs[names[i]] for i in range(2))
    if query.dim() != 3:  # unbatched (length, embed)
        return 1, query.shape[0], key.shape[0]
    time_dim = 1 if module.batch_first else 0
    return query.shape[1 - time_dim], query.shape[time_dim], key.shape[time_dim]


class MultiheadAttentionHandler(LayerHandler):
    """``nn.MultiheadAttention`` and ``PrunedMultiheadAttention``.

    One MAC rule covers the q/k/v projections, the two attention matmuls (Q Kᵀ and A V, counted
    dense) and ``out_proj`` (which ``nn.MultiheadAttention`` applies functionally, so a hook on
    the Linear would never fire); the children are therefore not counted separately.

    >>> MultiheadAttentionHandler().prunable_weights(nn.MultiheadAttention(8, 2))
    ['in_proj_weight']
    """

    types = _PACKED
    counts_children = True

    def prunable_weights(self, module: nn.Module) -> list[str]:
        if module.in_proj_weight is not None:
            return ["in_proj_weight"]
        return ["q_proj_weight", "k_proj_weight", "v_proj_weight"]

    def macs(self, module: nn.Module, args: tuple, kwargs: dict, output) -> list[MacRow]:
        batch, target_len, source_len = _lengths(module, args, kwargs)
        if module.in_proj_weight is not None:
            q_w, k_w, v_w = module.in_proj_weight.chunk(3)
        else:
            q_w, k_w, v_w = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
        dense = batch * (target_len * q_w.numel() + source_len * (k_w.numel() + v_w.numel()))
        nonzero = batch * (target_len * nnz(q_w) + source_len * (nnz(k_w) + nnz(v_w)))
        attended = source_len + (module.bias_k is not None) + bool(module.add_zero_attn)
        inner = q_w.shape[0]  # num_heads * head_dim: embed_dim unless heads were removed
        attention = 2 * batch * target_len * attended * inner
        out_w = module.out_proj.weight
        out = ("out_proj", batch * target_len * out_w.numel(), batch * target_len * nnz(out_w))
        return [("", dense + attention, nonzero + attention), out]


@dataclass(frozen=True)
class Attention:
    """One attention module whose heads can be removed: where its per-head parameters live."""

    name: str
    module: nn.Module
    num_heads: int
    head_dim: int
    qkv: tuple[nn.Linear, ...] | None  # HF layout: query, key, value; None for packed in_proj
    out_proj: nn.Linear
    out_proj_name: str


def looks_like_attention(module: nn.Module) -> bool:
    """Whether `module` is an attention layer of a layout this file knows (maybe unsupported).

    >>> looks_like_attention(nn.MultiheadAttention(8, 2)), looks_like_attention(nn.Linear(2, 2))
    (True, False)
    """
    if isinstance(module, _PACKED):
        return True
    return all(isinstance(getattr(module, proj, None), nn.Linear) for proj in HF_PROJECTIONS)


def _hf_attention(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> Attention | None:
    qkv = tuple(getattr(module, proj, None) for proj in HF_PROJECTIONS)
    if not all(isinstance(linear, nn.Linear) for linear in qkv):
        return None
    heads = getattr(module, "num_attention_heads", None)
    head_dim = getattr(module, "attention_head_size", None)
    parent_name = name.rpartition(".")[0]
    out_proj = getattr(getattr(modules.get(parent_name), "output", None), "dense", None)
    layout_known = isinstance(heads, int) and isinstance(head_dim, int)
    if not (layout_known and isinstance(out_proj, nn.Linear)):
        raise PrunekitError(
            f"'{name}' looks like Hugging Face attention (query/key/value layers) but prunekit "
            "cannot find its per-head layout: it needs int attributes num_attention_heads and "
            "attention_head_size and an output projection at '<parent>.output.dense' (BERT "
            f"layout). Exclude '{name}' or use a BERT-style model"
        )
    return Attention(name, module, heads, head_dim, qkv, out_proj, _join(parent_name, "output.dense"))


def _packed_attention(name: str, module: nn.Module) -> Attention:
    unsupported = [
        why
        for why, bad in [
            ("separate q/k/v projections (kdim/vdim != embed_dim)", module.in_proj_weight is None),
            ("bias_k/bias_v", module.bias_k is not None),
            ("add_zero_attn=True", module.add_zero_attn),
        ]
        if bad
    ]
    if unsupported:
        raise PrunekitError(
            f"cannot remove heads of nn.MultiheadAttention '{name}': {', '.join(unsupported)} is "
            f"not supported (only packed in_proj_weight). Exclude '{name}'"
        )
    heads, head_dim, out_proj = module.num_heads, module.head_dim, module.out_proj
    return Attention(name, module, heads, head_dim, None, out_proj, _join(name, "out_proj"))


def find_attentions(model: nn.Module, excluded: Set[str] = frozenset()) -> list[Attention]:
    """Every attention module of `model` whose heads can be removed, in module order, except the
    modules named in `excluded`; an attention layer of a known but unsupported form is an error.

    >>> [a.name for a in find_attentions(nn.TransformerEncoderLayer(16, 4))]
    ['self_attn']
    """
    modules = dict(model.named_modules())
    found = []
    for name, module in modules.items():
        if name in excluded:
            continue
        if isinstance(module, _PACKED):
            found.append(_packed_attention(name, module))
        elif (attention := _hf_attention(name, module, modules)) is not None:
            found.append(attention)
    return found


def watch_head_contexts(attention: Attention, on_context: Callable[[torch.Tensor], None]) -> RemovableHandle:
    """Call ``on_context(context)`` with the per-head context vectors (before the output
    projection; ``(..., heads * head_dim)``) each time `attention` runs; returns the hook handle.

    BERT-style and pruned attention feed the context to their output projection, so it is read
    there; ``nn.MultiheadAttention`` applies that projection functionally, so its context is
    recomputed from the call's arguments.
    """
    if attention.qkv is not None or isinstance(attention.module, PrunedMultiheadAttention):
        return attention.out_proj.register_forward_pre_hook(lambda _, args: on_context(args[0]))
    signature = inspect.signature(nn.MultiheadAttention.forward)

    def recompute(module, args, kwargs, _output) -> None:
        bound = signature.bind(module, *args, **kwargs).arguments
        masks = AttentionMasks(bound.get("attn_mask"), bound.get("key_padding_mask"), bound.get("is_causal", False))
        with torch.no_grad():
            context, _ = attention_context(module, bound["query"], bound["key"], bound["value"], masks)
        on_context(context)

    return attention.module.register_forward_hook(recompute, with_kwargs=True)


@contextmanager
def unfused_transformer_layers(model: nn.Module) -> Iterator[None]:
    """While active, every ``nn.TransformerEncoderLayer`` has its own ``training`` flag set (not its
    children's), which keeps PyTorch off its fused fast paths that bypass the submodules (the
    layer's fused kernel, and ``nn.TransformerEncoder``'s nested tensors for padded batches);
    the flags are restored on exit. Used where hooks must see every submodule run.

    >>> layer = nn.TransformerEncoderLayer(8, 2).eval()
    >>> with unfused_transformer_layers(layer):
    ...     layer.training, layer.self_attn.training
    (True, False)
    >>> layer.training
    False
    """
    layers = [module for module in model.modules() if isinstance(module, nn.TransformerEncoderLayer)]
    flags = [layer.training for layer in layers]
    try:
        for layer in layers:
            layer.training = True
        yield
    finally:
        for layer, flag in zip(layers, flags):
            layer.training = flag
