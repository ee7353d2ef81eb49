"""Tensors stored by their nonzeros: a packed bitmask or CSR indices plus the values, optionally fp16.

Each tensor becomes a small dict of plain types and tensors (so a file of them loads with
``torch.load(weights_only=True)``) in one of three encodings, whichever is smallest:

* ``"dense"``: the values as they are (a mostly-nonzero tensor, an integer or bool buffer);
* ``"bitmask"``: one bit per entry (packed 8 to a byte, little-endian) + the kept values in order;
  costs ``numel / 8 + nnz * value_bytes``;
* ``"csr"``: the tensor viewed as ``(shape[0], rest)`` rows; row pointers (int32) + column
  indices (int16 while a row has at most 32,768 columns, else int32) + the values; costs
  ``4 * (rows + 1) + nnz * (index_bytes + value_bytes)``.

With int16 indices CSR beats the bitmask once fewer than 1 in 16 entries are kept (95% sparse:
0.10 vs 0.125 bytes of index per entry), the bitmask wins below that sparsity: per tensor the
smaller is taken, so no sparsity needs a choice from the caller. The kept positions (the
*support*) are the nonzeros, or a keep-mask given by the caller: a masked weight's mask is then
stored for free as the support of its values. ``-0.0`` is a zero: it comes back as ``0.0``.
With ``fp16`` floating values are rounded to float16 (relative error at most 2**-11) and come
back in their original dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from prunekit.errors import PrunekitError

__all__ = ["ENCODINGS", "FP16_MAX", "decode_state", "decode_tensor", "encode_state", "encode_tensor", "stored_bytes"]

ENCODINGS = ("dense", "bitmask", "csr")
FP16_MAX = 65504.0  # the largest finite float16
# a torch.save record costs about this much beside its data (zip header + name + alignment):
# counted so that a tiny tensor (a bias) is not split into three records to save a few bytes
_RECORD_BYTES = 128
_BIT_WEIGHTS = torch.tensor([1 << bit for bit in range(8)], dtype=torch.int16)


def _pack_bits(support: torch.Tensor) -> torch.Tensor:
    flat = support.flatten().to(torch.int16)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1).to(torch.uint8)


def _unpack_bits(bits: torch.Tensor, count: int) -> torch.Tensor:
    shifted = bits.to(torch.int16).unsqueeze(1) >> torch.arange(8, dtype=torch.int16)
    return (shifted & 1).bool().flatten()[:count]


def _rows_cols(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    rows = shape[0] if len(shape) > 1 else 1
    return rows, (math.prod(shape) // rows if rows else 0)


def _index_dtype(cols: int) -> torch.dtype:
    return torch.int16 if cols <= 2**15 else torch.int32


def _costs(shape: torch.Size, nnz: int, value_bytes: int) -> dict[str, int]:
    numel = math.prod(shape)
    rows, cols = _rows_cols(shape)
    index_bytes = torch.empty(0, dtype=_index_dtype(cols)).element_size()
    return {
        "dense": numel * value_bytes + _RECORD_BYTES,
        "bitmask": math.ceil(numel / 8) + nnz * value_bytes + 2 * _RECORD_BYTES,
        "csr": 4 * (rows + 1) + nnz * (index_bytes + value_bytes) + 3 * _RECORD_BYTES,
    }


def _stored_values(values: torch.Tensor, fp16: bool, name: str) -> torch.Tensor:
    if not (fp16 and values.is_floating_point()):
        return values.contiguous()
    finite = values[torch.isfinite(values)]
    if finite.numel() and finite.abs().max().item() > FP16_MAX:
        raise PrunekitError(
            f"'{name}' holds {finite.abs().max().item():.4g}, beyond float16's largest value {FP16_MAX:g}, "
            "so fp16 storage would turn it into inf; store this model without fp16"
        )
    return values.to(torch.float16).contiguous()


def encode_tensor(tensor: torch.Tensor, *, support: torch.Tensor | None = None, fp16: bool = False,
                  name: str = "tensor") -> dict[str, Any]:
    """The smallest encoding of `tensor` (see the module docstring) as a dict of plain data.

    `support` (bool, `tensor`'s shape) says which entries to keep; default: the nonzeros.
    Entries outside it are stored as zeros. A given support is always kept exactly (never
    ``"dense"``), so it can serve as a keep-mask.

    >>> weight = torch.zeros(100, 400); weight[0, :10] = 1.0
    >>> entry = encode_tensor(weight)
    >>> entry["encoding"], torch.equal(decode_tensor(entry)[0], weight)
    ('csr', True)
    """
    if support is not None and (support.dtype != torch.bool or support.shape != tensor.shape):
        raise PrunekitError(f"the support of '{name}' must be a bool tensor shaped {tuple(tensor.shape)}")
    entry: dict[str, Any] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
    tensor = tensor.detach().cpu()
    if not tensor.is_floating_point() or tensor.dim() == 0:
        return {**entry, "encoding": "dense", "values": tensor.contiguous()}
    keep = tensor != 0 if support is None else support.cpu()
    value_bytes = 2 if fp16 else tensor.element_size()
    costs = _costs(tensor.shape, int(keep.sum()), value_bytes)
    if support is not None:
        del costs["dense"]
    encoding = min(costs, key=costs.get)  # dict order breaks ties: dense, bitmask, csr
    if encoding == "dense":
        return {**entry, "encoding": "dense", "values": _stored_values(tensor, fp16, name)}
    values = _stored_values(tensor[keep], fp16, name)
    if encoding == "bitmask":
        return {**entry, "encoding": "bitmask", "bits": _pack_bits(keep), "values": values}
    rows, cols = _rows_cols(tensor.shape)
    matrix = keep.reshape(rows, cols)
    row_ptr = torch.zeros(rows + 1, dtype=torch.int64)
    row_ptr[1:] = matrix.sum(dim=1).cumsum(0)
    columns = matrix.nonzero()[:, 1].to(_index_dtype(cols))  # row-major, as tensor[keep] is
    return {**entry, "encoding": "csr", "row_ptr": row_ptr.to(torch.int32), "columns": columns, "values": values}


def stored_bytes(entry: Mapping[str, Any]) -> int:
    """Bytes of tensor data in an encoded entry (what it costs on disk, record overheads aside).

    >>> stored_bytes(encode_tensor(torch.zeros(3, dtype=torch.int64)))
    24
    """
    return sum(value.numel() * value.element_size() for value in entry.values() if isinstance(value, torch.Tensor))


def _corrupt(name: str, problem: str) -> PrunekitError:
    return PrunekitError(f"stored tensor '{name}' is corrupt: {problem}; the file was damaged after it was "
                         "written (save the model again)")


def _field(entry: Mapping[str, Any], key: str, name: str, dtypes: tuple[torch.dtype, ...] | None = None,
           length: int | None = None) -> torch.Tensor:
    value = entry.get(key)
    if not isinstance(value, torch.Tensor) or (value.dim() != 1 and key != "values"):
        raise _corrupt(name, f"its '{key}' entry is missing or not a 1-d tensor")
    if dtypes is not None and value.dtype not in dtypes:
        raise _corrupt(name, f"its '{key}' entry has dtype {value.dtype}")
    if length is not None and value.numel() != length:
        raise _corrupt(name, f"its '{key}' entry has {value.numel()} entries, expected {length}")
    return value


def _header(entry: Any, name: str) -> tuple[str, tuple[int, ...], torch.dtype]:
    if not isinstance(entry, Mapping) or entry.get("encoding") not in ENCODINGS:
        raise _corrupt(name, f"it is not an encoded tensor (one of {', '.join(ENCODINGS)})")
    shape, dtype = entry.get("shape"), getattr(torch, str(entry.get("dtype")), None)
    if not (isinstance(shape, list) and all(isinstance(size, int) and size >= 0 for size in shape)):
        raise _corrupt(name, f"its shape {shape!r} is not a list of sizes")
    if not isinstance(dtype, torch.dtype):
        raise _corrupt(name, f"its dtype {entry.get('dtype')!r} is not a torch dtype")
    return entry["encoding"], tuple(shape), dtype


def _decode_csr(entry: Mapping[str, Any], name: str, shape: tuple[int, ...]) -> torch.Tensor:
    rows, cols = _rows_cols(shape)
    row_ptr = _field(entry, "row_ptr", name, (torch.int32, torch.int64), rows + 1).long()
    columns = _field(entry, "columns", name, (torch.int16, torch.int32, torch.int64)).long()
    counts = row_ptr.diff()
    if row_ptr[0] != 0 or (counts < 0).any() or row_ptr[-1] != columns.numel():
        raise _corrupt(name, "its row pointers do not run from 0 up to the number of column indices")
    if columns.numel() and (columns.min() < 0 or columns.max() >= cols):
        raise _corrupt(name, f"a column index lies outside 0..{cols - 1}")
    flat = torch.repeat_interleave(torch.arange(rows), counts) * cols + columns
    if (flat.diff() <= 0).any():  # the values follow the positions in row-major order
        raise _corrupt(name, "its column indices do not increase within a row")
    support = torch.zeros(math.prod(shape), dtype=torch.bool)
    support[flat] = True
    return support


def decode_tensor(entry: Mapping[str, Any], name: str = "tensor") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(tensor, support)`` of an entry made by :func:`encode_tensor`; support is None for
    ``"dense"``. Every length and index is checked first: a damaged entry raises a PrunekitError.

    >>> tensor, support = decode_tensor(encode_tensor(torch.tensor([0.0, 2.0, 0.0, 0.0] * 40)))
    >>> tensor[:4].tolist(), int(support.sum())
    ([0.0, 2.0, 0.0, 0.0], 40)
    """
    encoding, shape, dtype = _header(entry, name)
    numel = math.prod(shape)
    if encoding == "dense":
        values = _field(entry, "values", name, length=numel)
        return values.to(dtype).reshape(shape), None
    if encoding == "bitmask":
        support = _unpack_bits(_field(entry, "bits", name, (torch.uint8,), math.ceil(numel / 8)), numel)
    else:
        support = _decode_csr(entry, name, shape)
    values = _field(entry, "values", name, length=int(support.sum()))
    if not values.is_floating_point():
        raise _corrupt(name, f"its values have dtype {values.dtype}, not a floating dtype")
    tensor = torch.zeros(numel, dtype=dtype)
    tensor[support] = values.to(dtype)
    return tensor.reshape(shape), support.reshape(shape)


def encode_state(state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], *,
                 fp16: bool = False) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Encode every tensor of `state`; a masked one keeps exactly its keep-mask's entries, so the
    mask is stored as the support (returned: the names whose mask that is). All tensors are
    encoded (and fp16 overflow refused) before anything is returned.

    >>> state = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    >>> entries, masked = encode_state(state, {"w": torch.tensor([[True, False], [False, True]])})
    >>> decode_state(entries, masked)[0]["w"].tolist(), masked
    ([[1.0, 0.0], [0.0, 4.0]], ['w'])
    """
    entries = {name: encode_tensor(tensor, support=masks.get(name), fp16=fp16, name=name)
               for name, tensor in state.items()}
    return entries, [name for name in masks if name in state]


def decode_state(entries: Mapping[str, Any], masked: list[str]) -> tuple[dict[str, torch.Tensor],
                                                                          dict[str, torch.Tensor]]:
    """``(state_dict, masks)`` from :func:`encode_state`'s output (every entry checked)."""
    if not isinstance(entries, Mapping) or not isinstance(masked, list):
        raise PrunekitError("the stored tensors are not a dict of encoded entries with a list of masked names; "
                            "the file is damaged (save the model again)")
    state, supports = {}, {}
    for name, entry in entries.items():
        state[name], supports[name] = decode_tensor(entry, str(name))
    masks = {}
    for name in masked:
        if supports.get(name) is None:
            raise _corrupt(str(name), "it is listed as masked but stores no keep-mask")
        masks[name] = supports[name]
    return state, masks
