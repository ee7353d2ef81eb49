"""The record of a physical removal: plain JSON data that rebuilds a pruned model from a fresh one.

Every structural removal (``shrink`` for neurons / channels / LSTM units, ``shrink_heads`` for
attention heads, ``remove_layers`` for whole blocks) returns a ``ShrinkRecord``. Records of
successive calls add up (``first + second``), and ``prunekit.graph.replay`` applies any record to
a freshly built, unpruned model of the same architecture, after which the pruned ``state_dict``
loads strictly. So a pruned model is saved as (architecture, record, state_dict), never pickled.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import PrunekitError
from prunekit.graph.types import GRANULARITIES as UNIT_GRANULARITIES

FORMAT = "prunekit-shrink-record"
VERSION = 1
#: Granularities a record can hold; the unit ones (found by tracing) are replayed by ``shrink``.
RECORD_GRANULARITIES = (*UNIT_GRANULARITIES, "head", "layer")
_STEP_KEYS = {"round", "group", "granularity", "num_units", "removed"}


def _family(granularity: str) -> str:
    return "unit" if granularity in UNIT_GRANULARITIES else granularity


@dataclass
class ShrinkRecord:
    """What a removal call took out, as JSON-ready steps grouped in rounds (one round per call).

    Each step is ``{"round": r, "group": name, "granularity": g, "num_units": n,
    "removed": [unit, ...]}``; names and unit numbers refer to the model as it was when round
    ``r`` ran. For heads, `group` is the attention module and units are its heads; for layers,
    `group` is the removed block and the step is ``num_units: 1, removed: [0]``. One round holds
    one kind of removal (units, heads or layers).

    >>> record = ShrinkRecord([{"round": 0, "group": "0", "granularity": "neuron",
    ...                         "num_units": 4, "removed": [1]}])
    >>> ShrinkRecord.from_dict(record.to_dict()) == record
    True
    """

    steps: list[dict] = field(default_factory=list)

    @property
    def rounds(self) -> list[list[dict]]:
        """Steps grouped by round, in order."""
        by_round: dict[int, list[dict]] = {}
        for step in self.steps:
            by_round.setdefault(step["round"], []).append(step)
        return [by_round[key] for key in sorted(by_round)]

    def __add__(self, later: ShrinkRecord) -> ShrinkRecord:
        """This record followed by `later` (e.g. a second removal call)."""
        offset = 1 + max((step["round"] for step in self.steps), default=-1)
        shifted = [{**step, "round": step["round"] + offset} for step in later.steps]
        return ShrinkRecord(copy.deepcopy(self.steps) + shifted)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable form."""
        return {"format": FORMAT, "version": VERSION, "steps": copy.deepcopy(self.steps)}

    @classmethod
    def from_dict(cls, data: Mapping) -> ShrinkRecord:
        """Inverse of ``to_dict``; raises PrunekitError for anything that is not a record."""
        if isinstance(data, ShrinkRecord):
            return ShrinkRecord(copy.deepcopy(data.steps))
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise PrunekitError(f"not a shrink record: expected a dict with format '{FORMAT}'")
        if data.get("version") != VERSION:
            version = data.get("version")
            raise PrunekitError(f"shrink record version {version!r} is unsupported; expected {VERSION}")
        steps = list(data.get("steps", []))
        for step in steps:
            if not isinstance(step, Mapping) or set(step) != _STEP_KEYS:
                raise PrunekitError(
                    f"malformed shrink record step {step!r}; expected keys {sorted(_STEP_KEYS)}"
                )
            if step["granularity"] not in RECORD_GRANULARITIES:
                raise PrunekitError(
                    f"shrink record step {step!r} has unknown granularity; expected one of "
                    f"{', '.join(RECORD_GRANULARITIES)}"
                )
        record = cls([dict(step) for step in steps])
        for steps_of_round in record.rounds:
            if len({_family(step["granularity"]) for step in steps_of_round}) > 1:
                raise PrunekitError(
                    f"round {steps_of_round[0]['round']} of the shrink record mixes unit, head "
                    "and layer removals; each round must come from one removal call"
                )
        return record


def round_family(steps: list[dict]) -> str:
    """``"unit"``, ``"head"`` or ``"layer"``: which removal one round of a record came from.

    >>> round_family([{"granularity": "channel"}])
    'unit'
    """
    return _family(steps[0]["granularity"])


def step_keep_mask(step: Mapping, units_found: int | None) -> torch.Tensor:
    """The keep-mask one step describes, checked against the model it is replayed on.

    `units_found` is how many units of the step's granularity the model has at ``step["group"]``
    (None when it has no such group).

    >>> step = {"round": 0, "group": "fc1", "granularity": "neuron", "num_units": 3, "removed": [1]}
    >>> step_keep_mask(step, 3).tolist()
    [True, False, True]
    """
    if units_found != step["num_units"]:
        found = "no such group" if units_found is None else f"{units_found} units there"
        raise PrunekitError(
            f"the record removes {step['granularity']} units of '{step['group']}' "
            f"({step['num_units']} units) but this model has {found}; replay needs a fresh "
            "model of the architecture the record was made on"
        )
    removed = step["removed"]
    if not all(isinstance(unit, int) and 0 <= unit < units_found for unit in removed):
        raise PrunekitError(
            f"the record removes units {removed!r} of '{step['group']}', which has units "
            f"0..{units_found - 1}; the record is damaged"
        )
    keep = torch.ones(units_found, dtype=torch.bool)
    keep[torch.tensor(removed, dtype=torch.long)] = False
    return keep


def refuse_masked(model: nn.Module, action: str) -> None:
    """Raise unless `model` is plain: removal needs baked weights, not parametrized masks.

    >>> refuse_masked(nn.Linear(2, 2), "shrink removes units")
    """
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            param = next(iter(module.parametrizations))
            raise PrunekitError(
                f"'{f'{name}.' if name else ''}{param}' has a mask (parametrization) attached; "
                f"{action} from plain models only. prunekit.prune(..., remove=True) and "
                "prunekit.remove_masked_units carry the masks through the removal"
            )
