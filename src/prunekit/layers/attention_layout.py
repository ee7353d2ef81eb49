"""Value types for attention layers whose heads can be removed, and the few layer-type facts head
pruning needs (which way a projection's weight is stored, how to refresh its sizes).

A *unit* is what head pruning removes together: one head, or, under grouped-query attention, one
key/value head together with the query heads that read it. An ``Attention`` lists every parameter
slice that belongs to a unit (``HeadSlice``); an ``AttentionGroup`` is one or more attention modules
whose units can only go together (T5 passes the first layer's per-head position bias to every
later layer of the stack, so head h of every layer is one unit).

The layouts that produce these live in ``attention.py`` (``nn.MultiheadAttention``) and
``hf_attention.py`` (Hugging Face models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: attribute kinds an attention module may hold, updated when units are removed
HEADS, KV_HEADS, INNER = "heads", "kv_heads", "inner"


@dataclass(frozen=True, eq=False)
class HeadSlice:
    """Slices of parameter `param` (dotted name in the model) along `dim`: slice ``i`` belongs to
    unit ``unit_index[i]`` (``-1``: to no unit).

    >>> HeadSlice("attn.q.weight", 0, unit_index(8, 4)).unit_index.tolist()
    [0, 0, 0, 0, 1, 1, 1, 1]
    """

    param: str
    dim: int
    unit_index: torch.Tensor


@dataclass(frozen=True, eq=False)
class Attention:
    """One attention module whose units can be removed.

    `unit_width` is one unit's width at the output projection's input (query heads per unit x
    head size); `slices` are every parameter slice that goes with a unit; `counts` names the
    module's integer attributes that removal updates, each with its kind (``"heads"``: query
    heads, ``"kv_heads"``: key/value heads, ``"inner"``: query heads x head size).
    """

    name: str
    module: nn.Module
    layout: str
    num_units: int
    unit_width: int
    out_proj: nn.Module
    out_proj_name: str
    slices: tuple[HeadSlice, ...]
    counts: tuple[tuple[str, str], ...] = ()
    queries_per_unit: int = 1

    def counts_after(self, kept_units: int) -> dict[str, int]:
        """The values of the `counts` attributes once only `kept_units` units are left.

        >>> attention = Attention("a", nn.Identity(), "x", 2, 16, nn.Identity(), "o", (),
        ...                       (("num_heads", "heads"), ("num_key_value_heads", "kv_heads")), 2)
        >>> attention.counts_after(1)
        {'num_heads': 2, 'num_key_value_heads': 1}
        """
        values = {HEADS: kept_units * self.queries_per_unit, KV_HEADS: kept_units, INNER: kept_units * self.unit_width}
        return {attribute: values[kind] for attribute, kind in self.counts}


@dataclass(frozen=True, eq=False)
class AttentionGroup:
    """Attention modules whose units are removed together; named after the first one."""

    name: str
    attentions: tuple[Attention, ...]

    @property
    def num_units(self) -> int:
        return self.attentions[0].num_units


def unit_index(width: int, slices_per_unit: int, blocks: int = 1) -> torch.Tensor:
    """Unit of each of ``blocks * width`` slices when consecutive runs of `slices_per_unit` form one
    unit and the pattern repeats `blocks` times (packed q/k/v).

    >>> unit_index(4, 2, blocks=2).tolist()
    [0, 0, 1, 1, 0, 0, 1, 1]
    """
    return (torch.arange(width) // slices_per_unit).repeat(blocks)


def is_conv1d_like(module: nn.Module) -> bool:
    """A transformers ``Conv1D`` (weight ``(in, out)``), also once a mask parametrizes it.

    >>> is_conv1d_like(nn.Linear(2, 2))
    False
    """
    if not any(cls.__name__ == "Conv1D" for cls in type(module).__mro__):
        return False
    weight = getattr(module, "weight", None)
    shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
    return shape == (getattr(module, "nx", None), getattr(module, "nf", None))


def out_width(module: nn.Module) -> int | None:
    """Output width of a Linear or Conv1D projection, else None.

    >>> out_width(nn.Linear(3, 5))
    5
    """
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.nf if is_conv1d_like(module) else None


def in_width(module: nn.Module) -> int | None:
    """Input width of a Linear or Conv1D projection, else None.

    >>> in_width(nn.Linear(3, 5))
    3
    """
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.nx if is_conv1d_like(module) else None


def is_projection(module: nn.Module) -> bool:
    """Whether `module` is a Linear or a Conv1D.

    >>> is_projection(nn.Linear(2, 2)), is_projection(nn.LayerNorm(2))
    (True, False)
    """
    return out_width(module) is not None


def slice_role(module: nn.Module, attribute: str, dim: int) -> str:
    """What slice `dim` of parameter `attribute` of `module` is to a unit: ``"in"`` (query/key/value
    outputs, the unit's own weights), ``"out"`` (output-projection inputs) or ``"table"``
    (per-head position biases).

    >>> slice_role(nn.Linear(4, 8), "weight", 0), slice_role(nn.Linear(8, 4), "weight", 1)
    ('in', 'out')
    """
    if attribute.startswith("in_proj"):  # packed nn.MultiheadAttention
        return "in"
    if is_conv1d_like(module):  # weight stored (in, out): outputs are columns
        return "in" if dim == 1 or attribute == "bias" else "out"
    if isinstance(module, nn.Linear):
        return "in" if dim == 0 else "out"
    return "table"


def output_weight(attention: Attention) -> torch.Tensor:
    """The output projection's weight as ``(out, inner)`` (Conv1D stores it transposed).

    >>> proj = nn.Linear(8, 4)
    >>> output_weight(Attention("a", nn.Identity(), "x", 2, 4, proj, "o", ())).shape
    torch.Size([4, 8])
    """
    weight = attention.out_proj.weight
    return weight.t() if is_conv1d_like(attention.out_proj) else weight


def refresh_shape(module: nn.Module) -> None:
    """Make a sliced Linear / Conv1D / Embedding's size attributes match its weight again.

    >>> linear = nn.Linear(4, 3)
    >>> linear.weight = nn.Parameter(linear.weight[:2])
    >>> refresh_shape(linear); linear.out_features
    2
    """
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        return
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif any(cls.__name__ == "Conv1D" for cls in type(module).__mro__):
        module.nx, module.nf = weight.shape
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = weight.shape
