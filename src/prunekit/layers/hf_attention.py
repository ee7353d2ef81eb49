"""Hugging Face attention layouts (transformers 5.x) whose heads prunekit can remove.

A layout is recognised by the names of the module's projection children (cheap, never raises);
building its ``Attention`` checks everything head removal relies on and raises a PrunekitError
that names the layer when something does not fit.

=========  ==============================================  ==================================
layout     projections (children of the attention module)  models
=========  ==============================================  ==================================
bert       query, key, value; output: <parent>.output.dense  BERT, RoBERTa, ELECTRA, ...
albert     query, key, value, dense                          ALBERT (one layer shared by depth)
distilbert q_lin, k_lin, v_lin, out_lin                      DistilBERT
proj       q_proj, k_proj, v_proj, o_proj or out_proj        ViT, Swin, Llama, Mistral, Qwen2, ...
t5         q, k, v, o                                        T5 (heads grouped across the stack)
gpt2       c_attn (packed q|k|v Conv1D), c_proj Conv1D       GPT-2 (cross-attention: + q_attn)
=========  ==============================================  ==================================

Under grouped-query attention (``proj`` with fewer key/value heads than query heads) a unit is one
key/value head with the query heads that read it, so ``num_key_value_groups`` never changes.
Per-head position-bias tables (Swin's ``relative_position_bias_table``, T5's
``relative_attention_bias``) lose their columns with the heads. Removal updates the module's own
count attributes (``_COUNT_ATTRIBUTES``), never the shared ``config``: every transformers 5.x
forward listed here reshapes with ``-1`` heads. Caches preallocated from the config (static KV
caches) still assume the config's head counts.
"""

from __future__ import annotations

import re

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.layers.attention_layout import (
    HEADS,
    INNER,
    KV_HEADS,
    Attention,
    HeadSlice,
    in_width,
    is_conv1d_like,
    is_projection,
    out_width,
    unit_index,
)

#: layout -> (query, key, value child names, output-projection child names; none: <parent>.output.dense)
_LINEAR_LAYOUTS = {
    "distilbert": (("q_lin", "k_lin", "v_lin"), ("out_lin",)),
    "t5": (("q", "k", "v"), ("o",)),
    "proj": (("q_proj", "k_proj", "v_proj"), ("o_proj", "out_proj")),
    "albert": (("query", "key", "value"), ("dense",)),
    "bert": (("query", "key", "value"), ()),
}
_HEAD_SIZE = {"distilbert": "attention_head_size", "t5": "key_value_proj_dim", "proj": "head_dim",
              "albert": "attention_head_size", "bert": "attention_head_size", "gpt2": "head_dim"}  # fmt: skip
#: children that hold parameters but nothing per head
_NOT_PER_HEAD = {"albert": ("LayerNorm",)}
#: parameter names (relative to the attention module) of per-head tables: (positions, heads)
_TABLES = ("relative_position_bias_table", "relative_attention_bias.weight")
_COUNT_ATTRIBUTES = {
    "num_heads": HEADS, "num_attention_heads": HEADS, "n_heads": HEADS, "n_head": HEADS,
    "num_key_value_heads": KV_HEADS, "num_kv_heads": KV_HEADS,
    "all_head_size": INNER, "inner_dim": INNER, "split_size": INNER,
}  # fmt: skip


def hf_layout(module: nn.Module) -> str | None:
    """The layout name of a Hugging Face attention module, from its children's names; None if it
    is not one.

    >>> class Attention(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(8, 8) for _ in range(4))
    >>> hf_layout(Attention()), hf_layout(nn.Linear(2, 2))
    ('proj', None)
    """
    if is_conv1d_like(getattr(module, "c_attn", None)) and is_conv1d_like(getattr(module, "c_proj", None)):
        return "gpt2"
    for layout, (qkv, outs) in _LINEAR_LAYOUTS.items():
        if all(is_projection(getattr(module, child, None)) for child in qkv):
            if not outs or any(is_projection(getattr(module, child, None)) for child in outs):
                return layout
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _parent_output(name: str, modules: dict[str, nn.Module]) -> tuple[str, nn.Module | None]:
    parent_name = name.rpartition(".")[0]
    output = getattr(modules.get(parent_name), "output", None)
    return _join(parent_name, "output.dense"), getattr(output, "dense", None)


def hf_projections(name: str, module: nn.Module, layout: str, modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """``{dotted name: projection module}`` of one recognised attention, present ones only (never
    raises)."""
    if layout == "gpt2":
        names = ("c_attn", "q_attn", "c_proj")
    else:
        qkv, outs = _LINEAR_LAYOUTS[layout]
        names = qkv + outs
    found = {_join(name, child): getattr(module, child, None) for child in names}
    if layout == "bert":
        found.update([_parent_output(name, modules)])
    return {child: proj for child, proj in found.items() if is_projection(proj)}


def chain_key(name: str, layout: str) -> str:
    """Attention modules with the same key form one head group: T5 attentions of one role in one
    stack (the first layer's position bias, one column per head, feeds every later layer).

    >>> chain_key("encoder.block.3.layer.0.SelfAttention", "t5"), chain_key("layer.3.attn", "proj")
    ('encoder.block.*.layer.*.SelfAttention', 'layer.3.attn')
    """
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", name) if layout == "t5" else name


def _refusal(name: str, module: nn.Module, reason: str) -> PrunekitError:
    return PrunekitError(
        f"cannot remove heads of attention '{name}' ({type(module).__name__}): {reason}. Exclude it "
        f"(exclude=['{name}']) or prune it with granularity 'unstructured'"
    )


def _counts(name: str, module: nn.Module, current: dict[str, int]) -> tuple[tuple[str, str], ...]:
    counts = []
    for attribute, kind in _COUNT_ATTRIBUTES.items():
        value = getattr(module, attribute, None)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if value != current[kind]:
            raise _refusal(name, module, f"its attribute {attribute} = {value} does not match the "
                                         f"{current[kind]} its projections hold")  # fmt: skip
        counts.append((attribute, kind))
    return tuple(counts)


def _plain_parameters(module: nn.Module):
    """``(name, parameter)`` under plain names also when a mask parametrizes them."""
    for param_name, param in module.named_parameters():
        yield re.sub(r"parametrizations\.(\w+)\.original\d*$", r"\1", param_name), param


def _tables(name: str, module: nn.Module, heads: int, per_unit: int) -> list[HeadSlice]:
    slices = []
    for param_name, param in _plain_parameters(module):
        if not param_name.endswith(_TABLES):
            continue
        if param.dim() != 2 or param.shape[1] != heads:
            raise _refusal(name, module, f"its per-head table '{param_name}' has shape {tuple(param.shape)}, "
                                         f"expected (positions, {heads})")  # fmt: skip
        slices.append(HeadSlice(_join(name, param_name), 1, unit_index(heads, per_unit)))
    return slices


def _refuse_unknown(name: str, module: nn.Module, layout: str, known: set[str], sizes: set[int]) -> None:
    """Refuse parameters of the module that may be per head but that prunekit would not slice."""
    skip = _NOT_PER_HEAD.get(layout, ())
    for param_name, param in _plain_parameters(module):
        if param_name in known or param_name.split(".")[0] in skip or param_name.endswith(_TABLES):
            continue
        if sizes.intersection(param.shape):
            raise _refusal(name, module, f"its parameter '{param_name}' (shape {tuple(param.shape)}) may hold "
                                         "per-head values that prunekit does not know how to slice")  # fmt: skip


def _head_size(name: str, module: nn.Module, layout: str) -> int:
    attribute = _HEAD_SIZE[layout]
    size = getattr(module, attribute, None)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise _refusal(name, module, f"it has no positive int attribute {attribute} (the size of one head)")
    return size


def hf_attention(name: str, module: nn.Module, layout: str, modules: dict[str, nn.Module]) -> Attention:
    """The ``Attention`` of a module whose layout is `layout` (see the module docstring); a
    PrunekitError naming the layer, the reason and what to do when its heads cannot be removed."""
    if layout == "gpt2":
        return _gpt2_attention(name, module)
    qkv_names, out_names = _LINEAR_LAYOUTS[layout]
    projections = [getattr(module, child) for child in qkv_names]
    if layout == "bert":
        out_name, out = _parent_output(name, modules)
    else:
        out_child = next(child for child in out_names if is_projection(getattr(module, child, None)))
        out_name, out = _join(name, out_child), getattr(module, out_child)
    if not isinstance(out, nn.Linear) or not all(isinstance(proj, nn.Linear) for proj in projections):
        where = "an nn.Linear output projection at '<parent>.output.dense'" if layout == "bert" else "nn.Linear projections"
        raise _refusal(name, module, f"the {layout} layout needs {where}")
    head_size = _head_size(name, module, layout)
    q, k, v = projections
    q_width, kv_width = q.out_features, k.out_features
    if v.out_features != kv_width or out.in_features != q_width or q_width % head_size or kv_width % head_size:
        raise _refusal(name, module, f"its projection widths (query {q_width}, key {kv_width}, value "
                                     f"{v.out_features}, output input {out.in_features}) do not split into "
                                     f"heads of size {head_size}")  # fmt: skip
    heads, kv_heads = q_width // head_size, kv_width // head_size
    per_unit = heads // kv_heads
    if heads % kv_heads or getattr(module, "num_key_value_groups", per_unit) != per_unit:
        raise _refusal(name, module, f"{heads} query heads do not share {kv_heads} key/value heads evenly "
                                     f"(num_key_value_groups = {getattr(module, 'num_key_value_groups', None)})")  # fmt: skip
    q_units, kv_units = unit_index(q_width, per_unit * head_size), unit_index(kv_width, head_size)
    slices = [
        HeadSlice(_join(name, f"{child}.{kind}"), 0, units)
        for child, proj, units in zip(qkv_names, projections, (q_units, kv_units, kv_units))
        for kind in ("weight", "bias")
        if getattr(proj, kind) is not None
    ]
    slices.append(HeadSlice(f"{out_name}.weight", 1, q_units))
    slices += _tables(name, module, heads, per_unit)
    counts = _counts(name, module, {HEADS: heads, KV_HEADS: kv_heads, INNER: q_width})
    known = {f"{child}.{kind}" for child in qkv_names + out_names for kind in ("weight", "bias")}
    _refuse_unknown(name, module, layout, known, {heads, kv_heads, q_width, kv_width} - {head_size})
    return Attention(name, module, layout, kv_heads, per_unit * head_size, out, out_name, tuple(slices), counts, per_unit)


def _gpt2_attention(name: str, module: nn.Module) -> Attention:
    """GPT-2: ``c_attn`` packs q|k|v as column blocks (k|v with a separate ``q_attn`` for
    cross-attention); ``c_proj``'s rows are the heads' inputs."""
    head_size = _head_size(name, module, "gpt2")
    q_attn = getattr(module, "q_attn", None)
    packed = ((module.c_attn, "c_attn", 2), (q_attn, "q_attn", 1)) if is_conv1d_like(q_attn) else ((module.c_attn, "c_attn", 3),)
    inner = in_width(module.c_proj)
    if inner % head_size or any(out_width(proj) != blocks * inner for proj, _, blocks in packed):
        widths = ", ".join(f"{child} {out_width(proj)}" for proj, child, _ in packed)
        raise _refusal(name, module, f"its packed projection widths ({widths}) are not whole q/k/v blocks of "
                                     f"c_proj's input width {inner} in heads of size {head_size}")  # fmt: skip
    units, heads = unit_index(inner, head_size), inner // head_size
    slices = []
    for proj, child, blocks in packed:
        slices.append(HeadSlice(_join(name, f"{child}.weight"), 1, units.repeat(blocks)))
        if proj.bias is not None:
            slices.append(HeadSlice(_join(name, f"{child}.bias"), 0, units.repeat(blocks)))
    slices.append(HeadSlice(_join(name, "c_proj.weight"), 0, units))
    counts = _counts(name, module, {HEADS: heads, KV_HEADS: heads, INNER: inner})
    known = {f"{child}.{kind}" for child in ("c_attn", "q_attn", "c_proj") for kind in ("weight", "bias")}
    _refuse_unknown(name, module, "gpt2", known, {heads, inner} - {head_size})
    return Attention(name, module, "gpt2", heads, head_size, module.c_proj, _join(name, "c_proj"), tuple(slices), counts)
