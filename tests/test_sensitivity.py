"""Layer sensitivity: each layer pruned alone, the model left bit-identical, curves checked
against pruning the layer alone with prunekit.prune, files written by the API and the CLI."""

import copy
import json

import pytest
import torch
from invariants import mlp, one_thread, same_state, small_cnn  # noqa: F401  (one_thread: autouse)

from prunekit import PrunekitError, get_masks, layer_sensitivity, load_sensitivity, prune
from prunekit.cli import main
from prunekit.sensitivity import SensitivityResult, write_sensitivity

INPUTS = torch.randn(64, 20, generator=torch.Generator().manual_seed(1))
IMAGES = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def agreement_with(reference, inputs):
    """Share of `inputs` on which a model predicts what `reference` predicted (1.0 for itself)."""
    with torch.no_grad():
        labels = reference(inputs).argmax(1)

    def evaluate(model):
        with torch.no_grad():
            return float((model(inputs).argmax(1) == labels).float().mean())
    return evaluate


def alone(model, layer, others, **kwargs):
    """`model` copied with only `layer` pruned, by prunekit.prune excluding every other layer."""
    pruned = copy.deepcopy(model)
    prune(pruned, exclude=[name for name in others if name != layer], **kwargs)
    return pruned


def test_unstructured_curves_equal_pruning_each_layer_alone_and_leave_the_model_bit_identical():
    model = mlp().train()  # a training-mode model stays in training mode
    before = copy.deepcopy(model)
    rng = torch.get_rng_state()
    evaluate = agreement_with(copy.deepcopy(model).eval(), INPUTS)
    result = layer_sensitivity(model, evaluate, [0.5, 0.9])
    assert same_state(model, before) and not get_masks(model) and model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert result.sparsities == (0.0, 0.5, 0.9) and result.split == "validation"
    layers = ["0", "2", "4"]
    for name, curve in result.layers.items():
        assert curve.sparsity[0] == 0.0 and curve.metric[0] == result.dense_metric == evaluate(model)
        for sparsity, achieved, value in zip(result.sparsities[1:], curve.sparsity[1:], curve.metric[1:]):
            reference = alone(model, name.split(".")[0], layers, sparsity=sparsity)
            assert value == evaluate(reference)
            assert achieved == round(sparsity * curve.num_units) / curve.num_units


def test_channel_curves_equal_pruning_each_layer_alone():
    model = small_cnn().eval()
    evaluate = agreement_with(model, IMAGES)
    before = copy.deepcopy(model)
    result = layer_sensitivity(model, evaluate, [0.5], "l1", "channel", example_inputs=IMAGES[:2])
    assert same_state(model, before)
    assert list(result.layers) == ["0", "3"] and result.unit == "channel"
    for name, curve in result.layers.items():
        reference = alone(model, name, ["0", "3"], method="l1", sparsity=0.5, granularity="channel",
                          example_inputs=IMAGES[:2])
        assert curve.metric[1] == evaluate(reference)


def test_a_point_that_removes_no_unit_is_the_dense_value_without_measuring():
    calls = []

    def evaluate(model):
        calls.append(model)
        return 0.5

    result = layer_sensitivity(mlp((4, 3, 2)), evaluate, [0.1, 0.5])  # 0.1 of 6 or 12 weights rounds to 1
    assert result.layers["0.weight"].sparsity == (0.0, 1 / 12, 0.5)
    assert len(calls) == 1 + 2 * 2  # dense, then two points per layer; sparsity 0 is not measured again


def test_bad_input_is_refused_before_anything_runs():
    model = mlp()
    with pytest.raises(PrunekitError, match="evaluate_fn must be a function"):
        layer_sensitivity(model, 0.9, [0.5])
    with pytest.raises(PrunekitError, match=r"sparsities must be a non-empty list of numbers in \[0, 1\)"):
        layer_sensitivity(model, lambda m: 1.0, [0.5, 1.0])
    with pytest.raises(PrunekitError, match="must return a finite number"):
        layer_sensitivity(model, lambda m: "good", [0.5])
    with pytest.raises(PrunekitError, match="unknown granularity"):
        layer_sensitivity(model, lambda m: 1.0, [0.5], granularity="neurons")


def test_results_round_trip_through_the_files(tmp_path):
    result = layer_sensitivity(mlp(), agreement_with(mlp(), INPUTS), [0.5])
    json_path, png_path = write_sensitivity(result, tmp_path)
    assert load_sensitivity(tmp_path) == load_sensitivity(json_path) == result
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json_path.write_text("{}")
    with pytest.raises(PrunekitError, match="not a sensitivity result"):
        load_sensitivity(json_path)


def test_cli_sensitivity_writes_the_json_and_the_plot(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sensitivity", "--model", "lenet300", "--dataset", "digits", "--granularity", "neuron",
                 "--sparsities", "0.5,0.9", "--train-epochs", "1", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out), "--no-progress"])
    assert code == 0
    result = SensitivityResult.from_dict(json.loads((out / "sensitivity.json").read_text()))
    assert list(result.layers) == ["fc1", "fc2"] and result.sparsities == (0.0, 0.5, 0.9)
    assert result.meta["model"] == "lenet300" and result.split == "validation"
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "validation split" in printed and "fc1" in printed and "sensitivity.png" in printed
