"""Attention heads as structural units: find them, remove them, replay the removal, measure them.

Pipeline position: ``find_head_groups`` gives one ``UnitGroup`` (granularity ``"head"``) per
attention module, in the representation of ``types.py``, so criteria, selection and
``masks.unit_masks_to_param_masks`` work on heads unchanged. Zeroing head h's query/key/value
rows and its output-projection columns is the masked equivalent of removing it: its scores are
0, its values are 0, so it adds exactly nothing. ``shrink_heads`` removes heads physically and
returns a ``ShrinkRecord`` that ``prunekit.graph.replay`` applies to a fresh model. Head
statistics from data live in ``prunekit.stats.heads``.

Which attention layouts have heads is said in ``prunekit.layers.attention``. Removing heads of an
``nn.MultiheadAttention`` replaces it by a ``PrunedMultiheadAttention``
(``nn.MultiheadAttention`` assumes inner width == embed_dim).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph.masks import validate_keep_units
from prunekit.graph.record import ShrinkRecord, refuse_masked, step_keep_mask
from prunekit.graph.types import Member, UnitGroup
from prunekit.layers.attention import HF_PROJECTIONS, Attention, find_attentions, looks_like_attention
from prunekit.layers.pruned_attention import PrunedMultiheadAttention, copy_param
from prunekit.targets import excluded_module_names

GRANULARITY = "head"


def head_group(attention: Attention) -> UnitGroup:
    """The ``UnitGroup`` of one attention module's heads (see :func:`find_head_groups`)."""
    heads = torch.arange(attention.num_heads * attention.head_dim) // attention.head_dim
    base = f"{attention.name}." if attention.name else ""
    if attention.qkv is None:
        names = ["in_proj_weight"] + ["in_proj_bias"] * (attention.module.in_proj_bias is not None)
        members = [Member(base + name, 0, torch.cat([heads] * 3)) for name in names]
    else:
        members = [
            Member(f"{base}{proj}.{kind}", 0, heads)
            for proj, linear in zip(HF_PROJECTIONS, attention.qkv)
            for kind in ("weight", "bias")
            if getattr(linear, kind) is not None
        ]
    members.append(Member(f"{attention.out_proj_name}.weight", 1, heads))
    return UnitGroup(attention.name, GRANULARITY, attention.num_heads, tuple(members), torch.arange(attention.num_heads))


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
    if not any(looks_like_attention(module) for module in model.modules()):
        raise PrunekitError(
            f"granularity 'head' needs attention layers; {type(model).__name__} has none "
            "(prunekit recognises nn.MultiheadAttention and Hugging Face BERT-style "
            "self-attention). Choose 'neuron' or 'channel' for this model"
        )
    excluded = excluded_module_names(model, exclude)
    return [head_group(attention) for attention in find_attentions(model, excluded)]


# ------------------------------------------------------------------ physical removal


def _check_keep(attentions: dict[str, Attention], groups: list[UnitGroup], keep_heads) -> None:
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


def _plan_mha(model: nn.Module, attention: Attention, keep: torch.Tensor):
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
        copy_param(linear, "weight", weight)
        if sliced_bias:
            copy_param(linear, "bias", bias)
        linear.out_features, linear.in_features = linear.weight.shape

    return commit


def _plan_hf(attention: Attention, keep: torch.Tensor):
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
) -> ShrinkRecord:
    """Remove the heads with ``keep_heads[group] == False`` from `model`, in place.

    Returns a ``ShrinkRecord`` (steps of granularity ``"head"``) for ``prunekit.graph.replay``.
    Everything is validated and the new weights are built before the model is touched; removing every head of an attention is refused. Models with
    masks attached are refused: ``bake`` them first. Rebuild optimisers afterwards.

    >>> layer = nn.TransformerEncoderLayer(16, 4, batch_first=True)
    >>> record = shrink_heads(layer, {"self_attn": torch.tensor([True, False, True, True])})
    >>> layer.self_attn.num_heads, record.steps[0]["removed"], layer(torch.ones(2, 3, 16)).shape
    (3, [1], torch.Size([2, 3, 16]))
    """
    refuse_masked(model, "shrink_heads removes heads")
    groups = list(groups) if groups is not None else find_head_groups(model)
    attentions = {attention.name: attention for attention in find_attentions(model)}
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
    return ShrinkRecord(steps)


def replay_head_round(model: nn.Module, example_inputs: object, steps: list[dict], check: bool = True) -> None:
    """Replay one round of head steps of a ``ShrinkRecord`` (`example_inputs`, `check` unused).

    >>> layer = nn.TransformerEncoderLayer(16, 4, batch_first=True)
    >>> record = shrink_heads(layer, {"self_attn": torch.tensor([True, False, True, True])})
    >>> fresh = nn.TransformerEncoderLayer(16, 4, batch_first=True)
    >>> replay_head_round(fresh, None, record.steps)
    >>> fresh.load_state_dict(layer.state_dict())
    <All keys matched successfully>
    """
    groups = {group.name: group for group in find_head_groups(model)}
    keep_heads = {}
    for step in steps:
        group = groups.get(step["group"])
        keep_heads[step["group"]] = step_keep_mask(step, group.num_units if group else None)
    shrink_heads(model, keep_heads, list(groups.values()))
