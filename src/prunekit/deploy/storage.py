"""Compressed storage of sparse models: a prunekit checkpoint whose tensors keep only their nonzeros.

A compressed file is a prunekit checkpoint written with ``storage="sparse"`` (or
``"sparse-fp16"``): the same architecture spec and structural record (the model is rebuilt and
replayed without pickle), the same meta, and tensors encoded by ``prunekit.deploy.codec``. So
``load_checkpoint`` reads it, ``prunekit info`` and ``prunekit export`` take it, and there is one
format to trust instead of two. This module adds what a user of the format wants to know: how big
the file is against the dense model, and how each tensor was stored.

Outputs of the loaded model are bit-identical to the saved one's (a zero's sign aside: ``-0.0``
comes back as ``0.0``; a masked weight's hidden values come back as zeros). With fp16 every
stored floating value is rounded to float16: relative error at most 2**-11 (about 4.9e-4) per
value, absolute at most 2**-25 below float16's normal range (6.1e-5); outputs move by about as
much relative to their size (``tests/test_storage.py`` holds LeNet logits to 2e-3 of their scale).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.arch import ArchSpec
from prunekit.checkpoint import load_checkpoint, save_checkpoint
from prunekit.deploy.codec import stored_bytes
from prunekit.errors import PrunekitError
from prunekit.graph import ShrinkRecord
from prunekit.masking import bake, copy_model
from prunekit.metrics import file_size_bytes

__all__ = ["StorageReport", "StoredTensor", "compress_checkpoint", "save_compressed"]


@dataclass(frozen=True)
class StoredTensor:
    """How one tensor was stored: its encoding, how many entries it keeps and the bytes it takes."""

    name: str
    shape: tuple[int, ...]
    encoding: str  # "dense", "bitmask" or "csr" (see prunekit.deploy.codec)
    kept: int  # entries stored (all of them for "dense")
    stored_bytes: int  # tensor data in the file (values + bitmask or indices)


@dataclass(frozen=True)
class StorageReport:
    """Sizes of a compressed file: `file_bytes` on disk against `dense_bytes`, what
    ``torch.save(model.state_dict())`` takes for the same model with its masks baked in."""

    path: Path
    storage: str
    file_bytes: int
    dense_bytes: int
    tensors: tuple[StoredTensor, ...]

    @property
    def ratio(self) -> float:
        """How many times smaller than the dense file."""
        return self.dense_bytes / self.file_bytes


def _dense_bytes(model: nn.Module) -> int:
    deployed = bake(copy_model(model))  # the user's model keeps its masks
    return file_size_bytes(deployed)


def _report(path: Path, dense_bytes: int) -> StorageReport:
    payload = torch.load(path, map_location="cpu", weights_only=True)  # the file just written
    tensors = []
    for name, entry in payload["state_dict"].items():
        kept = entry["values"].numel()  # every entry for "dense"
        tensors.append(StoredTensor(name, tuple(entry["shape"]), entry["encoding"], kept, stored_bytes(entry)))
    return StorageReport(path, payload["storage"], path.stat().st_size, dense_bytes, tuple(tensors))


def save_compressed(
    path: str | os.PathLike,
    model: nn.Module,
    arch: ArchSpec,
    *,
    record: ShrinkRecord | dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    fp16: bool = False,
    trust_factory: bool = False,
) -> StorageReport:
    """Write `model` as a compressed prunekit checkpoint (atomically) and report its size.

    Arguments as for ``save_checkpoint``; `fp16` stores values as float16 (see the module
    docstring for the tolerance). Reload with ``prunekit.load_checkpoint``.

    >>> import tempfile, os, prunekit
    >>> arch = ArchSpec("lenet300", (1, 28, 28), 10)
    >>> _ = torch.manual_seed(0)
    >>> model = arch.build()
    >>> _ = prunekit.prune(model, "magnitude", 0.95, scope="global")
    >>> report = save_compressed(os.path.join(tempfile.mkdtemp(), "m.pt"), model, arch)
    >>> report.ratio > 8, [(t.name, t.encoding) for t in report.tensors if t.name.endswith("weight")]
    (True, [('fc1.weight', 'csr'), ('fc2.weight', 'bitmask'), ('classifier.weight', 'bitmask')])
    """
    storage = "sparse-fp16" if fp16 else "sparse"
    path = save_checkpoint(path, model, arch, meta, record, trust_factory=trust_factory, storage=storage)
    return _report(path, _dense_bytes(model))


def _same_file(source: Path, destination: Path) -> bool:
    return destination.exists() and os.path.samefile(source, destination)


def compress_checkpoint(source: str | os.PathLike, destination: str | os.PathLike, *, fp16: bool = False,
                        trust_factory: bool = False) -> StorageReport:
    """Rewrite the prunekit checkpoint `source` compressed as `destination` (source untouched).

    The model is loaded (so a damaged or missing `source` is refused before anything is
    written) and saved again with its architecture, structural record and meta.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> arch = ArchSpec("lenet300", (1, 8, 8), 10)
    >>> dense = save_checkpoint(os.path.join(folder, "dense.pt"), arch.build(), arch)
    >>> compress_checkpoint(dense, os.path.join(folder, "small.pt")).storage
    'sparse'
    """
    source, destination = Path(source), Path(destination)
    model, info = load_checkpoint(source, trust_factory=trust_factory)
    if _same_file(source, destination):
        raise PrunekitError(f"the destination '{destination}' is the checkpoint itself; write the compressed "
                            "file elsewhere (the source is kept as it is)")
    return save_compressed(destination, model, ArchSpec.from_dict(info["arch"]), record=info.get("structure"),
                           meta=info.get("meta"), fp16=fp16, trust_factory=trust_factory)
