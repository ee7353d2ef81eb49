"""Atomic file writes: a reader sees either the old file or the complete new one, never half.

Each writer goes to a temporary file in the destination's directory (so the final rename stays on
one filesystem) and then ``os.replace``-s it over the destination. If anything fails on the way
the temporary file is removed and an existing destination is left untouched. The result has the
permissions a plain ``open(path, "w")`` would give: an existing file's own, else 0o666 less the
umask (a temporary file alone would stay 0o600, unreadable by the user's group).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def current_umask() -> int:
    """The process's umask, read from /proc where Linux offers it (so it is never changed, not even
    for the instant in which another thread could create a file); elsewhere set and restored.

    >>> 0 <= current_umask() <= 0o777
    True
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _mode_for(path: Path, folder: bool = False) -> int:
    """The permission bits a new version of `path` gets: the existing one's, else what ``open`` /
    ``mkdir`` give under the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return (0o777 if folder else 0o666) & ~current_umask()


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temp file next to `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), _mode_for(path))
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        # also on KeyboardInterrupt: never leave a half-written temp file behind
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically; creates parent folders; returns the path.

    Load the result with ``torch.load(path, weights_only=True)`` when `obj` holds only tensors and
    plain Python containers / numbers / strings.

    >>> import os, tempfile, torch
    >>> path = atomic_save({"w": torch.ones(2)}, os.path.join(tempfile.mkdtemp(), "sub", "w.pt"))
    >>> torch.load(path, weights_only=True)["w"]
    tensor([1., 1.])
    """
    return _atomic_write(path, lambda file: torch.save(obj, file))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; creates parent folders; returns the path.

    >>> import os, tempfile
    >>> path = atomic_write_text(os.path.join(tempfile.mkdtemp(), "results.json"), "{}")
    >>> path.read_text()
    '{}'
    """
    return _atomic_write(path, lambda file: file.write(text.encode(encoding)))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` (e.g. a rendered PNG) to `path` atomically; creates parent folders; returns the path.

    >>> import os, tempfile
    >>> atomic_write_bytes(os.path.join(tempfile.mkdtemp(), "plot.png"), b"\\x89PNG").read_bytes()
    b'\\x89PNG'
    """
    return _atomic_write(path, lambda file: file.write(data))


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(folder)`` on a fresh temporary folder next to `path`, then put it at `path`.

    An existing `path` is replaced only once `write` has succeeded (it is moved aside, the new
    folder renamed into place, then the old one deleted); if `write` fails, `path` is untouched.

    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "model")
    >>> _ = atomic_write_dir(target, lambda folder: (folder / "a.txt").write_text("new"))
    >>> sorted(os.listdir(target))
    ['a.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"'{path}' exists and is not a folder; choose another destination")
    temp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        temp.chmod(_mode_for(path, folder=True))
        write(temp)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
            os.replace(temp, path)
            shutil.rmtree(old)
        else:
            os.replace(temp, path)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return path
