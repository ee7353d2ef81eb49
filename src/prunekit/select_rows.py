"""Selection inside each weight tensor: per output row (``scope="row"``) and N:M patterns.

Both need to know how a weight is laid out: which dim indexes the layer's output rows and which
its input features. The layer's handler says so (``LayerHandler.weight_layout``: ``(0, 1)`` for
``nn.Linear``'s ``(out, in)`` weight, ``(1, 0)`` for a Hugging Face ``Conv1D``'s ``(in, out)``),
the unstructured granularity stores it on each group (``UnitGroup.layout``) and selection reads
it from there; nothing here guesses it from a shape.

* Row scope: every output row of every weight loses the same share (``round(sparsity * n)`` of
  its `n` entries; the lowest scores go first, ties by position), as Wanda compares weights
  (Sun et al. 2023): a row's weights compete only with each other.
* N:M: in every run of M consecutive weights along the input dim, the N highest-scored stay
  (2:4 keeps half). For a 2-D weight whose input dim is its last one this is the layout
  ``torch.sparse.to_sparse_semi_structured`` (NVIDIA sparse tensor cores) accepts for 2:4.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from prunekit.errors import PrunekitError

Layouts = Mapping[str, "tuple[int, int] | None"]
_PATTERN = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def parse_pattern(pattern: object) -> tuple[int, int]:
    """``(N, M)`` of an ``"N:M"`` pattern (keep N of every M consecutive weights), 0 < N < M.

    >>> parse_pattern("2:4"), parse_pattern("4:8")
    ((2, 4), (4, 8))
    """
    match = _PATTERN.fullmatch(pattern) if isinstance(pattern, str) else None
    n, m = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not 0 < n < m:
        raise PrunekitError(f"pattern must be 'N:M' with 0 < N < M, e.g. '2:4' (keep 2 of every 4 consecutive "
                            f"weights along each layer's inputs: 50% sparsity); got {pattern!r}")
    return n, m


def pattern_sparsity(pattern: str) -> float:
    """The share of weights an N:M pattern removes, 1 - N/M.

    >>> pattern_sparsity("2:4"), pattern_sparsity("1:4")
    (0.5, 0.75)
    """
    n, m = parse_pattern(pattern)
    return 1.0 - n / m


def check_layouts(shapes: Mapping[str, Sequence[int]], layouts: Layouts, scope: str,
                  pattern: str | None) -> None:
    """An error, before anything changes, when row scope or an N:M `pattern` cannot apply to the
    weights of `shapes`: a weight without a known layout, a pattern with global scope, or an
    input width that M does not divide (the error names the weight and the width).

    >>> check_layouts({"fc.weight": (4, 6)}, {"fc.weight": (0, 1)}, "layer", "2:4")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: pattern 2:4 keeps 2 of every 4 ... 'fc.weight' reads 6 input features ...
    """
    if pattern is None and scope != "row":
        return
    what = f"pattern {pattern}" if pattern is not None else "scope 'row'"
    if pattern is not None and scope not in ("layer", "row"):
        raise PrunekitError(f"an N:M pattern compares weights within runs of M inside each row; scope '{scope}' "
                            "compares across layers: leave scope unset (or 'row')")
    n, m = parse_pattern(pattern) if pattern is not None else (1, 1)
    for name, shape in shapes.items():
        layout = layouts.get(name)
        if layout is None:
            raise PrunekitError(
                f"{what} needs each weight's output and input dims, and '{name}' (shape {tuple(shape)}) has none: "
                "it works on single weights (granularity 'unstructured') of layers whose handler in "
                f"prunekit.layers gives a weight_layout; leave '{name}' out with exclude=[...]")
        width = shape[layout[1]]
        if width % m:
            raise PrunekitError(
                f"pattern {pattern} keeps {n} of every {m} consecutive weights along each layer's inputs, but "
                f"'{name}' reads {width} input features (dim {layout[1]} of its shape {tuple(shape)}), which {m} "
                f"does not divide; leave the layer out with exclude=['{name}'] or use a pattern whose M divides "
                f"{width}")


def _keep_top(runs: torch.Tensor, keep: int) -> torch.Tensor:
    """Per row of the 2-D `runs`, True for its `keep` highest entries (ties: earlier entries stay)."""
    mask = torch.zeros(runs.shape, dtype=torch.bool)
    order = torch.argsort(runs, dim=1, descending=True, stable=True)
    return mask.scatter_(1, order[:, :keep], True)


def row_keep(scores: torch.Tensor, out_dim: int, sparsity: float) -> torch.Tensor:
    """Keep-mask shaped like `scores` removing ``round(sparsity * n)`` lowest entries of each of
    its output rows (the slices along `out_dim`; `n` entries each).

    >>> row_keep(torch.tensor([[1.0, 4.0, 3.0, 2.0], [8.0, 5.0, 6.0, 7.0]]), 0, 0.5).int().tolist()
    [[0, 1, 1, 0], [1, 0, 0, 1]]
    >>> row_keep(torch.tensor([[1.0, 8.0], [4.0, 5.0], [3.0, 6.0]]), 1, 1 / 3).int().tolist()  # rows are columns
    [[0, 1], [1, 0], [1, 1]]
    """
    rows = scores.cpu().movedim(out_dim, 0)
    flat = rows.reshape(rows.shape[0], -1)
    keep = flat.shape[1] - round(sparsity * flat.shape[1])
    return _keep_top(flat, keep).reshape(rows.shape).movedim(0, out_dim)


def nm_keep(scores: torch.Tensor, in_dim: int, n: int, m: int) -> torch.Tensor:
    """Keep-mask shaped like `scores` keeping the `n` highest of every `m` consecutive entries
    along `in_dim` (whose size `m` must divide).

    >>> nm_keep(torch.tensor([[1.0, 4.0, 3.0, 2.0, 9.0, 0.0, 0.0, 8.0]]), 1, 2, 4).int().tolist()
    [[0, 1, 1, 0, 1, 0, 0, 1]]
    """
    moved = scores.cpu().movedim(in_dim, -1)
    if moved.shape[-1] % m:
        raise PrunekitError(f"{m} does not divide the {moved.shape[-1]} entries along dim {in_dim}; see check_layouts")
    return _keep_top(moved.reshape(-1, m), n).reshape(moved.shape).movedim(-1, in_dim)


def keep_within_rows(scores: Mapping[str, torch.Tensor], layouts: Layouts, sparsity: float | None,
                     scope: str, pattern: str | None) -> dict[str, torch.Tensor]:
    """Keep-masks for row scope at `sparsity`, or for an N:M `pattern` (the pattern decides the
    sparsity), per group; validated by :func:`check_layouts` first.

    >>> keep_within_rows({"w": torch.tensor([[1.0, 4.0, 3.0, 2.0]])}, {"w": (0, 1)}, None, "layer", "1:2")["w"].tolist()
    [[False, True, True, False]]
    """
    check_layouts({name: tuple(score.shape) for name, score in scores.items()}, layouts, scope, pattern)
    if pattern is not None:
        n, m = parse_pattern(pattern)
        return {name: nm_keep(score, layouts[name][1], n, m) for name, score in scores.items()}
    return {name: row_keep(score, layouts[name][0], sparsity or 0.0) for name, score in scores.items()}
