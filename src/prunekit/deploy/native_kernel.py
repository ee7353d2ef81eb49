"""prunekit's compiled sparse kernel (``native_spmm.cpp``), built on first use for this CPU.

torch's own sparse products (CSR, ``embedding_bag``) barely use a second core on layers as
small as LeNet-300-100's, where a dense GEMM uses it well; this kernel splits blocks of rows
over torch's thread pool and multiplies each kept weight with a vector of several rows' inputs
(see the comment at the top of the C++ file). It is one of the kernels
:func:`~prunekit.deploy.sparse_inference.sparse_inference` times, and is chosen only where it
is measured to be faster.

Building needs a C++ compiler with OpenMP (g++), ninja (a pinned Python dependency) and the
Python headers; ``torch.utils.cpp_extension`` compiles it once (about 10 s on 2 cores) into
its cache (``~/.cache/torch_extensions``, or ``TORCH_EXTENSIONS_DIR``), under a name that
depends on this CPU's features, since it is compiled with ``-march=native``. Where it cannot be
built, :func:`native_kernel_status` says why and the other kernels are used;
``PRUNEKIT_NATIVE_KERNEL=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch

from prunekit.errors import PrunekitError

__all__ = ["native_function", "native_kernel_status", "native_sparse_linear"]

SOURCE = Path(__file__).with_name("native_spmm.cpp")
DISABLE_VARIABLE = "PRUNEKIT_NATIVE_KERNEL"


def native_kernel_status() -> str | None:
    """None when the compiled kernel is ready (building it the first time), else why not.

    >>> status = native_kernel_status()
    >>> status is None or isinstance(status, str)
    True
    """
    return _load()[1]


def native_sparse_linear(values: torch.Tensor, col_indices: torch.Tensor, row_offsets: torch.Tensor,
                         x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` for a CSR weight ``W`` (int32 `row_offsets` / `col_indices`, `values`)
    and a 2-D input `x` (made contiguous here); the result is ``(rows, out_features)``.

    >>> weight = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    >>> x = torch.tensor([[1.0, 10.0]])
    >>> offsets, cols = torch.tensor([0, 1, 2], dtype=torch.int32), torch.tensor([1, 0], dtype=torch.int32)
    >>> if native_kernel_status() is None:
    ...     print(native_sparse_linear(torch.tensor([2.0, 3.0]), cols, offsets, x, None))
    ... else:
    ...     print(x @ weight.T)
    tensor([[20.,  3.]])
    """
    kernel = native_function()
    if kernel is None:
        raise PrunekitError(f"prunekit's compiled sparse kernel is not available: {_load()[1]}")
    if x.dim() != 2 or (col_indices.numel() and not 0 <= int(col_indices.min()) <= int(col_indices.max()) < x.shape[1]):
        raise PrunekitError(
            f"x must be 2-D with more features than the largest column index; got x of shape "
            f"{tuple(x.shape)} and column indices up to {int(col_indices.max()) if col_indices.numel() else None}")
    return kernel(values, col_indices, row_offsets, x.contiguous(), bias)


def native_function() -> Callable | None:
    """The compiled function itself (arguments as :func:`native_sparse_linear`'s, `x` already
    contiguous; it does not check the column indices against `x`'s width), or None where it
    cannot be built: for callers that run it per forward pass on arrays they built."""
    module = _load()[0]
    return None if module is None else module.sparse_linear


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    """The built extension, or None and the reason it could not be built (asked once)."""
    if os.environ.get(DISABLE_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"turned off by {DISABLE_VARIABLE}={os.environ[DISABLE_VARIABLE]}"
    missing = _missing_build_tools()
    if missing is not None:
        return None, missing
    from torch.utils import cpp_extension

    try:
        with _ninja_on_path():
            module = cpp_extension.load(
                name=f"prunekit_native_{_cpu_fingerprint()}", sources=[str(SOURCE)],
                extra_cflags=["-O3", "-fopenmp", "-march=native"], extra_ldflags=["-fopenmp"],
                verbose=False)
    except Exception as error:  # a failed compile: the other kernels still work
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return None, f"building {SOURCE.name} failed ({first_line})"
    return module, None


def _missing_build_tools() -> str | None:
    """Why the kernel cannot be built here, checked before calling the compiler."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return (f"no C++ compiler ({compiler!r} not found): install g++ (Debian: apt-get install "
                "g++) to build it")
    if shutil.which("ninja") is None and _pip_ninja_folder() is None:
        return "ninja is not installed: pip install ninja (requirements.txt pins it)"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        return f"the Python headers are missing ({include}): install python3-dev"
    return None


def _pip_ninja_folder() -> str | None:
    """Where the pip package ``ninja`` keeps its binary (the venv's bin, not always on PATH)."""
    try:
        import ninja
    except ImportError:
        return None
    return getattr(ninja, "BIN_DIR", None)


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch's builder runs ``ninja`` from PATH; a venv used without activating it has its
    ninja off PATH, so add that folder for the build and put PATH back after."""
    folder = None if shutil.which("ninja") else _pip_ninja_folder()
    if folder is None:
        yield
        return
    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = folder + os.pathsep + saved
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def _cpu_fingerprint() -> str:
    """A short hash of what the -march=native build depends on: CPU features and torch."""
    features = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                features += line
                break
    except OSError:
        features += platform.processor()
    digest = hashlib.sha256(f"{features}|{torch.__version__}".encode())
    return digest.hexdigest()[:12]
