"""Attention heads on data: how much each head contributes to its layer's output."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from prunekit.distributed import all_reduce_sum
from prunekit.errors import PrunekitError, unknown_name
from prunekit.graph.types import UnitGroup
from prunekit.inputs import as_call
from prunekit.layers.attention import find_attention_groups, watch_head_contexts
from prunekit.layers.attention_layout import Attention, output_weight
from prunekit.stats.loop import LossFn, for_each_batch


def _add_head_norms(totals: dict, group_name: str, attention: Attention, context: torch.Tensor) -> None:
    """Accumulate the L2 norm of each unit's contribution ``context_u @ W_out[:, u].T`` (a unit's
    query heads together under grouped-query attention)."""
    units, width = attention.num_units, attention.unit_width
    weight = output_weight(attention).detach().reshape(-1, units, width)
    per_unit = context.detach().reshape(-1, units, width)
    norms = torch.einsum("tuw,euw->tue", per_unit, weight).norm(dim=-1)  # (tokens, units)
    total, count = totals.get(group_name, (0.0, 0))
    totals[group_name] = (total + norms.sum(dim=0).cpu(), count + norms.shape[0])


def _group_names(model: nn.Module) -> list[str]:
    try:
        return [group.name for group in find_attention_groups(model)]
    except PrunekitError:  # an unsupported attention elsewhere: name none rather than hide the error
        return []


@contextlib.contextmanager
def recording_head_norms(model: nn.Module, groups: Iterable[UnitGroup]):
    """Context manager yielding ``{group: (sum of head norms, token count)}`` filled by forwards.

    Hooks are removed on exit. Hooks on ``self_attn`` also keep nn.TransformerEncoderLayer off
    its fused fast path, which would bypass the attention module. A group of several attention
    modules (a T5 stack) averages over every module's tokens.
    """
    groups = list(groups)
    found = {group.name: group for group in find_attention_groups(model, names={group.name for group in groups})}
    missing = [group.name for group in groups if group.name not in found]
    if missing:
        raise unknown_name("attention (head group)", missing[0], _group_names(model))
    totals: dict = {}
    handles = [
        watch_head_contexts(attention, lambda context, g=group.name, a=attention: _add_head_norms(totals, g, a, context))
        for group in groups
        for attention in found[group.name].attentions
    ]
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()


def head_output_norms(
    model: nn.Module, groups: Iterable[UnitGroup], inputs
) -> dict[str, torch.Tensor]:
    """Per head, the mean L2 norm of its contribution to the attention output (higher = matters).

    A head's contribution at a token is its context vector times its output-projection columns
    (the projection bias is shared, so left out). `inputs` is what the model is called with (a
    tensor, a tuple of arguments, a dict of keyword arguments) or a list of those (batches).
    Every token counts, padding included; the model runs in eval mode under ``torch.no_grad``
    (modes and RNG restored). Returns ``{group name: float tensor (num_units,)}`` (a unit is a
    key/value head with its query heads under grouped-query attention).

    >>> layer = nn.TransformerEncoderLayer(16, 4, batch_first=True).eval()
    >>> from prunekit.graph.heads import find_head_groups
    >>> groups = find_head_groups(layer)
    >>> head_output_norms(layer, groups, torch.randn(2, 5, 16))["self_attn"].shape
    torch.Size([4])
    """
    batches = inputs if isinstance(inputs, list) else [inputs]
    return collect_head_norms(model, groups, [(batch, None) for batch in batches], num_batches=len(batches))


def mean_head_norms(totals: Mapping, groups: Iterable[UnitGroup]) -> dict[str, torch.Tensor]:
    """``{group: mean head norm}`` from what ``recording_head_norms`` collected; every group
    must have been seen.

    >>> group = UnitGroup("attn", "head", 2, (), torch.arange(2))
    >>> mean_head_norms({"attn": (torch.tensor([2.0, 4.0]), 2)}, [group])
    {'attn': tensor([1., 2.])}
    """
    unseen = [group.name for group in groups if group.name not in totals]
    if unseen:
        raise PrunekitError(
            f"attention '{unseen[0]}' did not run on the given inputs, so its heads cannot be "
            "measured; pass inputs that reach every attention layer, or leave its group out"
        )
    return {name: total / count for name, (total, count) in totals.items()}


def collect_head_norms(
    model: nn.Module, groups: Iterable[UnitGroup], data: Iterable, loss_fn: LossFn | None = None,
    num_batches: int = 8,
) -> dict[str, torch.Tensor]:
    """Per head, the mean norm of its contribution over up to `num_batches` batches of
    ``(inputs, targets)`` (targets unused), in eval mode; see :func:`head_output_norms`. Under
    ``torch.distributed`` the sums and token counts of every rank are added up first."""
    groups = list(groups)
    with recording_head_norms(model, groups) as totals, torch.no_grad():
        for_each_batch(model, data, num_batches, lambda inputs, _: as_call(inputs)(model))
    for group in groups:  # every rank sums the same groups, also one whose attention did not run here
        totals.setdefault(group.name, (torch.zeros(group.num_units), 0))
    totals = all_reduce_sum(totals)
    return mean_head_norms({name: seen for name, seen in totals.items() if seen[1]}, groups)
