import copy

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.masking import apply_masks, bake, get_masks, named_effective_parameters, original_parameter


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _random_masks(model, keep=0.5):
    generator = torch.Generator().manual_seed(1)
    return {
        "0.weight": torch.rand(model[0].weight.shape, generator=generator) < keep,
        "2.weight": torch.rand(model[2].weight.shape, generator=generator) < keep,
    }


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda params: torch.optim.Adam(params, lr=0.01, weight_decay=1e-3),
        lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
    ],
)
def test_pruned_weights_stay_zero_and_get_no_gradient(make_optimizer):
    model = _model()
    masks = _random_masks(model)
    apply_masks(model, masks)
    optimizer = make_optimizer(model.parameters())
    inputs, targets = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        for name, keep in masks.items():
            grad = original_parameter(model, name).grad
            assert bool((grad[~keep] == 0).all())
        optimizer.step()
    for name, weight in named_effective_parameters(model):
        if name in masks:
            assert bool((weight[~masks[name]] == 0).all())
            assert bool((weight[masks[name]] != 0).all())


def test_masked_forward_matches_manual_reference():
    model = _model()
    reference = copy.deepcopy(model)
    masks = _random_masks(model)
    apply_masks(model, masks)
    with torch.no_grad():
        reference[0].weight.mul_(masks["0.weight"])
        reference[2].weight.mul_(masks["2.weight"])
    inputs = torch.randn(4, 6)
    torch.testing.assert_close(model(inputs), reference(inputs), rtol=0, atol=0)


def test_bake_gives_plain_state_dict_loadable_into_unpruned_architecture():
    model = _model()
    masks = _random_masks(model)
    apply_masks(model, masks)
    inputs = torch.randn(4, 6)
    expected = model(inputs)
    bake(model)
    assert get_masks(model) == {}
    fresh = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(fresh(inputs), expected, rtol=0, atol=0)
    assert int((fresh[0].weight == 0).sum()) == int((~masks["0.weight"]).sum())


def test_second_mask_is_anded_in():
    model = _model()
    first = torch.ones(5, 6, dtype=torch.bool)
    first[0] = False
    second = torch.ones(5, 6, dtype=torch.bool)
    second[1] = False
    apply_masks(model, {"0.weight": first})
    apply_masks(model, {"0.weight": second})
    assert get_masks(model)["0.weight"].tolist() == (first & second).tolist()


def test_bad_masks_are_refused_before_anything_changes():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    good = torch.ones(5, 6, dtype=torch.bool)
    with pytest.raises(PrunekitError, match="shape"):
        apply_masks(model, {"0.weight": good, "2.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(PrunekitError, match="names no parameter"):
        apply_masks(model, {"0.weight": good, "9.weight": good})
    assert get_masks(model) == {}
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_lstm_weights_can_be_masked():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 3, batch_first=True)
    keep = torch.rand(12, 3) > 0.5
    reference = copy.deepcopy(lstm)
    with torch.no_grad():
        reference.weight_hh_l0.mul_(keep)
    apply_masks(lstm, {"weight_hh_l0": keep})
    inputs = torch.randn(2, 5, 4)
    torch.testing.assert_close(lstm(inputs)[0], reference(inputs)[0])


def test_effective_parameters_list_each_parameter_once_under_its_plain_name():
    model = _model()
    plain = [name for name, _ in named_effective_parameters(model)]
    apply_masks(model, _random_masks(model))
    masked = [name for name, _ in named_effective_parameters(model)]
    assert sorted(masked) == sorted(plain) == ["0.bias", "0.weight", "2.bias", "2.weight"]


def test_baking_a_deepcopy_leaves_the_original_masked():
    model = _model()
    masks = _random_masks(model)
    apply_masks(model, masks)
    inputs = torch.randn(3, 6)
    expected = model(inputs)
    baked = bake(copy.deepcopy(model))
    torch.testing.assert_close(baked(inputs), expected, rtol=0, atol=0)
    torch.testing.assert_close(model(inputs), expected, rtol=0, atol=0)
    assert get_masks(model).keys() == masks.keys() and get_masks(baked) == {}
    assert type(baked[0]) is nn.Linear


def test_baked_lstm_matches_masked_lstm():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 3, batch_first=True)
    apply_masks(lstm, {"weight_hh_l0": torch.rand(12, 3) > 0.5, "weight_ih_l0": torch.rand(12, 4) > 0.5})
    inputs = torch.randn(2, 5, 4)
    expected = lstm(inputs)[0]
    bake(lstm)
    assert type(lstm) is nn.LSTM
    torch.testing.assert_close(lstm(inputs)[0], expected)
