"""The learned mask predictor: its features, fitting, pruning through the Pruner, saving, refusals."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from prunekit import Pruner, prune
from prunekit.errors import PrunekitError
from prunekit.masking import get_masks
from prunekit.predictor import MaskPredictor, PredictorConfig, mask_agreement
from prunekit.predictor_features import FEATURE_NAMES, LayerInput, layer_features, layer_kind


def _column(features: torch.Tensor, name: str) -> list[float]:
    return features[:, FEATURE_NAMES.index(name)].tolist()


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 5))


def _data(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 30, generator=generator), torch.randint(0, 5, (32,), generator=generator))
            for _ in range(2)]


@pytest.fixture(scope="module")
def magnitude_predictor() -> MaskPredictor:
    """Fitted on labels that are exactly "keep the largest |w|" (global magnitude at 70%)."""
    model = _mlp(0)
    labelled = copy.deepcopy(model)
    keep = prune(labelled, "magnitude", 0.7, scope="global").masks
    return MaskPredictor(PredictorConfig(epochs=60, batch_size=256)).fit(model, keep, _data())


def test_features_of_a_tiny_linear_match_hand_computed_values():
    weight = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    grad = torch.tensor([[0.1, 0.2], [0.4, 0.05]])
    features = layer_features([LayerInput("fc.weight", "linear", weight, grad)])["fc.weight"]
    logs = [0.0, math.log(2), math.log(0.5), math.log(4)]
    mean = sum(logs) / 4
    spread = math.sqrt(sum((value - mean) ** 2 for value in logs) / 4)
    assert _column(features, "log_w") == pytest.approx(logs, abs=1e-6)
    assert _column(features, "z_log_w") == pytest.approx([(value - mean) / spread for value in logs], abs=1e-5)
    assert _column(features, "log_grad") == pytest.approx([math.log(v) for v in (0.1, 0.2, 0.4, 0.05)], abs=1e-6)
    assert _column(features, "log_taylor") == pytest.approx([math.log(v) for v in (0.1, 0.4, 0.2, 0.2)], abs=1e-6)
    assert _column(features, "rank_w") == pytest.approx([1 / 3, 2 / 3, 0.0, 1.0])
    # rows (output units) have mean |w| 1.5 and 2.25, columns (input units) 0.75 and 3: two units, z = -1 / +1
    assert _column(features, "z_log_out_unit") == pytest.approx([-1.0, -1.0, 1.0, 1.0], abs=1e-6)
    assert _column(features, "z_log_in_unit") == pytest.approx([-1.0, 1.0, -1.0, 1.0], abs=1e-6)
    assert _column(features, "log_fan_in") == pytest.approx([math.log(2)] * 4)
    for name, value in (("layer_share", 1.0), ("layer_depth", 0.0), ("kernel_offset", 0.0), ("is_conv", 0.0)):
        assert _column(features, name) == [value] * 4


def test_layer_statistics_and_conv_positions():
    first = LayerInput("a.weight", "linear", torch.ones(2, 2), torch.ones(2, 2))
    conv = LayerInput("b.weight", "conv2d", torch.ones(1, 1, 3, 3), torch.ones(1, 1, 3, 3))
    features = layer_features([first, conv])
    assert _column(features["a.weight"], "layer_share") == pytest.approx([4 / 13] * 4)
    assert _column(features["b.weight"], "layer_share") == pytest.approx([9 / 13] * 9)
    assert _column(features["a.weight"], "layer_depth") == [0.0] * 4
    assert _column(features["b.weight"], "layer_depth") == [1.0] * 9
    edge = math.sqrt(0.5)  # one step from the centre along one axis; a corner is 1
    assert _column(features["b.weight"], "kernel_offset") == pytest.approx([1, edge, 1, edge, 0, edge, 1, edge, 1])
    assert _column(features["b.weight"], "is_conv") == [1.0] * 9
    assert _column(features["b.weight"], "log_fan_in") == pytest.approx([math.log(9)] * 9)


def test_layer_kind_names_every_prunable_layer():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv1d(2, 2, 1), nn.Linear(4, 2), nn.LSTM(2, 2))
    kinds = [layer_kind(model, name) for name in ("0.weight", "1.weight", "2.weight", "3.weight_hh_l0")]
    assert kinds == ["conv2d", "conv1d", "linear", "LSTM"]


def test_mask_agreement_counts_pruned_and_kept_weights():
    reference = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([False, True])}
    keep = {"a": torch.tensor([False, False, True, False]), "b": torch.tensor([False, True])}
    # pruned: mine {a0, a1, a3, b0}, theirs {a1, a2, a3, b0}: 3 shared of 4 each; kept: {b1} of {a0, a2, b1}
    assert mask_agreement(keep, reference) == pytest.approx(
        {"precision": 0.75, "recall": 0.75, "f1": 0.75, "jaccard_kept": 1 / 3})


def test_predictor_fitted_on_magnitude_labels_reproduces_magnitude_on_another_model(magnitude_predictor):
    other = _mlp(1)
    by_magnitude, by_predictor = copy.deepcopy(other), copy.deepcopy(other)
    reference = prune(by_magnitude, "magnitude", 0.7, scope="global").masks
    result = prune(by_predictor, "predictor", 0.7, scope="global", data=_data(1), predictor=magnitude_predictor)
    agreement = mask_agreement(result.masks, reference)
    assert result.sparsity_achieved == pytest.approx(0.7, abs=1e-3)
    assert agreement["f1"] > 0.97 and agreement["jaccard_kept"] > 0.9


def test_pruner_masks_exactly_what_the_predicted_scores_say(magnitude_predictor):
    model, data = _mlp(2), _data(2)
    probabilities = magnitude_predictor.predict(model, data)
    pruner = Pruner(model, "predictor", 0.6, scope="global", predictor=magnitude_predictor, data=data)
    result = pruner.step()
    assert result.sparsity_achieved == pytest.approx(0.6, abs=1e-3)
    masks = get_masks(model)
    kept = torch.cat([probabilities[name].float()[masks[name]] for name in masks])
    pruned = torch.cat([probabilities[name].float()[~masks[name]] for name in masks])
    assert float(kept.min()) >= float(pruned.max())  # every kept weight scored at least every pruned one
    layer_model = _mlp(2)
    prune(layer_model, "predictor", 0.5, scope="layer", data=data, predictor=magnitude_predictor)
    for name, mask in get_masks(layer_model).items():
        assert int(mask.sum()) == mask.numel() // 2
        assert float(probabilities[name][mask].min()) >= float(probabilities[name][~mask].max())


def test_save_and_load_give_identical_predictions(magnitude_predictor, tmp_path):
    path = tmp_path / "predictor.pt"
    magnitude_predictor.save(path)
    loaded = MaskPredictor.load(path)
    model, data = _mlp(3), _data(3)
    expected, got = magnitude_predictor.predict(model, data), loaded.predict(model, data)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert loaded.describe() == magnitude_predictor.describe() and loaded.kinds == ("linear",)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(PrunekitError, match="not a prunekit mask predictor"):
        MaskPredictor.load(tmp_path / "other.pt")
    with pytest.raises(PrunekitError, match="not been fitted"):
        MaskPredictor().save(tmp_path / "empty.pt")


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(30, 8, batch_first=True)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.lstm(x.unsqueeze(1))[0][:, -1])


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("build, message", [
    (_Recurrent, "no features for LSTM layers .*exclude those layers \\(exclude=\\['lstm'\\]"),
    (lambda: nn.Sequential(nn.Unflatten(1, (1, 5, 6)), nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(24, 5)),
     "fitted on linear layers and never saw conv2d weights \\(1.weight\\)"),
])
def test_layers_without_features_are_refused_and_the_model_is_untouched(magnitude_predictor, build, message):
    model = build()
    before = _state(model)
    with pytest.raises(PrunekitError, match=message):
        Pruner(model, "predictor", 0.5, predictor=magnitude_predictor, data=_data())
    with pytest.raises(PrunekitError, match=message):
        prune(model, "predictor", 0.5, predictor=magnitude_predictor, data=_data())
    after = _state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[name], after[name]) for name in before)
    assert get_masks(model) == {}


def test_excluding_the_unsupported_layers_prunes_the_rest(magnitude_predictor):
    model = _Recurrent()
    lstm_before = _state(model.lstm)
    result = prune(model, "predictor", 0.5, predictor=magnitude_predictor, data=_data(), exclude=[nn.LSTM])
    assert result.targets == ["fc.weight"] and result.sparsity_achieved == pytest.approx(0.5)
    assert all(torch.equal(lstm_before[name], tensor) for name, tensor in model.lstm.state_dict().items())


@pytest.mark.parametrize("method, kwargs, message", [
    ("predictor", {"data": "batches"}, "pass predictor=MaskPredictor.load"),
    ("magnitude", {"predictor": "fitted"}, "predictor= is read by method 'predictor' only"),
    ("predictor", {"predictor": "unfitted", "data": "batches"}, "has not been fitted"),
    ("predictor", {"predictor": "fitted"}, "needs data"),
])
def test_bad_predictor_options_are_refused_before_anything_changes(magnitude_predictor, method, kwargs, message):
    model = _mlp(4)
    before = _state(model)
    values = {"batches": _data(), "fitted": magnitude_predictor, "unfitted": MaskPredictor()}
    with pytest.raises(PrunekitError, match=message):
        Pruner(model, method, 0.5, **{key: values[value] for key, value in kwargs.items()})
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert get_masks(model) == {}


def test_compare_refuses_the_predictor_method_before_any_training():
    from prunekit.methods import parse_method_spec

    with pytest.raises(PrunekitError, match="needs a fitted MaskPredictor"):
        parse_method_spec("predictor@0.9")
