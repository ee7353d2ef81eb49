"""What both framework callbacks share: importing the framework, checking the Pruner."""

from __future__ import annotations

import importlib
from types import ModuleType

from prunekit.errors import PrunekitError
from prunekit.pruner import Pruner


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or a PrunekitError saying which prunekit extra installs it.

    >>> require("torch", "torch").__name__
    'torch'
    >>> require("prunekit_no_such_framework", "lightning")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    prunekit.errors.PrunekitError: this integration needs ... pip install prunekit[lightning]
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise PrunekitError(f"this integration needs the '{module}' package, which is not installed "
                            f"({error}); install it with: pip install prunekit[{extra}]") from None


def checked_pruner(pruner: object, owner: str) -> Pruner:
    """`pruner` if it can be driven from a training loop, else a PrunekitError naming `owner`."""
    if not isinstance(pruner, Pruner):
        raise PrunekitError(f"{owner} needs a prunekit.Pruner, got {type(pruner).__name__}")
    if pruner.removes and not pruner.done:
        raise PrunekitError(
            f"{owner}: this Pruner removes units physically when it prunes (remove=True), which would "
            "leave the framework's optimizer holding the old parameters; use remove=False (masks while "
            "training, finalize() removes the units afterwards)"
        )
    return pruner
