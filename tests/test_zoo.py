"""Reference models: every model on both input shapes, exact parameter counts, registry errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError, UnknownNameError
from prunekit.zoo import build_model, list_models

SHAPES = [(1, 28, 28), (1, 8, 8)]
MODELS = sorted(list_models())


def test_registry_names():
    assert set(MODELS) == {"lenet300", "lenet5", "vgg-small", "resnet20", "lstm", "transformer-tiny"}


@pytest.mark.parametrize("input_shape", SHAPES, ids=["28x28", "8x8"])
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_on_both_shapes(name, input_shape):
    torch.manual_seed(0)
    model = build_model(name, input_shape, 10)
    inputs = torch.rand(3, *input_shape)
    logits = model(inputs)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    # every parameter takes part in the forward pass: all of them receive a gradient
    logits.sum().backward()
    missing = [pname for pname, param in model.named_parameters() if param.grad is None]
    assert not missing
    # the classifier is an nn.Linear at the attribute the pruner looks for
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 10


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_and_no_active_dropout(name):
    model = build_model(name, (1, 8, 8), 3)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            assert module.p == 0.0
        if isinstance(module, nn.MultiheadAttention):
            assert module.dropout == 0.0


@pytest.mark.parametrize("name", MODELS)
def test_eval_outputs_do_not_depend_on_the_rest_of_the_batch(name):
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 10).eval()
    inputs = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(inputs)[:1], model(inputs[:1]), atol=1e-5)


def _linear_params(in_features: int, out_features: int) -> int:
    return in_features * out_features + out_features


def test_lenet300_parameter_count_matches_han_et_al():
    model = build_model("lenet300", (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == 266_610
    expected = _linear_params(784, 300) + _linear_params(300, 100) + _linear_params(100, 10)
    assert expected == 266_610
    assert [name for name, _ in model.named_children() if isinstance(_, nn.Linear)] == ["fc1", "fc2", "classifier"]


def test_lenet5_matches_caffe_lenet_on_mnist():
    model = build_model("lenet5", (1, 28, 28), 10)
    # conv 1->20 5x5, conv 20->50 5x5, fc 800->500, fc 500->10 (Caffe's LeNet): 431,080 parameters
    expected = (20 * 25 + 20) + (50 * 20 * 25 + 50) + _linear_params(800, 500) + _linear_params(500, 10)
    assert sum(p.numel() for p in model.parameters()) == expected == 431_080
    assert model.fc1.in_features == 800
    assert build_model("lenet5", (1, 8, 8), 10).fc1.in_features == 50 * 2 * 2


def test_resnet20_structure():
    model = build_model("resnet20", (1, 28, 28), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 20  # 19 3x3 convs + the classifier = 20 weighted layers
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 16
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [(p.in_channels, p.out_channels, p.stride) for p in projections] == [(16, 32, (2, 2)), (32, 64, (2, 2))]


def test_lstm_reads_rows_as_time_steps():
    model = build_model("lstm", (1, 28, 28), 10)
    assert model.lstm.input_size == 28 and model.lstm.hidden_size == 128 and model.lstm.batch_first
    inputs = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        reference, _ = model.lstm(inputs[:, 0])
        assert torch.allclose(model(inputs), model.classifier(reference[:, -1]))


def test_transformer_uses_sixteen_tokens_on_both_shapes():
    for shape in SHAPES:
        model = build_model("transformer-tiny", shape, 10)
        assert model.pos_embed.shape == (1, 16, 64)
        assert len(model.layers) == 2


def test_unknown_model_suggests_closest():
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnet2'; did you mean 'resnet20'\?"):
        build_model("resnet2", (1, 28, 28), 10)


def test_bad_shape_and_options_are_explained():
    with pytest.raises(PrunekitError, match="input_shape must be"):
        build_model("lenet300", (28, 28), 10)
    with pytest.raises(PrunekitError, match="does not accept the options"):
        build_model("lenet300", (1, 28, 28), 10, widths=(8, 8, 8))
    assert build_model("vgg-small", (1, 8, 8), 10, widths=(8, 8, 8)).classifier.in_features == 8
