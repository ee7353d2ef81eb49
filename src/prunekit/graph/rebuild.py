"""Replay any ``ShrinkRecord`` (units, heads, layers, in any order) on a fresh model."""

from __future__ import annotations


from collections.abc import Mapping

from torch import nn

from prunekit.graph.heads import replay_head_round
from prunekit.graph.layers import replay_layer_round
from prunekit.graph.record import ShrinkRecord, round_family
from prunekit.masking import copy_model
from prunekit.graph.shrink import replay_unit_round

_ROUND_REPLAYERS = {"unit": replay_unit_round, "head": replay_head_round, "layer": replay_layer_round}


def replay(
    model: nn.Module, example_inputs: object, record: ShrinkRecord | Mapping, *, check: bool = True
) -> nn.Module:
    """Apply a ``ShrinkRecord`` (or its ``to_dict()`` form) to a fresh model; returns the model.

    `example_inputs` are what the model is called with; unit rounds trace the model with them
    (head and layer rounds do not need them). With `check`, unit rounds compare the removal with
    the masked model first. A record of several rounds is rehearsed on a copy, so a record that
    does not fit leaves `model` unchanged.

    >>> import torch
    >>> from prunekit.graph.shrink import shrink
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> record = shrink(model, torch.ones(1, 4), {"0": torch.tensor([True, False, True])})
    >>> fresh = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> replay(fresh, torch.ones(1, 4), record).load_state_dict(model.state_dict())
    <All keys matched successfully>
    """
    record = ShrinkRecord.from_dict(record)
    rounds = record.rounds
    if len(rounds) > 1:  # later rounds can only be validated after earlier ones ran: rehearse
        rehearsal = copy_model(model)
        for steps in rounds:
            _ROUND_REPLAYERS[round_family(steps)](rehearsal, example_inputs, steps, check)
        check = False
    for steps in rounds:
        _ROUND_REPLAYERS[round_family(steps)](model, example_inputs, steps, check)
    return model
