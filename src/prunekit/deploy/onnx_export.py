"""Export a pruned model to ONNX and check it in onnxruntime against torch before it is written.

The model is copied and its masks baked into the copy (the caller's model, masks, modes and
RNG are left as they were); removed units need nothing special, since a shrunk model is a plain
model with narrower layers: ``PrunedMultiheadAttention`` exports through
``scaled_dot_product_attention`` and a ``SkippedBlock`` through nothing at all. The export uses
torch's ``torch.export``-based exporter (``dynamo=True``, torch's default since 2.9; it needs
``onnxscript``; the TorchScript exporter is deprecated) with the batch axis of every input
dynamic (and any other axis asked for, such as the sequence of token inputs). The file is first
written to a temporary folder and run in onnxruntime on the example inputs, on a batch twice as
large and on inputs one shorter along each other dynamic axis; only if every output agrees with
torch's within the tolerance is it moved to `path`.

onnxruntime runs zeros as dense values (see ``prunekit.deploy.onnx_runtime``): the export reports
which share of the graph's weights are zeros, not a speedup.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.deploy.onnx_runtime import OnnxRuntimeModel
from prunekit.errors import PrunekitError
from prunekit.inputs import as_call, call_model, model_outputs
from prunekit.io import atomic_write_bytes
from prunekit.masking import bake, copy_model
from prunekit.state import preserved_rng

__all__ = ["OnnxExport", "export_onnx"]


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote and how well onnxruntime agreed with torch."""

    path: Path
    file_bytes: int
    max_abs_diff: float  # onnxruntime vs torch over every output of every check
    output_scale: float  # the largest |output| of torch, which the tolerance is relative to
    checked_shapes: tuple[tuple[int, ...], ...]  # the first input's shape in each onnxruntime check
    zero_fraction: float  # share of the floating weight values stored in the graph that are zero


def _split(example_inputs: Any) -> tuple[tuple, dict[str, Any]]:
    as_call(example_inputs)  # refuses what a model cannot be called with
    if not _tensors(example_inputs):
        raise PrunekitError("the example inputs hold no tensor; pass what the model is called with, e.g. a batch")
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    return tuple(example_inputs), {}


def _map_tensors(value: Any, change) -> Any:
    if isinstance(value, torch.Tensor):
        return change(value)
    if isinstance(value, Mapping):
        return {key: _map_tensors(item, change) for key, item in value.items()}
    return type(value)(_map_tensors(item, change) for item in value)


def _tensors(value: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    _map_tensors(value, found.append)
    return found


def _dynamic_shapes(args: tuple, kwargs: dict[str, Any], axes: tuple[int, ...]) -> tuple | dict | None:
    """torch.export's dynamic_shapes: the `axes` of every tensor input that has them, each sized by
    the exporter (``Dim.AUTO``: it finds which inputs share a size and what bounds the model sets)."""
    if not axes:
        return None

    def spec(value: Any) -> dict[int, Any] | None:
        if not isinstance(value, torch.Tensor):
            return None
        return {axis: torch.export.Dim.AUTO for axis in axes if axis < value.dim()} or None

    return {name: spec(value) for name, value in kwargs.items()} if kwargs else tuple(spec(v) for v in args)


def _check_axes(example_inputs: Any, axes: tuple[int, ...]) -> None:
    if not all(isinstance(axis, int) and axis >= 0 for axis in axes):
        raise PrunekitError(f"dynamic_axes must be axis numbers >= 0, e.g. (0,) or (0, 1); got {axes!r}")
    for tensor in _tensors(example_inputs):
        small = [axis for axis in axes if axis < tensor.dim() and tensor.shape[axis] < 2]
        if small:
            raise PrunekitError(
                f"an example input of shape {tuple(tensor.shape)} has size {tensor.shape[small[0]]} on dynamic axis "
                f"{small[0]}; give at least 2 (torch.export fixes an axis of size 1), e.g. a batch of 2 rows, or "
                "leave the axis out of dynamic_axes")


def _checks(example_inputs: Any, axes: tuple[int, ...]) -> list[Any]:
    """The example inputs, then for axis 0 a batch twice as large (the batch again, reversed) and
    for each other dynamic axis the inputs one shorter along it (where all stay at least 2)."""
    checks = [example_inputs]
    if 0 in axes:
        checks.append(_map_tensors(example_inputs, lambda t: torch.cat([t, t.flip(0)]) if t.dim() else t))
    for axis in sorted(set(axes) - {0}):
        sizes = [t.shape[axis] for t in _tensors(example_inputs) if axis < t.dim()]
        if sizes and min(sizes) >= 3:
            checks.append(_map_tensors(example_inputs, lambda t: t.narrow(axis, 0, t.shape[axis] - 1)
                                       if axis < t.dim() else t))
    return checks


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's log lines and deprecation warnings (torchvision ops skipped, torch.export
    internals) say nothing about this model; the onnxruntime check is what vouches for the file."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _write_onnx(model: nn.Module, example_inputs: Any, axes: tuple[int, ...], path: Path) -> None:
    args, kwargs = _split(example_inputs)
    shapes = _dynamic_shapes(args, kwargs, axes)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(model, args, kwargs=kwargs, dynamo=True, dynamic_shapes=shapes,
                                        external_data=False, verbose=False)
            program.save(str(path), external_data=False)
    except Exception as error:  # the exporter raises many types; name the model and the first line
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise PrunekitError(
            f"torch.onnx.export could not export {type(model).__name__} ({type(error).__name__}: {first[:300]}); "
            "nothing was written. A model whose forward branches on input values or takes non-tensor inputs "
            "may need a wrapper module that fixes them"
        ) from error


def _zero_fraction(path: Path) -> float:
    import onnx
    from onnx import numpy_helper

    zeros = total = 0
    for initializer in onnx.load(str(path)).graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype.kind == "f" and values.ndim >= 2:  # weights, not biases or shape constants
            zeros += int((values == 0).sum())
            total += values.size
    return zeros / total if total else 0.0


def _compare(reference: nn.Module, runtime: OnnxRuntimeModel, inputs: Any) -> tuple[float, float]:
    """(max |onnxruntime - torch|, max |torch|) over every output tensor."""
    with torch.no_grad():
        expected = model_outputs(call_model(reference, inputs))
    try:
        got = call_model(runtime, inputs)
    except PrunekitError as error:
        shape = tuple(_tensors(inputs)[0].shape)
        raise PrunekitError(f"the exported graph does not run on inputs shaped {shape} ({error}); the model's "
                            "forward fixes the size of a dynamic axis: leave it out of dynamic_axes. Nothing "
                            "was written") from None
    if len(got) != len(expected) or any(a.shape != b.shape for a, b in zip(got, expected)):
        raise PrunekitError(f"the ONNX graph returns shapes {[tuple(t.shape) for t in got]}, torch "
                            f"{[tuple(t.shape) for t in expected]}; nothing was written")
    diff = max(((a.double() - b.double()).abs().max().item() for a, b in zip(got, expected) if a.numel()), default=0.0)
    scale = max((b.double().abs().max().item() for b in expected if b.numel()), default=0.0)
    return diff, scale


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *,
                dynamic_axes: tuple[int, ...] = (0,), tolerance: float = 1e-4) -> OnnxExport:
    """Export `model` (masks baked on a copy) to the ONNX file `path`, checked in onnxruntime.

    `example_inputs` is what the model is called with (a tensor, a tuple of them, or a dict of
    keyword tensors such as a tokenizer's output). `dynamic_axes` of every input stay free in the
    graph: the batch (0) by default, ``(0, 1)`` for token inputs of any length; each must be at
    least 2 in the example (torch.export fixes an axis of size 1). The graph must agree with torch
    within ``tolerance * max(1, largest |output|)`` on the example inputs, a batch twice as large
    and inputs one shorter along each other dynamic axis, else a PrunekitError says by how much
    and nothing is written.

    >>> import tempfile, os, prunekit
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> _ = prunekit.prune(model, "magnitude", 0.5)
    >>> done = export_onnx(model, torch.randn(4, 8), os.path.join(tempfile.mkdtemp(), "m.onnx"))
    >>> done.max_abs_diff < 1e-5, done.checked_shapes, round(done.zero_fraction, 2), prunekit.get_masks(model) != {}
    (True, ((4, 8), (8, 8)), 0.5, True)
    """
    _split(example_inputs)  # refuses what a model cannot be called with
    axes = tuple(dynamic_axes)
    _check_axes(example_inputs, axes)
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise PrunekitError(f"tolerance must be a number >= 0 (relative to the largest output); got {tolerance!r}")
    example_inputs = _map_tensors(example_inputs, lambda tensor: tensor.detach().cpu())  # onnxruntime runs on CPU
    with preserved_rng():
        deployed = bake(copy_model(model)).eval().cpu()
        with tempfile.TemporaryDirectory(prefix="prunekit-onnx-") as folder:
            temp = Path(folder) / "model.onnx"
            _write_onnx(deployed, example_inputs, axes, temp)
            runtime = OnnxRuntimeModel(temp, threads=1)
            checks = _checks(example_inputs, axes)
            results = [_compare(deployed, runtime, inputs) for inputs in checks]
            diff, scale = max(r[0] for r in results), max(r[1] for r in results)
            if not diff <= tolerance * max(1.0, scale):
                raise PrunekitError(
                    f"onnxruntime's outputs differ from torch's by up to {diff:.3g} (outputs up to {scale:.3g}); "
                    f"more than the tolerance {tolerance:g} x max(1, {scale:.3g}). Nothing was written")
            zero_fraction = _zero_fraction(temp)
            written = atomic_write_bytes(path, temp.read_bytes())
    return OnnxExport(written, written.stat().st_size, diff, scale,
                      tuple(tuple(_tensors(inputs)[0].shape) for inputs in checks), zero_fraction)
