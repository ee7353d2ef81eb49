"""Bad input gets a clear error and leaves the model exactly as it was."""

import copy

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.masking import get_masks
from prunekit.pruner import prune


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _assert_unchanged(model, before):
    assert get_masks(model) == {}
    state = model.state_dict()
    assert state.keys() == before.keys()
    for name, tensor in before.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 1.0}, r"\[0, 1\)"),
        ({"sparsity": -0.1}, r"\[0, 1\)"),
        ({"sparsity": "0.5"}, r"\[0, 1\)"),
        ({"method": "magnitud", "sparsity": 0.5}, "did you mean 'magnitude'"),
        ({"method": "taylr", "sparsity": 0.5}, "did you mean 'taylor'"),
        ({"sparsity": 0.5, "threshold": 0.1}, "exactly one of"),
        ({}, "exactly one of"),
        ({"method": "gradient", "sparsity": 0.5}, "needs data"),
        ({"method": "taylor", "sparsity": 0.5}, "needs data"),
        ({"sparsity": 0.5, "exclude": ["fc9"]}, "match no prunable layer"),
        ({"sparsity": 0.5, "scope": "globl"}, "did you mean 'global'"),
        ({"sparsity": 0.5, "granularity": "unstructurd"}, "did you mean 'unstructured'"),
        ({"sparsity": 0.5, "exclude": ["0", "2"]}, "nothing left to prune"),
    ],
)
def test_bad_arguments_raise_clear_errors_and_leave_model_unchanged(kwargs, message):
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match=message):
        prune(model, **kwargs)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(bad_value):
    model = _model()
    with torch.no_grad():
        model[2].weight[0, 0] = bad_value
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match="NaN or Inf"):
        prune(model, sparsity=0.5)
    _assert_unchanged(model, before)


def test_unknown_method_error_lists_choices():
    with pytest.raises(PrunekitError) as error:
        prune(_model(), method="nonsense", sparsity=0.5)
    assert "magnitude" in str(error.value) and "random" in str(error.value)
