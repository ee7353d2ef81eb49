"""Bad input to the graph package (groups, keep-masks, records, models it cannot follow) gets a
clear error and leaves the model exactly as it was."""

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError, UnknownNameError
from prunekit.graph import find_unit_groups, shrink
from prunekit.masking import apply_masks

from graph_models import IMAGE, assert_unchanged, build, snapshot
from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)
from invariants import random_keep


# ---------------------------------------------------------------- bad input leaves the model alone


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
    before = snapshot(model)
    with pytest.raises(PrunekitError, match=message):
        shrink(model, inputs, keep_units)
    assert_unchanged(model, before)
    assert model[0].out_features == 16


def test_shrink_refuses_masked_model_and_points_to_the_removal_that_carries_masks():
    model, inputs = build("mlp")
    apply_masks(model, {"0.weight": torch.rand(16, 20) > 0.5})
    with pytest.raises(PrunekitError, match="remove_masked_units carry the masks"):
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
    before = snapshot(model)
    groups = find_unit_groups(model, inputs, "channel")
    with pytest.raises(PrunekitError, match="'conv'.*model was not changed"):
        shrink(model, inputs, {"conv": torch.tensor([True, False, True])}, groups)
    assert_unchanged(model, before)


def test_channels_last_flatten_that_torch_pruning_mismaps_is_refused():
    class ChannelsLast(nn.Module):  # features are (h, w, c): torch-pruning assumes (c, h, w)
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 14 * 14, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).permute(0, 2, 3, 1).flatten(1))

    model = ChannelsLast().eval()
    before = snapshot(model)
    with pytest.raises(PrunekitError, match="'conv' would not match masking them"):
        shrink(model, IMAGE, {"conv": torch.tensor([True, False, True, True])})
    assert_unchanged(model, before)


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
