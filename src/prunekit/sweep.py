"""The jobs of a comparison sweep and which of them a shard runs.

A *job* is one (seed, method, sparsity) of ``prunekit compare``: what a sweep resumes and what
shards split. It yields one run (a lottery job two: the ticket and its control), and it is done
once all of its runs are in ``results.json``; each run names its job in ``run["job"]``
(`stamp`). Jobs are numbered in run order: seed, then method, then sparsity.

Shard I of N runs the jobs whose number i has ``i % N == I - 1`` (round-robin in run order), so
N shards of the same configuration split the sweep evenly and without overlap, on any machines
in any order; ``prunekit merge`` joins their results (prunekit.results_merge).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prunekit.errors import PrunekitError

Spec = TypeVar("Spec")


@dataclass(frozen=True)
class Job:
    """One (seed, method, sparsity) of a sweep; `index` is its place in run order, `method` is
    ``granularity:method``, `sparsity` None where a budget decides how much goes.

    >>> Job(3, 0, "channel:l1", 0.5).id
    'seed 0 channel:l1 @0.5'
    """

    index: int
    seed: int
    method: str
    sparsity: float | None

    @property
    def id(self) -> str:
        """The job's name in results.json: the same for the same configuration, run after run."""
        target = "budget" if self.sparsity is None else repr(self.sparsity)
        return f"seed {self.seed} {self.method} @{target}"


def plan_jobs(seeds: Iterable[int], specs: Sequence[Spec], sparsities: Callable[[Spec], Iterable[float | None]],
              name: Callable[[Spec], str]) -> list[tuple[Job, Spec]]:
    """Every (seed, spec, sparsity) in run order, numbered, with the spec it runs; a job listed
    twice (a repeated seed, method or sparsity) is refused.

    >>> [job.id for job, _ in plan_jobs((0, 1), ["magnitude"], lambda spec: (0.5,), lambda spec: spec)]
    ['seed 0 magnitude @0.5', 'seed 1 magnitude @0.5']
    """
    planned: list[tuple[Job, Spec]] = []
    seen: set[str] = set()
    for seed in seeds:
        for spec in specs:
            for sparsity in sparsities(spec):
                job = Job(len(planned), seed, name(spec), sparsity)
                if job.id in seen:
                    raise PrunekitError(f"the run '{job.id}' is listed twice: remove the repeated seed, method or "
                                        "sparsity (each run is listed once)")
                seen.add(job.id)
                planned.append((job, spec))
    return planned


def stamp(run: dict, job: Job, part: int = 1, parts: int = 1) -> dict:
    """Name `job` in `run` (``run["job"]``: its id, number, and which of the job's `parts` runs
    this is); returns `run`.

    >>> stamp({}, Job(0, 0, "unstructured:magnitude", 0.5))["job"]["id"]
    'seed 0 unstructured:magnitude @0.5'
    """
    run["job"] = {"id": job.id, "index": job.index, "part": part, "parts": parts}
    return run


@dataclass(frozen=True)
class Shard:
    """Share `number` of `count` (1-based), ``prunekit compare --shard 2/4``.

    >>> shard = Shard.parse("2/4")
    >>> [index for index in range(10) if shard.takes(Job(index, 0, "m", 0.5))]
    [1, 5, 9]
    """

    number: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` with 1 <= I <= N."""
        number, slash, count = str(text).partition("/")
        try:
            shard = cls(int(number), int(count))
        except ValueError:
            shard = None
        if not slash or shard is None or not 1 <= shard.number <= shard.count:
            raise PrunekitError(f"a shard is I/N with 1 <= I <= N, e.g. 1/4 for the first of four; got {text!r}")
        return shard

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"

    def takes(self, job: Job) -> bool:
        """Whether this shard runs `job` (round-robin over the run order)."""
        return job.index % self.count == self.number - 1

    def check(self, jobs: Sequence[Job]) -> None:
        """Refuse a shard that would get no job: more shards than the sweep has jobs."""
        if self.number > len(jobs):
            raise PrunekitError(f"shard {self} gets no run: this sweep has only {len(jobs)} (seeds x methods x "
                                f"sparsities); split it into at most {len(jobs)} shards")
