"""prunekit under ``torch.distributed``: statistics summed over ranks, masks checked to agree.

Launched with ``torchrun --nproc_per_node N`` and wrapped in ``DistributedDataParallel``, every
rank holds the same weights but sees its own shard of the data. Data-driven statistics are
therefore summed over ranks before they are averaged (``all_reduce_sum``; the statistics
collectors in ``prunekit.stats`` do it themselves), so every rank scores units on the union of
the data and computes the same masks; ``check_masks_agree`` proves it with a checksum before a
pruning pass changes the model. Weights (magnitude, L1, ...) and seeded random scores need
nothing: they are already the same everywhere.

Without an initialised process group (or with one rank) every helper here is a no-op, so the
same code runs in one process. Tensors may live on any device: for the collective they move to
the backend's device (CUDA for NCCL, CPU otherwise) and come back where they were.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from prunekit.errors import PrunekitError

_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel)


def in_process_group() -> bool:
    """True once ``torch.distributed`` is initialised, even with one rank (``torchrun
    --nproc_per_node 1`` with DistributedDataParallel still needs masks attached before it).

    >>> in_process_group()
    False
    """
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group of more than one rank
    (only then is there anything to reduce or compare).

    >>> is_distributed()
    False
    """
    return in_process_group() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of ranks (1 outside ``torch.distributed``).

    >>> world_size()
    1
    """
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 outside ``torch.distributed``).

    >>> rank()
    0
    """
    return dist.get_rank() if is_distributed() else 0


def _collective_device() -> torch.device:
    """Where a collective's tensors must live: the current CUDA device for NCCL, else the CPU."""
    if str(dist.get_backend()) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


Path = tuple  # the keys and indices that lead to a leaf of a nested dict / list / tuple


def _leaves(tree: Any, path: Path = ()) -> list[tuple[Path, Any]]:
    """``(path, leaf)`` for every tensor or number in a nested dict / list / tuple, keys sorted
    (so ranks that filled a dict in another order still line up)."""
    if isinstance(tree, Mapping):
        return [leaf for key in sorted(tree, key=str) for leaf in _leaves(tree[key], (*path, key))]
    if isinstance(tree, (list, tuple)):
        return [leaf for index, item in enumerate(tree) for leaf in _leaves(item, (*path, index))]
    if isinstance(tree, (torch.Tensor, int, float)) and not isinstance(tree, bool):
        return [(path, tree)]
    raise PrunekitError(
        f"cannot sum {type(tree).__name__} at {list(path)} across ranks; pass nested dicts, lists or tuples "
        "of tensors and numbers"
    )


def _rebuild(tree: Any, values: dict[Path, Any], path: Path = ()) -> Any:
    """`tree` with every leaf replaced by ``values[path]`` (same containers, same key order)."""
    if isinstance(tree, Mapping):
        return {key: _rebuild(item, values, (*path, key)) for key, item in tree.items()}
    if isinstance(tree, (list, tuple)):
        rebuilt = [_rebuild(item, values, (*path, index)) for index, item in enumerate(tree)]
        return rebuilt if isinstance(tree, list) else type(tree)(rebuilt)
    return values[path]


def _as_tensor(leaf: torch.Tensor | int | float) -> torch.Tensor:
    if isinstance(leaf, torch.Tensor):
        return leaf.detach()
    return torch.tensor(leaf, dtype=torch.int64 if isinstance(leaf, int) else torch.float64)


def _wire_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a leaf is summed in: half precisions in float32 (not every backend sums them)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _agree_everywhere(numbers: torch.Tensor) -> torch.Tensor:
    """Per entry of an int64 vector, True where every rank holds the same value (one collective)."""
    both = torch.cat([numbers, -numbers]).to(_collective_device())
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    highest, lowest = both.cpu().chunk(2)
    return highest == -lowest


def _check_same_structure(leaves: list[tuple[Path, torch.Tensor]]) -> None:
    layout = ";".join(f"{list(path)}:{tuple(tensor.shape)}:{_wire_dtype(tensor.dtype)}" for path, tensor in leaves)
    if not bool(_agree_everywhere(torch.tensor([zlib.crc32(layout.encode())], dtype=torch.int64)).all()):
        raise PrunekitError(
            f"rank {rank()} was asked to sum statistics whose names, shapes or dtypes differ from another rank's "
            f"(here: {layout[:200]}); every rank must run the same model and prunekit call, on data of the same "
            "structure, at the same step"
        )


def all_reduce_sum(tree: Any) -> Any:
    """Sum a nested dict / list / tuple of tensors and numbers over all ranks; every rank gets
    the totals, each leaf on its own device with its own dtype (numbers stay numbers).

    Call it on every rank with trees of the same structure (checked first, so a mismatch raises
    on every rank instead of hanging). Outside ``torch.distributed`` it returns `tree` itself.
    One collective per dtype, whatever the number of leaves.

    >>> all_reduce_sum({"sum": torch.ones(2), "count": 3})
    {'sum': tensor([1., 1.]), 'count': 3}
    """
    if not is_distributed():
        return tree
    leaves = [(path, _as_tensor(leaf)) for path, leaf in _leaves(tree)]
    _check_same_structure(leaves)
    summed: dict[Path, Any] = {}
    device = _collective_device()
    for dtype in dict.fromkeys(_wire_dtype(tensor.dtype) for _, tensor in leaves):
        same_dtype = [(path, tensor) for path, tensor in leaves if _wire_dtype(tensor.dtype) == dtype]
        flat = torch.cat([tensor.to(device=device, dtype=dtype).reshape(-1) for _, tensor in same_dtype])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for (path, tensor), total in zip(same_dtype, flat.split([tensor.numel() for _, tensor in same_dtype])):
            summed[path] = total.reshape(tensor.shape).to(device=tensor.device, dtype=tensor.dtype)
    originals = dict(_leaves(tree))
    return _rebuild(tree, {path: value if isinstance(originals[path], torch.Tensor) else value.item()
                           for path, value in summed.items()})


def all_reduce_mean(tree: Any, weight: float | int = 1) -> Any:
    """The weighted mean over ranks of a nested dict / list / tuple of tensors and numbers:
    ``sum_r(weight_r * tree_r) / sum_r(weight_r)``.

    With `weight` = how many batches (or examples) this rank averaged `tree` over, the result
    is the average one process would compute over every rank's data together. Outside
    ``torch.distributed`` it returns `tree` itself. A total weight of zero is an error.

    >>> all_reduce_mean({"grad_abs": torch.tensor([0.5, 2.0])}, weight=4)
    {'grad_abs': tensor([0.5000, 2.0000])}
    """
    if not is_distributed():
        return tree
    scaled = _rebuild(tree, {path: leaf * weight for path, leaf in _leaves(tree)})
    totals = all_reduce_sum({"tree": scaled, "weight": float(weight)})
    if totals["weight"] == 0:
        raise PrunekitError(
            "the weights passed to all_reduce_mean sum to zero over all ranks (no rank saw any data); pass "
            "each rank's number of batches or examples"
        )
    return _rebuild(tree, {path: leaf / totals["weight"] for path, leaf in _leaves(totals["tree"])})


def _disagreement(masks: Mapping[str, torch.Tensor]) -> str | None:
    """None when every rank holds the same `masks`; else what differs first (collective)."""
    names = sorted(masks)
    layout = ";".join(f"{name}:{tuple(masks[name].shape)}" for name in names)
    if not bool(_agree_everywhere(torch.tensor([len(names), zlib.crc32(layout.encode())])).all()):
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return f"the ranks hold different sets of them; this one holds {len(names)}: {shown}"
    checksums = torch.tensor(
        [zlib.crc32(masks[name].detach().to(torch.bool).cpu().contiguous().numpy().tobytes()) for name in names],
        dtype=torch.int64,
    )
    agree = _agree_everywhere(checksums)
    differing = [name for name, same in zip(names, agree.tolist()) if not same]
    return f"first at '{differing[0]}'" if differing else None


def masks_agree(masks: Mapping[str, torch.Tensor]) -> bool:
    """True when every rank holds the same keep-masks (names, shapes and values); call it on
    every rank. Compares one CRC32 per mask, not the masks themselves. Always True outside
    ``torch.distributed``.

    >>> masks_agree({"fc.weight": torch.ones(2, 3, dtype=torch.bool)})
    True
    """
    return not is_distributed() or _disagreement(masks) is None


def check_masks_agree(masks: Mapping[str, torch.Tensor], what: str = "keep-masks") -> None:
    """Raise ``PrunekitError`` on every rank, naming the first parameter (or unit group) whose
    `masks` differ between ranks; call it on every rank. A no-op outside ``torch.distributed``.

    >>> check_masks_agree({"fc.weight": torch.ones(2, 3, dtype=torch.bool)})
    """
    if not is_distributed():
        return
    differing = _disagreement(masks)
    if differing is not None:
        raise PrunekitError(
            f"the {what} differ between the {world_size()} torch.distributed ranks ({differing}; seen on rank "
            f"{rank()}), so the ranks would train different models. Give every rank the same weights (wrap the model "
            "in DistributedDataParallel), the same Pruner settings and seed, and call pruner.step() at the same "
            "steps on every rank"
        )


def refuse_wrapper(model: nn.Module) -> None:
    """Raise ``PrunekitError`` for a ``DistributedDataParallel`` / ``DataParallel`` wrapper: prunekit
    prunes the model inside it, and must attach its masks before the wrapper is built.

    >>> refuse_wrapper(nn.Linear(2, 2))
    """
    if isinstance(model, _WRAPPERS):
        kind = type(model).__name__
        raise PrunekitError(
            f"got a {kind} wrapper; prune the model inside it, and build the Pruner before the wrapper: "
            f"pruner = Pruner(model, ...); wrapped = {kind}(model). The wrapper hooks the gradients of the "
            "parameters it sees when it is built, and the masks prunekit attaches must already be there"
        )
