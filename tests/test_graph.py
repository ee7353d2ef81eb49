"""Coupled units and physical removal, checked against the masked model as the reference."""

import copy
import json

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError, UnknownNameError
from prunekit.graph import (
    ShrinkRecord,
    find_unit_groups,
    replay,
    shrink,
    unit_masks_to_param_masks,
)
from prunekit.masking import apply_masks

from graph_models import CASES, IMAGE, assert_unchanged, build, outputs, snapshot
from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)
from invariants import n_params, random_keep


# ---------------------------------------------------------------- equivalence: removal == masking

EQUIVALENCE = [(case, g) for case, (_, _, grans) in CASES.items() for g in grans]


@pytest.mark.parametrize(("case", "granularity"), EQUIVALENCE)
def test_shrink_equals_masked_model(case, granularity):
    model, inputs = build(case)
    groups = find_unit_groups(model, inputs, granularity)
    assert groups, f"no {granularity} groups found for {case}"
    keep_units = random_keep(groups)
    masked = apply_masks(copy.deepcopy(model), unit_masks_to_param_masks(model, groups, keep_units))
    shrunk = copy.deepcopy(model)
    record = shrink(shrunk, inputs, keep_units, groups)
    assert {step["group"] for step in record.steps} <= set(keep_units)
    expected, got = outputs(masked, inputs), outputs(shrunk, inputs)
    assert got.shape == expected.shape == outputs(model, inputs).shape
    assert not torch.allclose(expected, outputs(model, inputs), atol=1e-3)  # units really mattered
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert n_params(shrunk) < n_params(model)
    assert type(shrunk) is type(model)
    assert not any(hasattr(m, "parametrizations") for m in shrunk.modules())


def test_mlp_parameter_count_drops_by_hand_computed_amount():
    model, inputs = build("mlp")
    groups = find_unit_groups(model, inputs, "neuron")
    assert [(g.name, g.num_units) for g in groups] == [("0", 16), ("2", 12)]  # "4" is the output
    keep = {"0": torch.arange(16) % 4 != 0, "2": torch.arange(12) < 9}  # drop 4 and 3 neurons
    shrink(model, inputs, keep, groups)
    h1, h2 = 12, 9
    expected = (20 * h1 + h1) + (h1 * h2 + h2) + (h2 * 4 + 4)
    assert n_params(model) == expected
    widths = (model[0].out_features, model[2].in_features, model[2].out_features, model[4].in_features)
    assert widths == (h1, h1, h2, h2)


def test_residual_stream_is_one_group_covering_all_producers():
    model, inputs = build("resnet")
    groups = {g.name: g for g in find_unit_groups(model, inputs, "channel")}
    stem = groups["stem"]
    producers = {m.param for m in stem.members if m.dim == 0}
    assert {"stem.weight", "bn.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight"} <= producers
    assert {"layer1.0.conv1.weight", "layer2.0.conv1.weight", "layer2.0.shortcut.0.weight"} <= {
        m.param for m in stem.members if m.dim == 1
    }
    stage2 = groups["layer2.0.conv2"]
    assert {"layer2.0.shortcut.0.weight", "layer2.1.conv2.weight", "layer2.1.bn2.weight"} <= {
        m.param for m in stage2.members if m.dim == 0
    }
    assert "layer2.0.shortcut.0" not in groups and "layer1.0.conv2" not in groups
    fc = next(m for m in stage2.members if m.param == "fc.weight")
    assert fc.unit_index.tolist() == list(range(16))


def test_flatten_maps_spatial_positions_to_their_channel():
    model, inputs = build("lenet")
    conv2 = next(g for g in find_unit_groups(model, inputs, "channel") if g.name == "conv2")
    fc1 = next(m for m in conv2.members if m.param == "fc1.weight")
    assert fc1.dim == 1
    assert fc1.unit_index.tolist() == torch.arange(16).repeat_interleave(16).tolist()


def test_grouped_conv_couples_channels_across_groups():
    model, inputs = build("grouped")
    groups = {g.name: g for g in find_unit_groups(model, inputs, "channel")}
    assert groups["0"].num_units == 16  # depthwise conv follows its producer channel by channel
    assert "3" not in groups
    # the pointwise conv feeds a groups=4 conv: channel c of every group is one unit
    assert groups["6"].num_units == 6
    assert groups["6"].root_unit_index.tolist() == list(range(6)) * 4
    assert groups["8"].num_units == 6


def test_lstm_unit_owns_gate_rows_recurrent_columns_and_consumer_input():
    model, inputs = build("lstm")
    (group,) = find_unit_groups(model, inputs, "lstm-unit")
    members = {(m.param, m.dim): m.unit_index for m in group.members}
    rows = torch.arange(32).repeat(4)
    for layer in (0, 1):
        assert members[(f"rnn.weight_ih_l{layer}", 0)].tolist() == rows.tolist()
        assert members[(f"rnn.bias_hh_l{layer}", 0)].tolist() == rows.tolist()
        assert members[(f"rnn.weight_hh_l{layer}", 1)].tolist() == list(range(32))
    assert members[("rnn.weight_ih_l1", 1)].tolist() == list(range(32))
    assert members[("fc.weight", 1)].tolist() == list(range(32))
    assert ("rnn.weight_ih_l0", 1) not in members  # the input features are not hidden units


def test_transformer_offers_only_feed_forward_neurons():
    model, inputs = build("transformer")
    groups = find_unit_groups(model, inputs, "neuron")
    assert [g.name for g in groups] == ["encoder.linear1"]
    params = {"encoder.linear1.weight", "encoder.linear1.bias", "encoder.linear2.weight"}
    assert {m.param for m in groups[0].members} == params


def test_output_layer_and_excluded_layers_are_never_offered():
    model, inputs = build("lenet")
    assert [g.name for g in find_unit_groups(model, inputs, "neuron")] == ["fc1"]
    assert find_unit_groups(model, inputs, "neuron", exclude=["fc1"]) == []
    assert find_unit_groups(model, inputs, "neuron", exclude="fc1") == []
    assert [g.name for g in find_unit_groups(model, inputs, "channel", exclude=[nn.Conv2d])] == []
    with pytest.raises(UnknownNameError, match="fc1"):
        find_unit_groups(model, inputs, "neuron", exclude=["fc_1"])


def test_conv_whose_output_is_the_model_output_is_not_offered():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 1))
    assert [g.name for g in find_unit_groups(model, IMAGE, "channel")] == ["0"]


# ---------------------------------------------------------------- save as (arch, record, state_dict)


@pytest.mark.parametrize("case", ["resnet", "lstm", "grouped"])
def test_record_replays_on_fresh_model_and_state_dict_loads_strictly(case):
    model, inputs = build(case)
    granularity = CASES[case][2][0]
    groups = find_unit_groups(model, inputs, granularity)
    record = shrink(model, inputs, random_keep(groups, seed=3), groups)
    saved = {"arch": case, "record": json.dumps(record.to_dict()), "state_dict": model.state_dict()}

    fresh, _ = build(case, seed=123)
    replay(fresh, inputs, json.loads(saved["record"]))
    fresh.load_state_dict(saved["state_dict"], strict=True)
    assert torch.equal(outputs(fresh, inputs), outputs(model, inputs))


def test_two_shrink_calls_replay_as_two_rounds():
    model, inputs = build("mlp")
    first = shrink(model, inputs, {"0": torch.arange(16) < 12})
    second = shrink(model, inputs, {"0": torch.arange(12) % 2 == 0, "2": torch.arange(12) > 0})
    record = ShrinkRecord.from_dict(json.loads(json.dumps((first + second).to_dict())))
    assert [len(steps) for steps in record.rounds] == [1, 2]
    fresh, _ = build("mlp", seed=9)
    replay(fresh, inputs, record)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert fresh[0].out_features == 6 and fresh[2].out_features == 11


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="something-else"), "not a shrink record"),
        (lambda d: d["steps"][0].update(group="fc9"), "no such group"),
        (lambda d: d["steps"][0].update(removed=[99]), "record is damaged"),
        (lambda d: d["steps"][0].update(num_units=7), "replay needs a fresh model"),
    ],
)
def test_replay_rejects_records_that_do_not_fit_and_leaves_the_model_alone(edit, message):
    model, inputs = build("mlp")
    data = shrink(model, inputs, {"0": torch.arange(16) > 3}).to_dict()
    edit(data)
    fresh, _ = build("mlp")
    before = snapshot(fresh)
    with pytest.raises(PrunekitError, match=message):
        replay(fresh, inputs, data)
    assert_unchanged(fresh, before)
