"""`SparseLinear`: an inference-only ``nn.Linear`` that multiplies only the weight's nonzeros.

Kernels, each computing ``y = x @ W.T + b``:

* ``"csr"``: ``torch.sparse_csr`` with int32 indices (torch's MKL path on x86); ``torch.addmv``
  for a single row, ``torch.addmm`` for more.
* ``"bag"``: ``torch.embedding_bag`` in sum mode with per-sample weights, torch's fused
  gather-multiply-add for recommender models, used as a sparse matrix product: each output
  unit is a "bag" of the input features its weight row keeps, weighted by the kept values.
  On a 2-core x86 box it was about twice as fast as ``"csr"`` at 64 rows, slower at 1 row.
* ``"native"``: prunekit's compiled kernel (:mod:`prunekit.deploy.native_kernel`), built on
  first use; it splits rows over torch's threads and returns ``(rows, out)`` directly. Where it
  cannot be built, a layer told to use it runs ``"bag"`` (the same product).
* ``"dense"``: the plain dense product (a dense copy of the weight is kept only if some row
  count uses it).

Which kernel runs depends on how many rows (inputs flattened to ``(rows, in_features)``) a call
brings: ``kernels`` maps row counts to kernels, and a call uses the entry of the nearest row
count (by ratio: 16 rows is as near to 4 as to 64).
:func:`prunekit.deploy.sparse_inference.sparse_inference` measures it.

The torch kernels work on activations laid out as ``(features, rows)``, so each feature's
values for all rows lie next to each other. The layer transposes its input (a copy, unless the
input is already a transposed view) and, with ``transposed_output``, returns ``(rows, out)`` as a
transposed *view* of its ``(out, rows)`` result that the next sparse layer reads without a copy.
The values are the same, but such an output is not contiguous: a ``.view`` that merges its
dimensions fails (``.reshape`` works). ``sparse_inference`` checks the model still runs and
otherwise turns the views off.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.deploy.native_kernel import native_function
from prunekit.errors import PrunekitError

__all__ = ["KERNELS", "SPARSE_KERNELS", "SparseLinear"]

#: the sparse kernels, and every kernel a SparseLinear can run
SPARSE_KERNELS = ("csr", "bag", "native")
KERNELS = (*SPARSE_KERNELS, "dense")
_FLOAT_TYPES = (torch.float32, torch.float64)


class SparseLinear(nn.Module):
    """Inference-only replacement of an ``nn.Linear`` that stores its weight's nonzeros.

    Build one with :meth:`from_linear`; it computes what the Linear computes up to float
    summation order. `kernels` is a kernel name or ``{row count: kernel}`` (see the module
    docstring). Weight and bias are buffers, so ``parameters()`` is empty. Inputs may have any
    number of leading dimensions, like ``nn.Linear``.

    >>> linear = nn.Linear(4, 3)
    >>> with torch.no_grad():
    ...     linear.weight[:, :2] = 0
    >>> sparse = SparseLinear.from_linear(linear, {1: "csr", 8: "bag"})
    >>> x = torch.randn(5, 4)
    >>> sparse.nnz, sparse.kernel_for(2), sparse.kernel_for(5)
    (6, 'csr', 'bag')
    >>> torch.allclose(sparse(x), linear(x), atol=1e-6)
    True
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None,
                 kernels: str | Mapping[int, str] = "bag", transposed_output: bool = True) -> None:
        super().__init__()
        table = _kernel_table(kernels)
        _check_weight(weight, bias)
        self.out_features, self.in_features = weight.shape
        self.kernels = table
        self._row_counts = sorted(table)
        self._only_kernel = next(iter(table.values())) if len(table) == 1 else None
        self.transposed_output = transposed_output
        rows, cols = weight.detach().nonzero(as_tuple=True)  # row-major order, as CSR stores them
        row_offsets = torch.zeros(self.out_features + 1, dtype=torch.int64, device=weight.device)
        row_offsets[1:] = torch.bincount(rows, minlength=self.out_features).cumsum(0)
        self.register_buffer("values", weight.detach()[rows, cols].clone())
        self.register_buffer("col_indices", cols.to(torch.int32))
        self.register_buffer("row_offsets", row_offsets.to(torch.int32))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        dense = weight.detach().clone() if "dense" in table.values() else None
        self.register_buffer("dense", dense)
        self._csr: torch.Tensor | None = None  # built on first use by the "csr" kernel

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernels: str | Mapping[int, str] = "bag",
                    transposed_output: bool = True) -> "SparseLinear":
        """A SparseLinear computing what `linear` computes (its weight as the forward sees it).

        >>> SparseLinear.from_linear(nn.Linear(3, 2), "csr")
        SparseLinear(in_features=3, out_features=2, nnz=6, kernels={1: 'csr'}, bias=True)
        """
        if not isinstance(linear, nn.Linear):
            raise PrunekitError(f"from_linear takes an nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias, kernels, transposed_output)

    @property
    def nnz(self) -> int:
        """How many weights are stored (the nonzeros)."""
        return int(self.values.numel())

    def kernel_for(self, rows: int) -> str:
        """The kernel a call with `rows` rows runs: that of the nearest row count in the table,
        nearness measured by ratio (the larger one on a tie).

        >>> SparseLinear.from_linear(nn.Linear(2, 2), {1: "csr", 64: "bag"}).kernel_for(16)
        'bag'
        """
        if self._only_kernel is not None:
            return self._only_kernel
        index = bisect.bisect_right(self._row_counts, rows)
        if index == 0:
            return self.kernels[self._row_counts[0]]
        if index == len(self._row_counts):
            return self.kernels[self._row_counts[-1]]
        below, above = self._row_counts[index - 1], self._row_counts[index]
        return self.kernels[below if rows * rows < below * above else above]

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense ``(out_features, in_features)`` tensor.

        >>> linear = nn.Linear(3, 2)
        >>> torch.equal(SparseLinear.from_linear(linear).dense_weight(), linear.weight.detach())
        True
        """
        return self._csr_tensor().to_dense()

    def __getstate__(self) -> dict:
        # torch can neither deepcopy nor pickle a CSR tensor; it is rebuilt from the buffers
        return {**self.__dict__, "_csr": None}

    def _csr_tensor(self) -> torch.Tensor:
        """The weight as torch.sparse_csr, sharing the buffers' memory (rebuilt after .to())."""
        csr = self._csr
        if csr is None or csr.values().data_ptr() != self.values.data_ptr():
            with warnings.catch_warnings():  # torch warns once that its CSR support is "beta"
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                csr = torch.sparse_csr_tensor(self.row_offsets, self.col_indices, self.values,
                                              (self.out_features, self.in_features),
                                              check_invariants=False)  # built right above
            self._csr = csr
        return csr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # kept lean: at 95% sparsity the Python here costs as much as the kernel itself
        shape = x.shape
        if shape[-1] != self.in_features:
            raise PrunekitError(
                f"SparseLinear expects inputs with {self.in_features} features in the last "
                f"dimension, got shape {tuple(shape)}"
            )
        flat = x if len(shape) == 2 else x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        kernel = self.kernel_for(rows)
        if kernel == "dense":
            return F.linear(x, self.dense, self.bias)
        # the compiled kernel has no backward and runs CPU tensors: other inputs run "bag"
        native = (native_function() if kernel == "native" and flat.device.type == "cpu"
                  and not flat.requires_grad else None)
        if native is not None:
            out = native(self.values, self.col_indices, self.row_offsets, flat.contiguous(), self.bias)
        elif rows == 1 and kernel == "csr":
            out = self._matrix_vector(flat[0]).unsqueeze(0)
        else:
            out = self._matrix_matrix(_transposed(flat), kernel).t()  # a view
            if not self.transposed_output:
                out = out.contiguous()
        return out if len(shape) == 2 else out.reshape(*shape[:-1], self.out_features)

    def _matrix_vector(self, column: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.mv(self._csr_tensor(), column)
        return torch.addmv(self.bias, self._csr_tensor(), column)

    def _matrix_matrix(self, features_by_rows: torch.Tensor, kernel: str) -> torch.Tensor:
        """(out, rows) = W @ (in, rows), plus the bias down each column."""
        if kernel == "csr":
            if self.bias is None:
                return torch.sparse.mm(self._csr_tensor(), features_by_rows)
            return torch.addmm(self.bias.unsqueeze(1), self._csr_tensor(), features_by_rows)
        # torch.embedding_bag(weight, indices, offsets, scale_grad_by_freq, mode 0 = sum,
        # sparse, per_sample_weights, include_last_offset): F.embedding_bag without its checks
        out = torch.embedding_bag(features_by_rows, self.col_indices, self.row_offsets, False, 0,
                                  False, self.values, True)[0]
        return out if self.bias is None else out.add_(self.bias.unsqueeze(1))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, kernels={self.kernels}, bias={self.bias is not None}")


def _transposed(flat: torch.Tensor) -> torch.Tensor:
    """`flat` (rows, features) as a contiguous (features, rows) tensor; no copy when `flat` is
    itself a transposed view (the output of a SparseLinear)."""
    features_by_rows = flat.t()
    if features_by_rows.is_contiguous():
        return features_by_rows
    if flat.device.type == "cpu" and not flat.requires_grad:
        # numpy's strided copy transposed (64, 784) float32 about 1.5x faster than torch's
        # .contiguous(), and into memory torch allocates the kernel after it ran ~10 us
        # faster than into numpy's own (measured on x86 with torch 2.13)
        out = torch.empty(features_by_rows.shape, dtype=flat.dtype)
        np.copyto(out.numpy(), flat.numpy().T)
        return out
    return features_by_rows.contiguous()


def _kernel_table(kernels: str | Mapping[int, str]) -> dict[int, str]:
    table = {1: kernels} if isinstance(kernels, str) else dict(kernels)
    if not table:
        raise PrunekitError("kernels is empty; give a kernel name or {row count: kernel}")
    for rows, kernel in table.items():
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise PrunekitError(f"kernels maps row counts (ints >= 1) to kernels; got key {rows!r}")
        if kernel not in KERNELS:
            raise PrunekitError(f"unknown kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")
    return dict(sorted(table.items()))


def _check_weight(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if weight.dim() != 2 or weight.layout != torch.strided:
        raise PrunekitError(
            f"SparseLinear needs a dense 2-D weight (out_features, in_features), got a "
            f"{weight.layout} tensor of shape {tuple(weight.shape)}"
        )
    if weight.dtype not in _FLOAT_TYPES:
        raise PrunekitError(
            f"SparseLinear runs float32 or float64 weights, got {weight.dtype}; convert the "
            "model with model.float() first"
        )
    if weight.numel() >= 2**31:
        raise PrunekitError(
            f"a weight of shape {tuple(weight.shape)} has too many entries for int32 indices"
        )
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype):
        raise PrunekitError(
            f"the bias must be a {weight.dtype} vector of {weight.shape[0]} values, got "
            f"{bias.dtype} of shape {tuple(bias.shape)}"
        )
