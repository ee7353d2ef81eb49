"""Channel counts the hardware likes: pick ``round_to`` by timing this model on this machine.

Kernels compute channels in blocks (oneDNN on an AVX-512 CPU: 16 fp32 lanes, so a 3x3 conv with
17 to 32 channels costs what 32 cost; tensor-core tiles on a GPU). Global selection leaves
irregular counts, and then latency falls much less than MACs (benchmarks/budget_resnet20.py:
resnet20 at 50% channels, 1.6x faster for 3.9x fewer MACs, because its second stage kept 17
channels). The best multiple depends on the machine, the layer sizes and the batch, so
:func:`preferred_channel_multiple` measures instead of guessing: it prunes copies of the model with each candidate ``round_to``
(kept counts rounded to a multiple), times each against the dense model with paired alternating
rounds, and keeps the multiple whose speedup per MAC reduction is best among those that leave
the MACs about where the unrounded selection put them (a multiple as wide as a layer would keep
that layer whole). Ties within noise go to the smaller multiple, which leaves the selection
freer. The caller may keep the answer in a ``cache`` dict it owns (one per process or run), so
the measurement is paid once per model, granularity and target.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.latency_budget import Timer
from prunekit.metrics import count_macs, paired_latency


@dataclass(frozen=True)
class WidthProbe:
    """One candidate: its ``round_to`` (None = unrounded), MACs, both latencies of its paired run."""

    round_to: int | None
    macs: int
    dense_macs: int
    dense_ms: float
    pruned_ms: float

    @property
    def latency_per_mac(self) -> float:
        """Speedup divided by MAC reduction: 1.0 when time falls exactly as MACs do.

        >>> WidthProbe(None, 25, 100, 10.0, 5.0).latency_per_mac
        0.5
        """
        return (self.dense_ms / self.pruned_ms) / (self.dense_macs / self.macs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``latency_per_mac``.

        >>> WidthProbe(8, 25, 100, 10.0, 5.0).to_dict()["round_to"]
        8
        """
        return {"round_to": self.round_to, "macs": self.macs, "dense_macs": self.dense_macs,
                "dense_ms": self.dense_ms, "pruned_ms": self.pruned_ms, "latency_per_mac": self.latency_per_mac}


@dataclass(frozen=True)
class WidthChoice:
    """The chosen ``round_to`` (None: no rounding helps) and every probe behind the choice."""

    round_to: int | None
    probes: tuple[WidthProbe, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the choice and its probes.

        >>> WidthChoice(8, ()).to_dict()
        {'round_to': 8, 'probes': []}
        """
        return {"round_to": self.round_to, "probes": [probe.to_dict() for probe in self.probes]}


def _shapes(model: nn.Module) -> tuple:
    return tuple((name, tuple(param.shape)) for name, param in model.named_parameters())


def _check(candidates: Sequence[int], mac_tolerance: float, tie: float) -> None:
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 2 for c in candidates):
        raise PrunekitError(f"candidates must be ints >= 2 (multiples to try, e.g. (2, 4, 8, 16)); got {candidates!r}")
    if not 0 <= mac_tolerance < 1:
        raise PrunekitError(f"mac_tolerance must lie in [0, 1) (e.g. 0.1 = MACs within 10%); got {mac_tolerance!r}")
    if not 0 <= tie < 1:
        raise PrunekitError(f"tie must lie in [0, 1) (e.g. 0.03 = within 3% counts as equal); got {tie!r}")


def choose_multiple(probes: Sequence[WidthProbe], mac_tolerance: float = 0.1, tie: float = 0.03) -> int | None:
    """The smallest ``round_to`` whose latency per MAC is within `tie` of the best, among probes
    whose MACs lie within `mac_tolerance` of the unrounded probe (the first one, ``round_to=None``).

    >>> probes = [WidthProbe(None, 25, 100, 24.0, 15.0), WidthProbe(4, 25, 100, 24.0, 11.5),
    ...           WidthProbe(8, 25, 100, 24.0, 11.2), WidthProbe(16, 52, 100, 24.0, 16.0)]
    >>> choose_multiple(probes)  # 16 keeps twice the MACs; 4 is within 3% of 8
    4
    """
    base = probes[0]
    eligible = [probe for probe in probes if abs(probe.macs / base.macs - 1) <= mac_tolerance]
    best = max(probe.latency_per_mac for probe in eligible)
    return next(probe.round_to for probe in eligible if probe.latency_per_mac >= best * (1 - tie))


def preferred_channel_multiple(
    dense: nn.Module,
    prune_copy: Callable[[int | None], nn.Module],
    inputs: Any,
    *,
    candidates: Sequence[int] = (2, 4, 8, 16),
    mac_tolerance: float = 0.1,
    tie: float = 0.03,
    timer: Timer | None = None,
    cache: MutableMapping[Hashable, WidthChoice] | None = None,
    cache_key: Hashable | None = None,
) -> WidthChoice:
    """Time pruned copies of `dense` at each ``round_to`` in (None, *candidates) and choose one.

    ``prune_copy(round_to)`` returns a new copy of `dense`, physically pruned the way the caller
    will prune for real but with kept counts rounded to `round_to` (None: unrounded); `dense` is
    only run. Copies whose layer shapes repeat an earlier candidate's are not timed again. Each
    copy is timed against `dense` on `inputs` (a real batch: batch size and spatial size decide
    which kernels run) by `timer` (default :func:`prunekit.metrics.paired_latency`); the choice
    is :func:`choose_multiple`. With a `cache` dict and a `cache_key`, an answer stored under the
    key is returned without measuring, and a new one is stored.

    >>> import copy, torch
    >>> from prunekit.pruner import prune
    >>> dense, inputs = nn.Sequential(nn.Linear(8, 40), nn.ReLU(), nn.Linear(40, 2)), torch.ones(4, 8)
    >>> def prune_copy(round_to):
    ...     model = copy.deepcopy(dense)
    ...     prune(model, "l1", 0.5, granularity="neuron", example_inputs=inputs, round_to=round_to, remove=True)
    ...     return model
    >>> fake_timer = lambda dense, pruned, inputs: (1.0, 1.0 if pruned[0].out_features % 8 else 0.5)
    >>> choice = preferred_channel_multiple(dense, prune_copy, inputs, timer=fake_timer, mac_tolerance=0.25)
    >>> choice.round_to, [(probe.round_to, probe.macs) for probe in choice.probes]  # 20 kept, or 16
    (8, [(None, 200), (2, 200), (4, 200), (8, 160), (16, 160)])
    """
    if cache is not None and cache_key is not None and cache_key in cache:
        return cache[cache_key]
    _check(candidates, mac_tolerance, tie)
    timer = paired_latency if timer is None else timer
    dense_macs = count_macs(dense, inputs)[0]
    probes: list[WidthProbe] = []
    seen: dict[tuple, WidthProbe] = {}
    for round_to in (None, *sorted(set(candidates))):
        candidate = prune_copy(round_to)
        if candidate is dense:
            raise PrunekitError("prune_copy returned the dense model itself; it must prune and return a copy")
        shapes = _shapes(candidate)
        if shapes in seen:
            probe = seen[shapes]
            probes.append(WidthProbe(round_to, probe.macs, dense_macs, probe.dense_ms, probe.pruned_ms))
            continue
        dense_ms, pruned_ms = timer(dense, candidate, inputs)
        probes.append(WidthProbe(round_to, count_macs(candidate, inputs)[1], dense_macs, dense_ms, pruned_ms))
        seen[shapes] = probes[-1]
    choice = WidthChoice(choose_multiple(probes, mac_tolerance, tie), tuple(probes))
    if cache is not None and cache_key is not None:
        cache[cache_key] = choice
    return choice


__all__ = ["WidthChoice", "WidthProbe", "choose_multiple", "preferred_channel_multiple"]
