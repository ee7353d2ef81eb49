"""Attention layers: what they cost, what unstructured pruning may zero, where their heads live.

Head layouts prunekit recognises (anything else has no heads to remove):

* ``nn.MultiheadAttention`` with packed ``in_proj_weight`` (``kdim == vdim == embed_dim``), no
  ``bias_k``/``bias_v``, no ``add_zero_attn``; batch_first or not; and prunekit's own
  ``PrunedMultiheadAttention`` (what head removal turns it into).
* Hugging Face attention (transformers 5.x): BERT, ALBERT, DistilBERT, ViT / Swin / Llama-style
  ``q_proj``..``o_proj`` (grouped-query attention included), T5 and GPT-2; see ``hf_attention.py``.

``find_attention_groups`` checks them and says why one cannot lose heads;
``attention_projections`` only names their projections (for code that must keep away from them).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Set
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunekit.errors import PrunekitError
from prunekit.layers.attention_layout import Attention, AttentionGroup, HeadSlice, unit_index
from prunekit.layers.base import LayerHandler, MacRow, nnz
from prunekit.layers.hf_attention import chain_key, hf_attention, hf_layout, hf_projections
from prunekit.layers.pruned_attention import AttentionMasks, PrunedMultiheadAttention, attention_context

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

    def weight_layout(self, module: nn.Module, param_name: str) -> tuple[int, int]:
        return (0, 1)  # in_proj_weight (3 * embed, embed), q/k/v_proj_weight (embed, kdim / vdim)

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


def looks_like_attention(module: nn.Module) -> bool:
    """Whether `module` is an attention layer of a layout this file knows (maybe unsupported).

    >>> looks_like_attention(nn.MultiheadAttention(8, 2)), looks_like_attention(nn.Linear(2, 2))
    (True, False)
    """
    return isinstance(module, _PACKED) or hf_layout(module) is not None


def _layout(module: nn.Module) -> str | None:
    return "packed" if isinstance(module, _PACKED) else hf_layout(module)


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
    heads, head_dim = module.num_heads, module.head_dim
    units = unit_index(heads * head_dim, head_dim)
    names = ["in_proj_weight"] + ["in_proj_bias"] * (module.in_proj_bias is not None)
    slices = [HeadSlice(_join(name, param), 0, units.repeat(3)) for param in names]
    slices.append(HeadSlice(_join(name, "out_proj.weight"), 1, units))
    return Attention(name, module, "packed", heads, head_dim, module.out_proj, _join(name, "out_proj"), tuple(slices))


def _candidates(modules: dict[str, nn.Module]) -> dict[str, list[tuple[str, nn.Module, str]]]:
    """Recognised attention modules (not yet checked), by the head group they belong to."""
    chains: dict[str, list[tuple[str, nn.Module, str]]] = {}
    for name, module in modules.items():
        layout = _layout(module)
        if layout is not None:
            chains.setdefault(chain_key(name, layout), []).append((name, module, layout))
    return chains


def _is_excluded(name: str, module: nn.Module, layout: str, modules: dict, excluded: Set[str]) -> bool:
    if name in excluded:
        return True
    projections = hf_projections(name, module, layout, modules) if layout != "packed" else {}
    return any(proj_name in excluded for proj_name in projections)


def _build(name: str, module: nn.Module, layout: str, modules: dict) -> Attention:
    return _packed_attention(name, module) if layout == "packed" else hf_attention(name, module, layout, modules)


def _group(members: list[tuple[str, nn.Module, str]], modules: dict, excluded: Set[str]) -> AttentionGroup | None:
    skipped = [name for name, module, layout in members if _is_excluded(name, module, layout, modules, excluded)]
    if len(skipped) == len(members):
        return None
    names = [name for name, _, _ in members]
    if skipped:
        raise PrunekitError(
            f"'{skipped[0]}' is excluded, but its heads can only be removed together with those of "
            f"{len(names)} attention layers ({names[0]} ... {names[-1]}): the first layer's per-head "
            "position bias feeds every later layer of the stack. Exclude all of them or none"
        )
    attentions = tuple(_build(name, module, layout, modules) for name, module, layout in members)
    shapes = {(attention.num_units, attention.unit_width) for attention in attentions}
    if len(shapes) > 1:
        raise PrunekitError(
            f"attention layers {names[0]} ... {names[-1]} share a per-head position bias but differ in "
            f"heads or head size {sorted(shapes)}; exclude them (exclude={names!r})"
        )
    return AttentionGroup(names[0], attentions)


def find_attention_groups(model: nn.Module, excluded: Set[str] = frozenset(),
                          names: Set[str] | None = None) -> list[AttentionGroup]:  # fmt: skip
    """The attention modules of `model` whose heads can be removed, as groups whose units go
    together (one module each, except T5 stacks), in module order. Modules named in `excluded`
    (with any of their projections) are left out; with `names`, only groups of those names are
    built. An attention layer of a known but unsupported form is an error.

    >>> [(g.name, g.num_units) for g in find_attention_groups(nn.TransformerEncoderLayer(16, 4))]
    [('self_attn', 4)]
    """
    modules = dict(model.named_modules())
    groups = []
    for members in _candidates(modules).values():
        if names is not None and members[0][0] not in names:
            continue
        group = _group(members, modules, excluded)
        if group is not None:
            groups.append(group)
    return groups


def find_attentions(model: nn.Module, excluded: Set[str] = frozenset()) -> list[Attention]:
    """Every attention module of `model` whose heads can be removed, in module order, except the
    modules named in `excluded`; an attention layer of a known but unsupported form is an error.

    >>> [a.name for a in find_attentions(nn.TransformerEncoderLayer(16, 4))]
    ['self_attn']
    """
    return [attention for group in find_attention_groups(model, excluded) for attention in group.attentions]


def attention_projections(model: nn.Module) -> dict[nn.Module, str]:
    """``{projection module: attention module name}`` for every query/key/value/output projection
    (Linear or Conv1D) of every attention layer of a recognised layout, also those whose heads
    cannot be removed. Never raises; reads module names and types only.

    >>> layer = nn.TransformerEncoderLayer(16, 4)
    >>> list(attention_projections(layer).values())
    ['self_attn']
    """
    modules = dict(model.named_modules())
    found: dict[nn.Module, str] = {}
    for name, module in modules.items():
        if isinstance(module, _PACKED):
            found[module.out_proj] = name
        elif (layout := hf_layout(module)) is not None:
            found.update((proj, name) for proj in hf_projections(name, module, layout, modules).values())
    return found


def watch_head_contexts(attention: Attention, on_context: Callable[[torch.Tensor], None]) -> RemovableHandle:
    """Call ``on_context(context)`` with the per-head context vectors (before the output
    projection; ``(..., heads * head_dim)``) each time `attention` runs; returns the hook handle.

    Hugging Face and pruned attention feed the context to their output projection, so it is read
    there; ``nn.MultiheadAttention`` applies that projection functionally, so its context is
    recomputed from the call's arguments.
    """
    if not isinstance(attention.module, nn.MultiheadAttention):
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
