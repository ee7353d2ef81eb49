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

from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)
from invariants import mlp, n_params, random_keep


# ---------------------------------------------------------------- architectures under test


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            projection = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.shortcut = nn.Sequential(projection, nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class MiniResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 8, 1))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def grouped_net():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),  # depthwise
        nn.Conv2d(16, 24, 1), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1, groups=4), nn.ReLU(),  # grouped
        nn.Conv2d(24, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 5, 1)
        self.mix, self.fc = nn.Conv2d(11, 8, 3), nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(torch.relu(self.mix(x)).mean(dim=(2, 3)))


class RNNClassifier(nn.Module):
    def __init__(self, kind=nn.LSTM, use_state=False, bidirectional=False):
        super().__init__()
        self.pre = nn.Linear(28, 28)
        self.rnn = kind(28, 32, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(64 if bidirectional else 32, 10)
        self.use_state = use_state

    def forward(self, x):
        out, state = self.rnn(torch.tanh(self.pre(x)))
        hidden = state[0] if isinstance(state, tuple) else state
        return self.fc(hidden[-1] if self.use_state else out[:, -1])


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


IMAGE = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
CASES = {
    "mlp": (lambda: mlp(seed=None), torch.randn(5, 20), ["neuron"]),
    "lenet": (LeNet, torch.randn(3, 1, 28, 28), ["channel", "neuron"]),
    "resnet": (MiniResNet, IMAGE, ["channel"]),
    "grouped": (grouped_net, IMAGE, ["channel"]),
    "concat": (ConcatNet, IMAGE, ["channel"]),
    "lstm": (RNNClassifier, torch.randn(3, 7, 28), ["lstm-unit", "neuron"]),
    "lstm-h_n": (lambda: RNNClassifier(use_state=True), torch.randn(3, 7, 28), ["lstm-unit"]),
    "gru": (lambda: RNNClassifier(nn.GRU), torch.randn(3, 7, 28), ["lstm-unit"]),
    "rnn-tanh": (lambda: RNNClassifier(nn.RNN, use_state=True), torch.randn(3, 7, 28), ["lstm-unit"]),
    "bilstm": (lambda: RNNClassifier(bidirectional=True), torch.randn(3, 7, 28), ["lstm-unit"]),
    "transformer": (TinyTransformer, torch.randn(2, 5, 6), ["neuron"]),
}


def build(case, seed=0):
    """A model with non-trivial BatchNorm affine parameters and running statistics, in eval."""
    factory, inputs, _ = CASES[case]
    torch.manual_seed(seed)
    model = factory()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    with torch.no_grad():
        for _ in range(3):
            model(inputs + 0.5 * torch.randn_like(inputs))
    return model.eval(), inputs


def outputs(model, inputs):
    with torch.no_grad():
        return model.eval()(inputs)


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
    before = _snapshot(fresh)
    with pytest.raises(PrunekitError, match=message):
        replay(fresh, inputs, data)
    _assert_unchanged(fresh, before)


# ---------------------------------------------------------------- bad input leaves the model alone


def _snapshot(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def _assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)


@pytest.mark.parametrize(
    ("keep_units", "message"),
    [
        ({"0": torch.zeros(16, dtype=torch.bool)}, "removes all 16 units of group '0'"),
        ({"00": torch.ones(16, dtype=torch.bool)}, "unknown unit group '00'; did you mean '0'"),
        ({"0": torch.ones(15, dtype=torch.bool)}, r"shape \(16,\)"),
        ({"0": torch.ones(16)}, "must be a bool tensor"),
        ({"4": torch.ones(4, dtype=torch.bool)}, "unknown unit group '4'"),
    ],
)
def test_shrink_rejects_bad_keep_units_without_touching_the_model(keep_units, message):
    model, inputs = build("mlp")
    before = _snapshot(model)
    with pytest.raises(PrunekitError, match=message):
        shrink(model, inputs, keep_units)
    _assert_unchanged(model, before)
    assert model[0].out_features == 16


def test_shrink_refuses_masked_model_and_says_to_bake():
    model, inputs = build("mlp")
    apply_masks(model, {"0.weight": torch.rand(16, 20) > 0.5})
    with pytest.raises(PrunekitError, match="bake"):
        shrink(model, inputs, {"0": torch.arange(16) > 2})
    assert model[0].parametrizations.weight.original.shape == (16, 20)


def test_shrink_refuses_groups_from_another_model_version():
    model, inputs = build("mlp")
    groups = find_unit_groups(model, inputs, "neuron")
    shrink(model, inputs, {"0": torch.arange(16) > 3}, groups)
    with pytest.raises(PrunekitError, match="different version"):
        shrink(model, inputs, {"0": torch.arange(16) > 5}, groups)


def test_removal_that_would_change_the_function_is_refused():
    class InputResidual(nn.Module):  # conv output is added to the model input: not removable
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.head(torch.relu(x + self.conv(x)))

    model, inputs = InputResidual().eval(), IMAGE
    before = _snapshot(model)
    groups = find_unit_groups(model, inputs, "channel")
    with pytest.raises(PrunekitError, match="'conv'.*model was not changed"):
        shrink(model, inputs, {"conv": torch.tensor([True, False, True])}, groups)
    _assert_unchanged(model, before)


def test_channels_last_flatten_that_torch_pruning_mismaps_is_refused():
    class ChannelsLast(nn.Module):  # features are (h, w, c): torch-pruning assumes (c, h, w)
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 14 * 14, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).permute(0, 2, 3, 1).flatten(1))

    model = ChannelsLast().eval()
    before = _snapshot(model)
    with pytest.raises(PrunekitError, match="'conv' would not match masking them"):
        shrink(model, IMAGE, {"conv": torch.tensor([True, False, True, True])})
    _assert_unchanged(model, before)


def test_unknown_granularity_and_missing_layer_types_are_clear_errors():
    model, inputs = build("mlp")
    with pytest.raises(UnknownNameError, match="did you mean 'neuron'"):
        find_unit_groups(model, inputs, "neurons")
    with pytest.raises(PrunekitError, match="nn.LSTM/GRU/RNN layers, but the model has none"):
        find_unit_groups(model, inputs, "lstm-unit")


def test_tracing_failure_names_the_layer():
    model, _ = build("lenet")
    with pytest.raises(PrunekitError, match="in layer 'conv1'"):
        find_unit_groups(model, torch.randn(2, 3, 28, 28), "channel")


def test_lstm_usage_that_cannot_be_followed_is_a_clear_error():
    class FlattenTime(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = nn.LSTM(4, 6, batch_first=True), nn.Linear(5 * 6, 2)

        def forward(self, x):
            return self.fc(self.rnn(x)[0].reshape(x.shape[0], -1))

    model, inputs = FlattenTime(), torch.randn(3, 5, 4)
    with pytest.raises(PrunekitError, match="LSTM 'rnn': removing some would not match masking"):
        find_unit_groups(model, inputs, "lstm-unit")
    assert find_unit_groups(model, inputs, "neuron") == []  # other granularities are not blocked


def test_rnn_read_through_a_sigmoid_is_accepted():
    class Gated(nn.Module):  # sigmoid(0) != 0, but the consumer's columns go with the unit
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = nn.GRU(4, 6, batch_first=True), nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(torch.sigmoid(self.rnn(x)[0][:, -1]))

    assert [g.num_units for g in find_unit_groups(Gated(), torch.randn(3, 5, 4), "lstm-unit")] == [6]


def test_lstm_feeding_a_layer_norm_is_a_clear_error():
    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.norm = nn.LSTM(4, 6, batch_first=True), nn.LayerNorm(6)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(self.norm(self.rnn(x)[0][:, -1]))

    with pytest.raises(PrunekitError, match="hidden units of LSTM 'rnn': LayerNorm 'norm'"):
        find_unit_groups(Normed(), torch.randn(3, 5, 4), "lstm-unit")


def test_projected_lstm_is_a_clear_error_for_lstm_units_and_ignored_otherwise():
    class Projected(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = nn.Linear(4, 4)
            self.rnn, self.fc = nn.LSTM(4, 8, proj_size=3, batch_first=True), nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.rnn(self.pre(x))[0][:, -1])

    with pytest.raises(PrunekitError, match="proj_size=3"):
        find_unit_groups(Projected(), torch.randn(3, 5, 4), "lstm-unit")
    assert find_unit_groups(Projected(), torch.randn(3, 5, 4), "neuron") == []


def test_lstm_with_initial_state_is_refused():
    class WithState(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = nn.GRU(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(self.rnn(x, torch.zeros(1, x.shape[1], 6))[0][-1])

    with pytest.raises(PrunekitError, match="initial state"):
        find_unit_groups(WithState(), torch.randn(5, 3, 4), "lstm-unit")


def test_tracing_restores_modes_and_frozen_parameters():
    model, inputs = build("resnet")
    model.train()
    model.stem.weight.requires_grad_(False)
    running_mean = model.bn.running_mean.clone()
    groups = find_unit_groups(model, inputs, "channel")
    assert all(m.training for m in model.modules())
    assert torch.equal(model.bn.running_mean, running_mean)
    shrink(model, inputs, random_keep(groups), groups)
    assert all(m.training for m in model.modules())
    assert not model.stem.weight.requires_grad and model.layer1[0].conv1.weight.requires_grad
