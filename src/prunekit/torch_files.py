"""Reading files written by ``torch.save`` as data only, with errors a person can act on.

``torch.load(path, weights_only=True)`` refuses pickled Python objects (they could run code), but
on a file that is not a checkpoint at all (a directory, a file cut short, random bytes, a text
file) it answers with advice about ``weights_only`` that does not apply. :func:`load_data_file`
says instead what the file is and what to pass.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from prunekit.errors import PrunekitError

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6 is a zip archive
_PICKLE_PROTOCOL = 0x80  # the first byte of a binary pickle: torch.save's legacy format


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def _weights_only_refusal(error: BaseException) -> bool:
    """torch's refusal of a pickled object other than tensors and plain containers."""
    return isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error)


def _what_it_is(path: Path, head: bytes, error: BaseException) -> str:
    """Why `path` did not load, in words (never torch's advice about weights_only)."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return f"is truncated or damaged (it starts like a torch.save file but is incomplete: {size:,} bytes)"
        if _weights_only_refusal(error):
            return ("holds pickled Python objects (e.g. a whole model saved with torch.save(model)), which prunekit "
                    "does not load because unpickling them can run code")
        return f"is a zip archive that is not a torch.save file ({size:,} bytes)"
    if head[:1] == bytes([_PICKLE_PROTOCOL]) and _weights_only_refusal(error):
        return "holds pickled Python objects, which prunekit does not load because unpickling them can run code"
    if _looks_like_text(head):
        first_line = head.decode("utf-8").strip().splitlines()[0] if head.strip() else ""
        return f"is a text file (it starts with {first_line[:40]!r})"
    return f"was not written by torch.save ({size:,} bytes in no format torch reads)"


def load_data_file(path: str | Path, what: str, hint: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, or a ``PrunekitError`` saying
    what `path` is instead of a `what` (e.g. "prunekit checkpoint"), then `hint` (what to do).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> _ = open(path, "w").write("hello")
    >>> try:
    ...     load_data_file(path, "checkpoint", "pass a saved model")
    ... except PrunekitError as error:
    ...     print(str(error).split("' ", 1)[1])
    is not a readable checkpoint: it is a text file (it starts with 'hello'); pass a saved model
    """
    path = Path(path)
    if path.is_dir():
        raise PrunekitError(f"'{path}' is a directory, not a {what} file; {hint}")
    if not path.is_file():
        raise PrunekitError(f"{what} '{path}' does not exist; {hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a foreign or damaged file
        with open(path, "rb") as file:
            head = file.read(256)
        raise PrunekitError(f"'{path}' is not a readable {what}: it {_what_it_is(path, head, error)}; {hint}") from None
