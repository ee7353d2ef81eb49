"""Attention heads as structural units: find them, remove them, replay the removal, measure them.

Pipeline position: ``find_head_groups`` gives one ``UnitGroup`` (granularity ``"head"``) per
attention module (per stack for T5, whose first layer's per-head position bias feeds the later
ones), in the representation of ``types.py``, so criteria, selection and
``masks.unit_masks_to_param_masks`` work on heads unchanged. A unit is one head, or under
grouped-query attention one key/value head with the query heads that read it. Zeroing a unit's
query/key/value outputs and its output-projection inputs is the masked equivalent of removing it:
its values are 0, so it adds exactly nothing. ``shrink_heads`` removes heads physically and
returns a ``ShrinkRecord`` that ``prunekit.graph.replay`` applies to a fresh model. Head
statistics from data live in ``prunekit.stats.heads``.

Which attention layouts have heads is said in ``prunekit.layers.attention``. Removing heads of an
``nn.MultiheadAttention`` replaces it by a ``PrunedMultiheadAttention``
(``nn.MultiheadAttention`` assumes inner width == embed_dim); other layouts are sliced in place
and their head-count attributes updated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph.masks import validate_keep_units
from prunekit.graph.record import ShrinkRecord, refuse_masked, step_keep_mask
from prunekit.graph.types import Member, UnitGroup
from prunekit.layers.attention import find_attention_groups, looks_like_attention
from prunekit.layers.attention_layout import Attention, AttentionGroup, refresh_shape
from prunekit.layers.pruned_attention import PrunedMultiheadAttention, copy_param
from prunekit.targets import excluded_module_names

GRANULARITY = "head"


def head_group(group: AttentionGroup) -> UnitGroup:
    """The ``UnitGroup`` of one group of attention heads (see :func:`find_head_groups`)."""
    members = tuple(
        Member(head_slice.param, head_slice.dim, head_slice.unit_index)
        for attention in group.attentions
        for head_slice in attention.slices
    )
    return UnitGroup(group.name, GRANULARITY, group.num_units, members, torch.arange(group.num_units))


def find_head_groups(model: nn.Module, exclude: Iterable[str | type] = ()) -> list[UnitGroup]:
    """One ``UnitGroup`` of granularity ``"head"`` per attention module (per T5 stack), with
    ``num_units`` = heads (key/value heads under grouped-query attention).

    Members: the query/key/value output slices (rows of ``nn.Linear`` / packed ``in_proj_weight``,
    columns of GPT-2's ``Conv1D``) with their biases, the output projection's input slices
    (``out_proj``/``output.dense``/``o_proj``/... columns, ``c_proj`` rows) and per-head
    position-bias columns (Swin, T5). Output-projection biases are not per head. Attention
    modules named (or typed) in `exclude`, or whose projections are, are skipped.

    >>> layer = nn.TransformerEncoderLayer(16, 4, batch_first=True)
    >>> [(g.name, g.num_units, len(g.members)) for g in find_head_groups(layer)]
    [('self_attn', 4, 3)]
    """
    if not any(looks_like_attention(module) for module in model.modules()):
        raise PrunekitError(
            f"granularity 'head' needs attention layers; {type(model).__name__} has none "
            "(prunekit recognises nn.MultiheadAttention and the Hugging Face BERT, ALBERT, "
            "DistilBERT, q_proj/k_proj/v_proj (ViT, Swin, Llama, ...), T5 and GPT-2 attention "
            "layouts). Choose 'neuron' or 'channel' for this model"
        )
    excluded = excluded_module_names(model, exclude)
    return [head_group(group) for group in find_attention_groups(model, excluded)]


# ------------------------------------------------------------------ physical removal


def _check_keep(attentions: dict[str, AttentionGroup], groups: list[UnitGroup], keep_heads) -> None:
    for name, keep in keep_heads.items():
        if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool and not bool(keep.any()):
            raise PrunekitError(
                f"keep_heads['{name}'] removes all {len(keep)} heads of attention '{name}'; keep "
                "at least one head, or remove the whole layer (prunekit.graph.layers.remove_layers)"
            )
    validate_keep_units(groups, keep_heads)
    for name, keep in keep_heads.items():
        attention = attentions.get(name)
        if attention is None or attention.num_units != len(keep):
            found = f"{attention.num_units} heads" if attention else "no supported attention"
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


def _plan_sliced(model: nn.Module, attention: Attention, keep: torch.Tensor):
    """Commits that slice every parameter of `attention`'s units and update its head counts."""
    commits = []
    for head_slice in attention.slices:
        owner_name, _, attribute = head_slice.param.rpartition(".")
        owner = model.get_submodule(owner_name)
        param = getattr(owner, attribute)
        owned = head_slice.unit_index >= 0
        keep_slice = torch.ones(len(head_slice.unit_index), dtype=torch.bool)
        keep_slice[owned] = keep[head_slice.unit_index[owned]]
        value = param.detach().index_select(head_slice.dim, keep_slice.nonzero().flatten().to(param.device))

        def commit(owner=owner, attribute=attribute, value=value) -> None:
            copy_param(owner, attribute, value)
            refresh_shape(owner)

        commits.append(commit)
    counts = attention.counts_after(int(keep.sum()))

    def set_counts() -> None:
        for attribute, value in counts.items():
            setattr(attention.module, attribute, value)

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
    Everything is validated and the new weights are built before the model is touched; removing
    every head of an attention is refused. Models with masks attached are refused: ``bake`` them
    first. Rebuild optimisers afterwards. Only the attention modules' own head-count attributes
    change (``num_attention_heads``, ``all_head_size``, ``n_heads``, ``inner_dim``,
    ``split_size``, ...), never a shared ``config``.

    >>> layer = nn.TransformerEncoderLayer(16, 4, batch_first=True)
    >>> record = shrink_heads(layer, {"self_attn": torch.tensor([True, False, True, True])})
    >>> layer.self_attn.num_heads, record.steps[0]["removed"], layer(torch.ones(2, 3, 16)).shape
    (3, [1], torch.Size([2, 3, 16]))
    """
    refuse_masked(model, "shrink_heads removes heads")
    if not isinstance(keep_heads, Mapping):
        raise PrunekitError(
            f"keep_heads must be a dict {{group name: bool tensor}}, got {type(keep_heads).__name__}"
        )
    groups = list(groups) if groups is not None else find_head_groups(model)
    attentions = {group.name: group for group in find_attention_groups(model, names=set(keep_heads))}
    _check_keep(attentions, groups, keep_heads)
    keep_heads = {name: keep.cpu() for name, keep in keep_heads.items() if not bool(keep.all())}
    commits = []
    for name, keep in keep_heads.items():
        for attention in attentions[name].attentions:
            packed = attention.layout == "packed"
            commits += _plan_mha(model, attention, keep) if packed else _plan_sliced(model, attention, keep)
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
