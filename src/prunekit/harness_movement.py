"""Movement pruning in ``prunekit compare`` (Sanh, Wolf & Rush 2020): ``movement`` (hard) and
``soft-movement``, unstructured, pruned while fine-tuning.

Both rank single weights by ``S = sum over the fine-tuning steps of -(w * dL/dw)`` (criterion
``"movement"``, summed by the Pruner in the training loop: ``prunekit.loop_state``) and prune on
the cubic schedule of Zhu & Gupta inside the fine-tuning budget (``schedule_for("agp", ...)``,
also when ``--schedule`` is the default ``oneshot``: movement scores need training steps first).

* ``movement`` (hard): at each pruning the lowest-scoring weights go until the cubic target is
  reached, as the paper's top-v selection with a cubic schedule for v.
* ``soft-movement``: at each pruning only weights whose score is below ``SOFT_THRESHOLD`` (0:
  training pulled them towards zero, on balance) go, and no more than the cubic target; the
  final sparsity may stay below ``--sparsity`` (each run records what it reached).

How this differs from the paper, honestly:

* Our masks are cumulative: a pruned weight is masked, gets no gradient, and never comes back.
  The paper's hard variant recomputes top-v from all scores at every step, and its scores keep
  learning through a straight-through estimator, so a pruned weight can return.
* The paper's soft variant *learns* its scores with a threshold on them and an L1 penalty on
  ``sigmoid(S)``, whose strength sets how sparse the model ends up. Ours is a fixed threshold on
  the accumulated scores plus a sparsity cap: no learned scores, no penalty; the cap, not a
  tuned penalty, keeps the run near the requested sparsity.
* The paper fine-tunes pretrained transformers on a new task (transfer learning), where
  magnitude says little about the new task; here the baseline was trained on the same data.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.pruner import Pruner
from prunekit.recovery import schedule_for

#: the methods this module runs, with what each does (``prunekit methods`` lists them)
MOVEMENT_METHODS = MappingProxyType({
    "movement": "hard movement pruning: lowest -w * dL/dw summed while fine-tuning go, on the cubic schedule",
    "soft-movement": "soft movement pruning: weights whose summed -w * dL/dw is below 0 go, capped by the cubic "
                     "schedule towards the target (may end below it)",
})

#: soft-movement removes weights whose accumulated movement score is below this; 0 does not depend
#: on the learning rate, the batch size or the number of steps, only on the score's sign
SOFT_THRESHOLD = 0.0

#: ``--schedule`` values movement methods run with: both mean the cubic schedule in the budget
MOVEMENT_SCHEDULES = ("oneshot", "agp")


def check_movement_spec(text: str, granularity: str) -> None:
    """Refuse a movement method spec whose granularity is not ``unstructured``.

    >>> check_movement_spec("neuron:movement", "neuron")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: 'neuron:movement': movement pruning scores single weights; write 'movement' ...
    """
    if granularity != "unstructured":
        method = text.rpartition(":")[2]
        raise PrunekitError(f"'{text}': movement pruning scores single weights; write '{method}' "
                            "(granularity unstructured)")


def check_movement(config, specs) -> None:
    """Refuse, before any training, movement runs the comparison's settings cannot give: they
    prune while fine-tuning, on the cubic schedule, to a sparsity of their own.

    >>> from prunekit.harness import CompareConfig
    >>> from prunekit.methods import parse_method_spec
    >>> config = CompareConfig("lenet300", "mnist5k", ("movement",), (0.9,), schedule="lottery")
    >>> check_movement(config, [parse_method_spec("movement")])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: 'movement' prunes on the cubic schedule while fine-tuning: use ... not lottery
    """
    labels = [spec.label for spec in specs if spec.method in MOVEMENT_METHODS]
    hybrid = [spec.label for spec in specs if spec.granularity == "hybrid" and spec.weight_method == "movement"]
    if hybrid:
        raise PrunekitError(f"'{hybrid[0]}': a hybrid's weight stage prunes at once, before any training step, and "
                            "movement scores need training steps; use magnitude there")
    if not labels:
        return
    if config.schedule not in MOVEMENT_SCHEDULES:
        raise PrunekitError(f"'{labels[0]}' prunes on the cubic schedule while fine-tuning: use --schedule oneshot "
                            f"or agp (both give it that schedule), not {config.schedule}")
    if config.finetune_epochs < 1:
        raise PrunekitError(f"'{labels[0]}' ranks weights by how fine-tuning moves them and prunes during it; "
                            "give --finetune-epochs >= 1")
    if config.tolerance is not None or config.budget is not None or config.allocation is not None:
        raise PrunekitError(f"'{labels[0]}' prunes during fine-tuning to --sparsity; it does not take --tolerance, "
                            "--budget or --allocation (they prune copies at once, before any training step)")


def movement_pruner(model: nn.Module, spec, sparsity: float, config, seed: int, total_steps: int) -> Pruner:
    """The Pruner of a movement run: criterion ``movement`` on the cubic schedule fitted into
    `total_steps` fine-tuning steps (``schedule_for("agp", ...)``), with ``SOFT_THRESHOLD`` as
    well for ``soft-movement``; it prunes while the harness fine-tunes.

    >>> from prunekit.harness import CompareConfig
    >>> from prunekit.methods import parse_method_spec
    >>> config = CompareConfig("lenet300", "mnist5k", ("soft-movement",), (0.9,))
    >>> pruner = movement_pruner(nn.Linear(4, 4), parse_method_spec("soft-movement"), 0.9, config, 0, 1000)
    >>> pruner.schedule.end_step, pruner.schedule.threshold, pruner.request.method
    (250, 0.0, 'movement')
    >>> pruner.release()
    """
    schedule = schedule_for("agp", total_steps)
    if spec.method == "soft-movement":
        schedule = replace(schedule, threshold=SOFT_THRESHOLD)
    return Pruner(model, "movement", sparsity, granularity=spec.granularity, scope=config.scope, schedule=schedule,
                  exclude=config.exclude, seed=seed)
