"""Input Hessians: ``H = 2 XᵀX / n`` of the inputs of chosen layers, for SparseGPT.

``X`` holds every input row a layer saw (a token of a sequence, a sample of a batch) as one row
of input features; the layer's handler (``prunekit.layers``) says how its input becomes such
rows, so a ``Conv1D``'s transposed weight needs nothing here. ``H`` is kept as a running mean
over the rows seen so far, so it stays well scaled however many tokens pass. Each layer's
matrix is in x in: collect one block's layers at a time (``prunekit.sequential`` does) and
memory stays bounded by one block.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.layers import handler_for, require_input_width
from prunekit.stats.loop import module_hooks


@dataclass
class InputHessian:
    """``2 XᵀX / n`` of the `tokens` input rows seen so far (`matrix`, in x in).

    >>> hessian = InputHessian(torch.zeros(2, 2))
    >>> hessian.add(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
    >>> hessian.matrix, hessian.tokens
    (tensor([[2., 2.],
            [2., 4.]]), 2)
    """

    matrix: torch.Tensor
    tokens: int = 0

    def add(self, rows: torch.Tensor) -> None:
        """Fold input rows ``(n, in)`` into the running mean."""
        count = rows.shape[0]
        if count == 0:
            return
        total = self.tokens + count
        rows = rows.detach().to(self.matrix.dtype)
        self.matrix.addmm_(rows.t(), rows, beta=self.tokens / total, alpha=2.0 / total)
        self.tokens = total


class HessianCollector:
    """Context manager: while inside, every call of the layers named `names` (modules of `model`)
    adds its input rows to that layer's :class:`InputHessian` (`hessians`, by module name). Set
    `token_mask` (bool, shaped like the input's leading dimensions, e.g. ``(batch, sequence)``)
    before a call to count only the rows it marks (padding left out); None counts every row.
    Hooks are removed on exit, also on error.

    >>> layer = nn.Linear(2, 1)
    >>> with HessianCollector(layer, [""]) as collector:
    ...     _ = layer(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
    >>> collector.hessians[""].matrix
    tensor([[2., 2.],
            [2., 4.]])
    """

    def __init__(self, model: nn.Module, names: Iterable[str], dtype: torch.dtype = torch.float32) -> None:
        self.token_mask: torch.Tensor | None = None
        self.hessians: dict[str, InputHessian] = {}
        self._model = model
        self._modules = {}
        for name in names:
            module = model.get_submodule(name)
            handler = handler_for(module)
            width = require_input_width(module, name)
            device = next(module.parameters()).device
            self.hessians[name] = InputHessian(torch.zeros(width, width, dtype=dtype, device=device))
            self._modules[name] = (module, handler)
        self._hooks = None

    def _hook_for(self, name: str):
        hessian = self.hessians[name]
        handler = self._modules[name][1]

        def hook(module: nn.Module, args: tuple) -> None:
            rows = handler.input_features(module, args)
            mask = self.token_mask
            if mask is not None and mask.numel() == rows.shape[0]:
                rows = rows[mask.reshape(-1).to(rows.device)]
            hessian.add(rows)
        return hook

    def __enter__(self) -> HessianCollector:
        self._hooks = module_hooks(self._model, {name: self._hook_for(name) for name in self._modules}, pre=True)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(*exc_info)
            self._hooks = None


__all__ = ["HessianCollector", "InputHessian"]
