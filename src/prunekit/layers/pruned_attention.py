"""A multi-head attention module whose heads can be narrower than ``embed_dim / num_heads``.

``nn.MultiheadAttention`` assumes ``num_heads * head_dim == embed_dim``; after heads are removed
that no longer holds, so ``shrink_heads`` replaces it by ``PrunedMultiheadAttention``, which has
the same call signature, state_dict keys and attributes. ``attention_context`` computes the
per-head context vectors of either module (also used to measure each head's contribution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
    self_attention = query is key and key is value
    if query.dim() == 2:  # unbatched (length, embed)
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
    elif not attn.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    heads = attn.num_heads
    if self_attention:  # one matmul for q, k and v
        packed = F.linear(query, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = packed.unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)  # 3 x (batch, heads, len, dim)
    else:
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
        copy_param(pruned, "in_proj_weight", attn.in_proj_weight[packed_rows])
        if bias:
            copy_param(pruned, "in_proj_bias", attn.in_proj_bias[packed_rows])
            copy_param(pruned.out_proj, "bias", attn.out_proj.bias)
        copy_param(pruned.out_proj, "weight", attn.out_proj.weight[:, inner_rows])
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


def copy_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter `name` of `module` by a copy of `value`, keeping requires_grad."""
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
