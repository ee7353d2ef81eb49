"""What ``prunekit compare`` will run, settled before anything trains: every check of a
``CompareConfig`` (prunekit.harness) and its jobs (prunekit.sweep) in run order, each with the
method spec it runs. ``--resume`` and ``--shard`` choose among these jobs.
"""

from __future__ import annotations

from prunekit.allocation import ALLOCATIONS, as_budget
from prunekit.errors import PrunekitError, unknown_name
from prunekit.harness_schedules import check_schedule
from prunekit.methods import MethodSpec, parse_method_spec
from prunekit.sweep import Job, plan_jobs


def _check_allocation(config, specs: list[MethodSpec]) -> None:
    """Refuse, before any training, an allocation or budget the methods cannot run."""
    if config.allocation is None and config.budget is None:
        return
    if config.allocation is not None and config.allocation not in ALLOCATIONS:
        raise unknown_name("allocation", config.allocation, ALLOCATIONS)
    if config.budget is not None:
        as_budget(config.budget)
        if config.sparsities:
            raise PrunekitError(f"a budget ({config.budget}) replaces the sparsity list; give one of them")
    for spec in specs:
        if spec.granularity == "hybrid":
            raise PrunekitError(f"'{spec.label}' is a two-stage recipe; run hybrid methods without an allocation "
                                "or budget")
        if config.budget is not None and spec.sparsity is not None:
            raise PrunekitError(f"'{spec.label}' fixes its sparsity; with a budget leave out the '@sparsity'")


def runs_for(spec: MethodSpec, config) -> tuple[float | None, ...]:
    """The sparsities `spec` runs at: its own ``@sparsity``, the config's, or None (a budget decides)."""
    if config.budget is not None:  # one run per method: the budget decides how much goes
        return (None,)
    if spec.granularity == "hybrid":
        return (spec.weight_sparsity,) if spec.weight_sparsity is not None else config.sparsities
    return (spec.sparsity,) if spec.sparsity is not None else config.sparsities


def check_config(config) -> list[MethodSpec]:
    """Every check that needs no training; returns the parsed method specs."""
    for sparsity in config.sparsities:
        if not 0.0 <= sparsity < 1.0:
            raise PrunekitError(f"every sparsity must lie in [0, 1); got {sparsity}")
    specs = [parse_method_spec(text, config.granularity) for text in config.methods]
    check_schedule(config, specs)
    _check_allocation(config, specs)
    for spec in specs:
        if not runs_for(spec, config):
            raise PrunekitError(f"method '{spec.label}' has no sparsity to run: give sparsities (--sparsity), a "
                                f"budget (--budget) or write it as '{spec.label}@0.9'")
    round_to = config.round_to
    if not (round_to in ("auto", None) or (isinstance(round_to, int) and not isinstance(round_to, bool)
                                           and round_to >= 1)):
        raise PrunekitError(f"round_to must be 'auto', None or an int >= 1 (e.g. 8); got {round_to!r}")
    return specs


def plan(config) -> list[tuple[Job, MethodSpec]]:
    """The checked config's jobs in run order (seed, method, sparsity), each with its method spec."""
    return plan_jobs(config.seeds, check_config(config), lambda spec: runs_for(spec, config),
                     lambda spec: f"{spec.granularity}:{spec.label}")


def planned_jobs(config) -> list[Job]:
    """The jobs ``harness.run_compare(config)`` runs, in order; validated, nothing is trained.

    >>> from prunekit.harness import CompareConfig
    >>> [job.id for job in planned_jobs(CompareConfig("lenet300", "digits", ("magnitude", "neuron:l1"), (0.5,)))]
    ['seed 0 unstructured:magnitude @0.5', 'seed 0 neuron:l1 @0.5']
    """
    return [job for job, _ in plan(config)]
