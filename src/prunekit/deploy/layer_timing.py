"""Timing layers against each other on one input, for choosing kernels
(:mod:`prunekit.deploy.sparse_inference`).

Layers take turns in rounds, and each layer's fastest round counts: other load on the machine
only ever adds time, so the fastest round is what the layer costs on a quiet machine, and taking
turns means a burst of load hits every layer alike.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.errors import PrunekitError

__all__ = ["TimingConfig", "time_layers"]


@dataclass(frozen=True)
class TimingConfig:
    """How layers and models are timed: `rounds` alternating rounds, each long enough to last
    `round_seconds`; a sparse layer must beat the dense one by the fraction `margin`."""

    rounds: int = 7
    round_seconds: float = 0.003
    margin: float = 0.05
    model_rounds: int = 5
    model_repeats: int = 15

    def check(self) -> None:
        """Refuse settings that cannot time anything.

        >>> TimingConfig(rounds=0).check()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        prunekit.errors.PrunekitError: TimingConfig needs rounds, model_rounds and model_repeats >= 1, ...
        """
        if (min(self.rounds, self.model_rounds, self.model_repeats) < 1
                or not self.round_seconds > 0 or not 0 <= self.margin < 1):
            raise PrunekitError(
                "TimingConfig needs rounds, model_rounds and model_repeats >= 1, round_seconds > 0 "
                f"and 0 <= margin < 1; got {self}"
            )


def time_layers(layers: dict[str, nn.Module], layer_input: torch.Tensor,
                timing: TimingConfig) -> dict[str, float]:
    """Microseconds per call of each of `layers` on `layer_input` (see the module docstring);
    each round runs enough calls to last ``timing.round_seconds``. The thread count is left as
    the caller set it.

    >>> times = time_layers({"a": nn.Linear(4, 4), "b": nn.Identity()}, torch.ones(2, 4),
    ...                     TimingConfig(rounds=2, round_seconds=0.001))
    >>> sorted(times), all(us > 0 for us in times.values())
    (['a', 'b'], True)
    """
    best = {name: math.inf for name in layers}
    with torch.inference_mode():
        calls = {name: _calls_per_round(layer, layer_input, timing.round_seconds)
                 for name, layer in layers.items()}
        for _ in range(timing.rounds):
            for name, layer in layers.items():
                start = time.perf_counter()
                for _ in range(calls[name]):
                    layer(layer_input)
                per_call = (time.perf_counter() - start) / calls[name]
                best[name] = min(best[name], per_call * 1e6)
    return best


def _calls_per_round(layer: nn.Module, layer_input: torch.Tensor, round_seconds: float) -> int:
    """How many calls last about `round_seconds` (after a few warm-up calls)."""
    for _ in range(3):
        layer(layer_input)
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            layer(layer_input)
        elapsed = time.perf_counter() - start
        if elapsed >= round_seconds / 4 or calls >= 2**16:
            return max(1, min(2**16, math.ceil(calls * round_seconds / max(elapsed, 1e-9))))
        calls *= 2
