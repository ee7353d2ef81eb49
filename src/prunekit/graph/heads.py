"""Attention heads as structural units: find them, remove them, replay the removal, measure them.

Pipeline position: ``find_head_groups`` gives one ``UnitGroup`` (granularity ``"head"``) per
attention module, in the representation of ``types.py``, so criteria, selection and
``masks.unit_masks_to_param_masks`` work on heads unchanged. Zeroing head h's query/key/value
rows and its output-projection columns is the masked equivalent of removing it: its scores are
0, its values are 0, so it adds exactly nothing. ``shrink_heads`` removes heads physically and
returns a record (``ShrinkRecord.to_dict()`` form) that ``replay_heads`` applies to a fresh model.

Supported attention modules (anything else is not a head group):

* ``nn.MultiheadAttention`` with packed ``in_proj_weight`` (``kdim == vdim == embed_dim``), no
  ``bias_k``/``bias_v``, no ``add_zero_attn``; batch_first or not. Removing heads replaces it by
  a ``PrunedMultiheadAttention`` (``nn.MultiheadAttention`` assumes inner width == embed_dim).
* Hugging Face BERT-style self-attention (transformers 5.x ``BertSelfAttention``, RoBERTa, ...):
  a module with ``query``/``key``/``value`` ``nn.Linear`` children and integer attributes
  ``num_attention_heads`` and ``attention_head_size``, whose parent has ``output.dense``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import PrunekitError, unknown_name
from prunekit.graph.masks import validate_keep_units
from prunekit.graph.shrink import ShrinkRecord
from prunekit.graph.types import Member, UnitGroup

GRANULARITY = "head"
_HF_PROJECTIONS = ("query", "key", "value")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ------------------------------------------------------------------ the pruned attention module


@dataclass(frozen=True)
class AttentionMasks:
    """The masking arguments of one ``nn.MultiheadAttention`` call."""

    attn_mask: torch.Tensor | None = None
    key_padding_mask: torch.Tensor | None = None
    is_causal: bool = False


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """nn.MultiheadAttention mask semantics: bool True = not allowed, float = added to scores."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)


def _score_mask(masks: AttentionMasks, batch: int, heads: int, dtype) -> torch.Tensor | None:
    """One additive mask broadcastable to (batch, heads, target, source), or None."""
    combined = None
    attn_mask = _additive(masks.attn_mask, dtype)
    if attn_mask is not None:
        is_per_head = attn_mask.dim() == 3  # (batch * heads, target, source)
        combined = attn_mask.view(batch, heads, *attn_mask.shape[-2:]) if is_per_head else attn_mask
    padding = _additive(masks.key_padding_mask, dtype)
    if padding is not None:
        padding = padding.view(batch, 1, 1, -1)
        combined = padding if combined is None else combined + padding
    return combined


def attention_context(
    attn: nn.Module, query, key, value, masks: AttentionMasks, need_weights: bool = False
):
    """Per-head context vectors of a packed multi-head attention, before the output projection.

    `attn` is an ``nn.MultiheadAttention`` or ``PrunedMultiheadAttention`` (read through the
    attributes both have). Returns ``(context, weights)`` with `context` batch-first
    ``(batch, target, heads * head_dim)`` and `weights` ``(batch, heads, target, source)`` or None.

    >>> attn = nn.MultiheadAttention(8, 2, batch_first=True)
    >>> x = torch.randn(3, 5, 8)
    >>> context, _ = attention_context(attn, x, x, x, AttentionMasks())
    >>> torch.allclose(attn.out_proj(context), attn(x, x, x, need_weights=False)[0], atol=1e-6)
    True
    """
    if query.dim() == 2:  # unbatched (length, embed)
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
    elif not attn.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    heads = attn.num_heads
    bias = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None,) * 3
    q, k, v = (
        F.linear(x, w, b).unflatten(-1, (heads, -1)).transpose(1, 2)  # (batch, heads, len, dim)
        for x, w, b in zip((query, key, value), attn.in_proj_weight.chunk(3), bias)
    )
    score_mask = _score_mask(masks, q.shape[0], heads, q.dtype)
    causal = masks.is_causal and score_mask is None
    dropout = attn.dropout if attn.training else 0.0
    if not need_weights:
        context = F.scaled_dot_product_attention(q, k, v, score_mask, dropout, is_causal=causal)
        return context.transpose(1, 2).flatten(2), None
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), -math.inf)
    weights = torch.softmax(scores if score_mask is None else scores + score_mask, dim=-1)
    context = F.dropout(weights, dropout) @ v
    return context.transpose(1, 2).flatten(2), weights


class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` whose heads are narrower than ``embed_dim / num_heads`` allows.

    Same call signature, state_dict keys (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``)
    and attributes (``batch_first``, ``num_heads``, ``head_dim``, ``embed_dim``); the inner width
    is ``num_heads * head_dim``. Built by ``shrink_heads``; runs on scaled_dot_product_attention.

    >>> attn = PrunedMultiheadAttention(embed_dim=8, num_heads=1, head_dim=4, batch_first=True)
    >>> out, weights = attn(torch.ones(2, 3, 8), torch.ones(2, 3, 8), torch.ones(2, 3, 8))
    >>> out.shape, weights.shape, attn.in_proj_weight.shape
    (torch.Size([2, 3, 8]), torch.Size([2, 3, 3]), torch.Size([12, 8]))
    """

    # nn.TransformerEncoderLayer / nn.TransformerEncoder take their fused fast path (which calls
    # torch._transformer_encoder_layer_fwd with inner width == embed_dim) only when this is True
    _qkv_same_embed_dim = False
    bias_k = bias_v = None
    add_zero_attn = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True,
                 dropout: float = 0.0, batch_first: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.embed_dim, self.kdim, self.vdim = embed_dim, embed_dim, embed_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @classmethod
    def from_attention(cls, attn: nn.Module, keep_heads: torch.Tensor) -> PrunedMultiheadAttention:
        """A copy of `attn` (nn.MultiheadAttention or this class) keeping heads where True."""
        head_index = torch.arange(attn.num_heads * attn.head_dim, device=keep_heads.device)
        rows = keep_heads[head_index // attn.head_dim].nonzero().flatten()
        inner_rows = rows.to(attn.in_proj_weight.device)
        width = attn.num_heads * attn.head_dim
        packed_rows = torch.cat([inner_rows + part * width for part in range(3)])
        bias = attn.in_proj_bias is not None
        pruned = cls(attn.embed_dim, int(keep_heads.sum()), attn.head_dim, bias=bias,
                     dropout=attn.dropout, batch_first=attn.batch_first)  # fmt: skip
        pruned.to(device=attn.in_proj_weight.device, dtype=attn.in_proj_weight.dtype)
        _copy_param(pruned, "in_proj_weight", attn.in_proj_weight[packed_rows])
        if bias:
            _copy_param(pruned, "in_proj_bias", attn.in_proj_bias[packed_rows])
            _copy_param(pruned.out_proj, "bias", attn.out_proj.bias)
        _copy_param(pruned.out_proj, "weight", attn.out_proj.weight[:, inner_rows])
        pruned.train(attn.training)
        return pruned

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):  # fmt: skip
        """Same arguments and results as ``nn.MultiheadAttention.forward``."""
        masks = AttentionMasks(attn_mask, key_padding_mask, is_causal)
        if key_padding_mask is not None and key_padding_mask.dim() == 1:
            masks = AttentionMasks(attn_mask, key_padding_mask.unsqueeze(0), is_causal)
        context, weights = attention_context(self, query, key, value, masks, need_weights)
        out = self.out_proj(context)
        if query.dim() == 2:
            out = out.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=-3)
        return out, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"


_MHA_TYPES = (nn.MultiheadAttention, PrunedMultiheadAttention)


def _copy_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))


# ------------------------------------------------------------------ finding head groups


@dataclass(frozen=True)
class _Attention:
    """One supported attention module: where its per-head parameters live."""

    name: str
    module: nn.Module
    num_heads: int
    head_dim: int
    qkv: tuple[nn.Linear, ...] | None  # HF layout: query, key, value; None for packed in_proj
    out_proj: nn.Linear
    out_proj_name: str

    def group(self) -> UnitGroup:
        heads = torch.arange(self.num_heads * self.head_dim) // self.head_dim
        if self.qkv is None:
            names = ["in_proj_weight"] + ["in_proj_bias"] * (self.module.in_proj_bias is not None)
            members = [Member(_join(self.name, n), 0, torch.cat([heads] * 3)) for n in names]
        else:
            members = [
                Member(_join(self.name, f"{proj}.{kind}"), 0, heads)
                for proj, linear in zip(_HF_PROJECTIONS, self.qkv)
                for kind in ("weight", "bias")
                if getattr(linear, kind) is not None
            ]
        members.append(Member(f"{self.out_proj_name}.weight", 1, heads))
        root_units = torch.arange(self.num_heads)
        return UnitGroup(self.name, GRANULARITY, self.num_heads, tuple(members), root_units)


def _looks_like_attention(module: nn.Module) -> bool:
    if isinstance(module, _MHA_TYPES):
        return True
    return all(isinstance(getattr(module, proj, None), nn.Linear) for proj in _HF_PROJECTIONS)


def _hf_attention(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> _Attention | None:
    qkv = tuple(getattr(module, proj, None) for proj in _HF_PROJECTIONS)
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
    out_proj_name = _join(parent_name, "output.dense")
    return _Attention(name, module, heads, head_dim, qkv, out_proj, out_proj_name)


def _mha_attention(name: str, module: nn.Module) -> _Attention:
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
    return _Attention(name, module, heads, head_dim, None, out_proj, _join(name, "out_proj"))


def _excluded_names(model: nn.Module, exclude: Iterable[str | type]) -> set[str]:
    items = [exclude] if isinstance(exclude, (str, type)) else list(exclude)
    names = [name for name, _ in model.named_modules()]
    excluded: set[str] = set()
    for item in items:
        if isinstance(item, type):
            excluded.update(n for n, m in model.named_modules() if isinstance(m, item))
        elif isinstance(item, str) and item in names:
            excluded.update(n for n in names if n == item or n.startswith(item + "."))
        elif isinstance(item, str):
            raise unknown_name("layer to exclude", item, [n for n in names if n])
        else:
            raise PrunekitError(f"exclude item {item!r} is neither a layer name nor a module type")
    return excluded


def _find_attentions(model: nn.Module, exclude: Iterable[str | type] = ()) -> list[_Attention]:
    excluded = _excluded_names(model, exclude)
    modules = dict(model.named_modules())
    found = []
    for name, module in modules.items():
        if name in excluded:
            continue
        if isinstance(module, _MHA_TYPES):
            found.append(_mha_attention(name, module))
        elif (attention := _hf_attention(name, module, modules)) is not None:
            found.append(attention)
    return found


def find_head_groups(model: nn.Module, exclude: Iterable[str | type] = ()) -> list[UnitGroup]:
    """One ``UnitGroup`` of granularity ``"head"`` per attention module, ``num_units = heads``.

    Members: the packed ``in_proj_weight``/``in_proj_bias`` rows (dim 0) and ``out_proj.weight``
    columns (dim 1) of ``nn.MultiheadAttention``; the query/key/value rows and the sibling
    ``output.dense`` columns of BERT-style attention. Output-projection biases are not per head.
    Modules named (or typed) in `exclude` are skipped.

    >>> layer = nn.TransformerEncoderLayer(16, 4, batch_first=True)
    >>> [(g.name, g.num_units, len(g.members)) for g in find_head_groups(layer)]
    [('self_attn', 4, 3)]
    """
    if not any(_looks_like_attention(module) for module in model.modules()):
        raise PrunekitError(
            f"granularity 'head' needs attention layers; {type(model).__name__} has none "
            "(prunekit recognises nn.MultiheadAttention and Hugging Face BERT-style "
            "self-attention). Choose 'neuron' or 'channel' for this model"
        )
    return [attention.group() for attention in _find_attentions(model, exclude)]


# ------------------------------------------------------------------ physical removal


def _refuse_masked(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            raise PrunekitError(
                f"'{name or type(model).__name__}' has a mask (parametrization) attached; "
                "shrink_heads removes heads from plain models only. Call "
                "prunekit.masking.bake(model) first, then shrink_heads"
            )


def _check_keep(attentions: dict[str, _Attention], groups: list[UnitGroup], keep_heads) -> None:
    if not isinstance(keep_heads, Mapping):
        raise PrunekitError(
            "keep_heads must be a dict {group name: bool tensor}, "
            f"got {type(keep_heads).__name__}"
        )
    for name, keep in keep_heads.items():
        if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and not bool(keep.any()):
            raise PrunekitError(
                f"keep_heads['{name}'] removes all {len(keep)} heads of attention '{name}'; keep "
                "at least one head, or remove the whole layer (prunekit.graph.layers.remove_layers)"
            )
    validate_keep_units(groups, keep_heads)
    for name, keep in keep_heads.items():
        attention = attentions.get(name)
        if attention is None or attention.num_heads != len(keep):
            found = f"{attention.num_heads} heads" if attention else "no supported attention"
            raise PrunekitError(
                f"head group '{name}' was found on a different version of this model ({len(keep)} "
                f"heads expected, the model has {found} there); call find_head_groups on the "
                "model you shrink"
            )


def _plan_mha(model: nn.Module, attention: _Attention, keep: torch.Tensor):
    if not attention.name:
        raise PrunekitError(
            "shrink_heads cannot replace the model itself; wrap the nn.MultiheadAttention in a "
            "module (e.g. nn.Sequential) and shrink that"
        )
    parent_name, _, child = attention.name.rpartition(".")
    parent = model.get_submodule(parent_name)
    pruned = PrunedMultiheadAttention.from_attention(attention.module, keep)
    return [lambda: setattr(parent, child, pruned)]


def _sliced_linear(linear: nn.Linear, index: torch.Tensor, dim: int):
    weight = linear.weight.index_select(dim, index.to(linear.weight.device))
    sliced_bias = dim == 0 and linear.bias is not None
    bias = linear.bias[index.to(linear.bias.device)] if sliced_bias else None

    def commit() -> None:
        _copy_param(linear, "weight", weight)
        if sliced_bias:
            _copy_param(linear, "bias", bias)
        linear.out_features, linear.in_features = linear.weight.shape

    return commit


def _plan_hf(attention: _Attention, keep: torch.Tensor):
    rows = keep.cpu()[torch.arange(attention.num_heads * attention.head_dim) // attention.head_dim]
    index = rows.nonzero().flatten()
    commits = [_sliced_linear(linear, index, 0) for linear in attention.qkv]
    commits.append(_sliced_linear(attention.out_proj, index, 1))
    heads = int(keep.sum())

    def set_counts() -> None:
        attention.module.num_attention_heads = heads
        attention.module.all_head_size = heads * attention.head_dim

    return commits + [set_counts]


def _disable_nested_tensor(model: nn.Module) -> None:
    """nn.TransformerEncoder packs padded batches into nested tensors, which only its fused
    layers understand; a pruned attention makes the layers take the plain path."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            if any(isinstance(m, PrunedMultiheadAttention) for m in module.modules()):
                module.use_nested_tensor = False


def shrink_heads(
    model: nn.Module,
    keep_heads: Mapping[str, torch.Tensor],
    groups: Iterable[UnitGroup] | None = None,
) -> dict:
    """Remove the heads with ``keep_heads[group] == False`` from `model`, in place.

    Returns a JSON-ready record (``ShrinkRecord.to_dict()`` form, steps of granularity
    ``"head"``) for ``replay_heads``. Everything is validated and the new weights are built
    before the model is touched; removing every head of an attention is refused. Models with
    masks attached are refused: ``bake`` them first. Rebuild optimisers afterwards.

    >>> layer = nn.TransformerEncoderLayer(16, 4, batch_first=True)
    >>> record = shrink_heads(layer, {"self_attn": torch.tensor([True, False, True, True])})
    >>> layer.self_attn.num_heads, record["steps"][0]["removed"], layer(torch.ones(2, 3, 16)).shape
    (3, [1], torch.Size([2, 3, 16]))
    """
    _refuse_masked(model)
    groups = list(groups) if groups is not None else find_head_groups(model)
    attentions = {attention.name: attention for attention in _find_attentions(model)}
    _check_keep(attentions, groups, keep_heads)
    keep_heads = {name: keep.cpu() for name, keep in keep_heads.items() if not bool(keep.all())}
    commits = []
    for name, keep in keep_heads.items():
        attention = attentions[name]
        packed = attention.qkv is None
        commits += _plan_mha(model, attention, keep) if packed else _plan_hf(attention, keep)
    for commit in commits:
        commit()
    _disable_nested_tensor(model)
    steps = [
        {"round": 0, "group": name, "granularity": GRANULARITY, "num_units": len(keep),
         "removed": (~keep).nonzero().flatten().tolist()}
        for name, keep in keep_heads.items()
    ]  # fmt: skip
    return ShrinkRecord(steps).to_dict()


def _replay_round(model: nn.Module, steps: list[dict]) -> None:
    groups = {group.name: group for group in find_head_groups(model)}
    keep_heads = {}
    for step in steps:
        group = groups.get(step["group"])
        fits = group is not None and group.num_units == step["num_units"]
        if step["granularity"] != GRANULARITY or not fits:
            found = f"{group.num_units} heads" if group else "no attention"
            raise PrunekitError(
                f"the record removes {step['granularity']} units of '{step['group']}' "
                f"({step['num_units']} units) but this model has {found} there; replay_heads "
                "needs a fresh model of the architecture the record was made on"
            )
        keep = torch.ones(group.num_units, dtype=torch.bool)
        removed = step["removed"]
        if not all(isinstance(unit, int) and 0 <= unit < group.num_units for unit in removed):
            raise PrunekitError(
                f"the record removes heads {removed!r} of '{group.name}', which has heads "
                f"0..{group.num_units - 1}; the record is damaged"
            )
        keep[removed] = False
        keep_heads[group.name] = keep
    shrink_heads(model, keep_heads, list(groups.values()))


def replay_heads(model: nn.Module, record: Mapping | ShrinkRecord) -> nn.Module:
    """Apply a ``shrink_heads`` record to a fresh, unpruned model of the same architecture.

    Records of several calls combine with ``ShrinkRecord.from_dict(a) + ShrinkRecord.from_dict(b)``.

    >>> layer = nn.TransformerEncoderLayer(16, 4, batch_first=True)
    >>> record = shrink_heads(layer, {"self_attn": torch.tensor([True, False, True, True])})
    >>> fresh = replay_heads(nn.TransformerEncoderLayer(16, 4, batch_first=True), record)
    >>> fresh.load_state_dict(layer.state_dict())
    <All keys matched successfully>
    """
    if not isinstance(record, ShrinkRecord):
        record = ShrinkRecord.from_dict(record)
    rounds = record.rounds
    if len(rounds) > 1:  # later rounds can only be checked after earlier ones ran: rehearse
        rehearsal = copy.deepcopy(model)
        for steps in rounds:
            _replay_round(rehearsal, steps)
    for steps in rounds:
        _replay_round(model, steps)
    return model


# ------------------------------------------------------------------ data-driven head statistics


def _add_head_norms(totals: dict, attention: _Attention, context: torch.Tensor) -> None:
    """Accumulate the L2 norm of each head's contribution ``context_h @ W_out[:, h].T``."""
    heads = attention.num_heads
    weight = attention.out_proj.weight.detach().view(-1, heads, attention.head_dim)
    per_head = context.detach().reshape(-1, heads, attention.head_dim)
    norms = torch.einsum("thd,ehd->the", per_head, weight).norm(dim=-1)  # (tokens, heads)
    total, count = totals.get(attention.name, (0.0, 0))
    totals[attention.name] = (total + norms.sum(dim=0).cpu(), count + norms.shape[0])


def _context_hook(attention: _Attention, totals: dict):
    if attention.qkv is not None or isinstance(attention.module, PrunedMultiheadAttention):
        # the context is the output projection's input; nn.MultiheadAttention calls F.linear instead
        return attention.out_proj.register_forward_pre_hook(
            lambda _, args: _add_head_norms(totals, attention, args[0])
        )
    signature = inspect.signature(nn.MultiheadAttention.forward)

    def recompute(module, args, kwargs, _output) -> None:
        bound = signature.bind(module, *args, **kwargs).arguments
        masks = AttentionMasks(
            bound.get("attn_mask"), bound.get("key_padding_mask"), bound.get("is_causal", False)
        )
        with torch.no_grad():
            inputs = bound["query"], bound["key"], bound["value"]
            context, _ = attention_context(module, *inputs, masks)
        _add_head_norms(totals, attention, context)

    return attention.module.register_forward_hook(recompute, with_kwargs=True)


@contextlib.contextmanager
def recording_head_norms(model: nn.Module, groups: Iterable[UnitGroup]):
    """Context manager yielding ``{group: (sum of head norms, token count)}`` filled by forwards.

    Hooks are removed on exit. Hooks on ``self_attn`` also keep nn.TransformerEncoderLayer off
    its fused fast path, which would bypass the attention module.
    """
    groups = list(groups)
    attentions = {attention.name: attention for attention in _find_attentions(model)}
    missing = [group.name for group in groups if group.name not in attentions]
    if missing:
        raise unknown_name("attention (head group)", missing[0], attentions)
    totals: dict = {}
    handles = [_context_hook(attentions[group.name], totals) for group in groups]
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()


def _call(model: nn.Module, inputs) -> None:
    if isinstance(inputs, Mapping):
        model(**inputs)
    elif isinstance(inputs, tuple):
        model(*inputs)
    else:
        model(inputs)


def head_output_norms(
    model: nn.Module, groups: Iterable[UnitGroup], inputs
) -> dict[str, torch.Tensor]:
    """Per head, the mean L2 norm of its contribution to the attention output (higher = matters).

    A head's contribution at a token is its context vector times its output-projection columns
    (the projection bias is shared, so left out). `inputs` is what the model is called with (a
    tensor, a tuple of arguments, a dict of keyword arguments) or a list of those (batches).
    Every token counts, padding included; the model runs in its current train/eval mode under
    ``torch.no_grad``. Returns ``{group name: float tensor (num_heads,)}``.

    >>> layer = nn.TransformerEncoderLayer(16, 4, batch_first=True).eval()
    >>> groups = find_head_groups(layer)
    >>> head_output_norms(layer, groups, torch.randn(2, 5, 16))["self_attn"].shape
    torch.Size([4])
    """
    groups = list(groups)
    batches = inputs if isinstance(inputs, list) else [inputs]
    with recording_head_norms(model, groups) as totals, torch.no_grad():
        for batch in batches:
            _call(model, batch)
    unseen = [group.name for group in groups if group.name not in totals]
    if unseen:
        raise PrunekitError(
            f"attention '{unseen[0]}' did not run on the given inputs, so its heads cannot be "
            "measured; pass inputs that reach every attention layer, or leave its group out"
        )
    return {name: total / count for name, (total, count) in totals.items()}
