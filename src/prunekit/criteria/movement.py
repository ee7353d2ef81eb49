"""Movement pruning's criterion (Sanh, Wolf & Rush 2020): keep the weights that training moves
away from zero.

The score of weight ``w`` is ``S = sum over backward passes of -(w * dL/dw)``: gradient descent
changes ``w`` by ``-lr * dL/dw``, so ``-(w * dL/dw) > 0`` when the step pushes ``w`` away from
zero and ``< 0`` when it pulls ``w`` towards zero. Unlike magnitude, which keeps what is large
*now*, movement keeps what fine-tuning is making large. The Pruner sums ``S`` in the user's
training loop (``prunekit.loop_state.MovementScores``); the unstructured granularity hands it
over as ``Signal.movement``.
"""

from __future__ import annotations

import torch

from prunekit.errors import PrunekitError
from prunekit.types import Evidence


def movement(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """The accumulated movement score: weights pushed away from zero score high and stay.

    >>> from prunekit.types import Signal
    >>> movement(Evidence((3,), signal=Signal(movement=torch.tensor([0.4, -0.2, 0.0]))), torch.Generator())
    tensor([ 0.4000, -0.2000,  0.0000])
    """
    if evidence.signal is None or evidence.signal.movement is None:
        raise PrunekitError(
            "method 'movement' scores weights by how training moves them (-w * dL/dw summed over the backward "
            "passes of your loop), and none were summed here: drive a prunekit.Pruner from your training loop "
            "with a schedule that prunes after training steps, e.g. schedule=Polynomial(begin_step=0, "
            "end_step=..., frequency=...)"
        )
    return evidence.signal.movement.clone()
