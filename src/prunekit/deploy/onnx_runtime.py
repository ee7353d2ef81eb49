"""An ONNX file run by onnxruntime behind a torch module's call, so prunekit's own tools
(``inputs.call_model``, ``metrics.paired_latency``) compare and time it like any model.

onnxruntime keeps every initializer as a dense tensor and runs the same dense kernels whether
its values are zeros or not: an unstructured-sparse model runs as fast as the dense one (the
export benchmark, ``benchmarks/deploy_storage.py``, measures it). Only removed units (narrower
layers, fewer heads, skipped blocks) make the graph cheaper.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from prunekit.errors import PrunekitError

__all__ = ["OnnxRuntimeModel"]


def _array(value: object, name: str) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise PrunekitError(f"input '{name}' is a {type(value).__name__}; an ONNX graph takes tensors only")
    return value.detach().cpu().contiguous().numpy()


class OnnxRuntimeModel(nn.Module):
    """Runs `path` in onnxruntime (CPU); called like the exported torch model, it returns the
    graph's outputs as a list of tensors (a nested torch output flattened in order).

    `threads` sets onnxruntime's intra-op threads (default: onnxruntime's choice, all cores).

    >>> import os, tempfile, torch
    >>> from prunekit.deploy.onnx_export import export_onnx
    >>> path = export_onnx(torch.nn.Linear(3, 2), torch.ones(2, 3), os.path.join(tempfile.mkdtemp(), "l.onnx")).path
    >>> OnnxRuntimeModel(path, threads=1)(torch.ones(5, 3))[0].shape
    torch.Size([5, 2])
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise PrunekitError(f"onnxruntime cannot load '{path}' ({type(error).__name__}: {error})") from None
        self.input_names = tuple(graph_input.name for graph_input in self.session.get_inputs())

    def _feeds(self, args: tuple, kwargs: Mapping[str, object]) -> dict[str, np.ndarray]:
        if args and kwargs:
            raise PrunekitError("pass the inputs either positionally or by name, not both")
        if kwargs:
            missing = [name for name in self.input_names if name not in kwargs]
            if missing:
                raise PrunekitError(f"the ONNX graph takes inputs {list(self.input_names)}; {missing} not given")
            return {name: _array(kwargs[name], name) for name in self.input_names}
        if len(args) != len(self.input_names):
            raise PrunekitError(f"the ONNX graph takes {len(self.input_names)} inputs {list(self.input_names)}; "
                                f"got {len(args)}")
        return {name: _array(value, name) for name, value in zip(self.input_names, args)}

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> list[torch.Tensor]:
        feeds = self._feeds(args, kwargs)
        try:
            outputs = self.session.run(None, feeds)
        except Exception as error:  # onnxruntime's own types: a shape or dtype the graph does not take
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise PrunekitError(
                f"onnxruntime cannot run the graph on these inputs ({type(error).__name__}: {first})") from None
        return [torch.from_numpy(np.asarray(output)) for output in outputs]
