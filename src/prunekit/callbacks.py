"""Hooks a training loop calls, so other objects (a pruner, a logger) ride along without patching.

``prunekit.training.train`` calls every ``TrainCallback`` it is given: ``on_loss`` may change the
loss of each batch (add a penalty) and ``on_step`` follows each optimiser step.
``PrunerCallback`` drives a ``prunekit.Pruner`` exactly as a hand-written loop would: its
penalty joins the loss, its ``step()`` follows the optimiser's.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence

import torch

from prunekit.errors import PrunekitError
from prunekit.pruner import Pruner


class TrainCallback:
    """Hooks :func:`train` calls inside its loop; subclass and override what you need (defaults do nothing).

    A callback drives another object (a pruner's penalty and schedule, a logger) through the very
    loop `train` runs, with nothing wrapped or patched. Pass instances as ``train(..., callbacks=[...])``.

    >>> class RecordSteps(TrainCallback):
    ...     def __init__(self):
    ...         self.steps = []
    ...     def on_step(self, step):
    ...         self.steps.append(step)
    >>> from torch import nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from prunekit.training import train
    >>> data = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.int64))
    >>> recorder = RecordSteps()
    >>> _ = train(nn.Linear(4, 2), DataLoader(data, batch_size=4), 2, progress=False, callbacks=[recorder])
    >>> recorder.steps
    [1, 2, 3, 4]
    """

    def on_loss(self, loss: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the loss to backpropagate for this batch (e.g. ``loss + penalty``).

        `loss` is the task loss, or what the previous callback returned; `inputs` and `targets` are
        the batch, already on the model's device.
        """
        return loss

    def on_step(self, step: int) -> None:
        """Called after each optimizer step (and LR scheduler step); `step` counts from 1 over the run."""


def validated_callbacks(callbacks: Sequence[TrainCallback]) -> tuple[TrainCallback, ...]:
    """`callbacks` as a tuple, or a PrunekitError naming the first item that is not a TrainCallback."""
    if isinstance(callbacks, TrainCallback):
        raise PrunekitError(f"callbacks must be a sequence of TrainCallback; got a single "
                            f"{type(callbacks).__name__}: pass callbacks=[callback]")
    try:
        callbacks = tuple(callbacks)
    except TypeError:
        raise PrunekitError(f"callbacks must be a sequence of TrainCallback; got {reprlib.repr(callbacks)} "
                            f"({type(callbacks).__name__})") from None
    for index, callback in enumerate(callbacks):
        if isinstance(callback, type) and issubclass(callback, TrainCallback):
            raise PrunekitError(f"callbacks[{index}] is the class {callback.__name__}, not an instance; "
                                f"pass {callback.__name__}(...)")
        if not isinstance(callback, TrainCallback):
            raise PrunekitError(f"callbacks[{index}] is {reprlib.repr(callback)} "
                                f"({type(callback).__name__}), not a TrainCallback; subclass "
                                "prunekit.training.TrainCallback and override on_loss and/or on_step")
    return callbacks


class PrunerCallback(TrainCallback):
    """Drive `pruner` from ``train``: ``loss + pruner.penalty()`` is backpropagated and
    ``pruner.step()`` runs after every optimiser step.

    >>> from torch import nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from prunekit.training import train
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> pruner = Pruner(model, "magnitude", 0.5)
    >>> data = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.int64))
    >>> _ = train(model, DataLoader(data, batch_size=4), 1, progress=False, callbacks=[PrunerCallback(pruner)])
    >>> pruner.sparsity.achieved
    0.5
    """

    def __init__(self, pruner: Pruner) -> None:
        if not isinstance(pruner, Pruner):
            raise PrunekitError(f"PrunerCallback needs a prunekit.Pruner, got {type(pruner).__name__}")
        if pruner.removes and not pruner.done:
            raise PrunekitError(
                "this Pruner removes units physically when it prunes (remove=True), which would leave the "
                "training loop's optimiser holding the old parameters; use remove=False inside a training "
                "loop (finalize() removes the units afterwards), or prune before training"
            )
        self.pruner = pruner

    def on_loss(self, loss: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss + self.pruner.penalty()

    def on_step(self, step: int) -> None:
        self.pruner.step()
