"""Property-based tests (hypothesis) of structured pruning on drawn tiny models
(tests/drawn_models.py), an LSTM, and the zoo's transformer-tiny and resnet20:

3. for every structured granularity, physical removal computes what masking computes, and
   masking followed by ``remove_masked_units`` gives the state that removal gives directly;
5. unstructured then structured removal keeps the weight masks of the kept units.

Two tests pin bugs these properties found (a masked LSTM could not lose units; the one-unit
floor was undone once masks had emptied a layer), fixed since.
"""

from __future__ import annotations

import copy

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from prunekit import Pruner, get_masks, prune, remove_masked_units
from prunekit.zoo import build_model

from drawn_models import (  # the strategies, Spec and references shared by the property tests
    CLASSES, PROPERTY, Spec, assert_same_outputs, cnns, mlps, pixels, randomise_norms,
    residual_nets, scopes, seeds, sparsities, unit_sparsities, widths,
)
from invariants import n_params, one_thread, same_state  # noqa: F401 - one_thread: autouse fixture


# ---------------------------------------------------------------- 3. removal == masking


def check_removal_equals_masking(model: nn.Module, inputs: torch.Tensor, granularity: str,
                                 then_remove_masked: bool = True, **kwargs) -> None:
    """prune(remove=False) and prune(remove=True) compute the same and the removed copy is
    smaller when anything went; masking then remove_masked_units, and a Pruner's step() then
    finalize(), give the removed copy's state."""
    example_inputs = inputs[:2]
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    masked_result = prune(masked, granularity=granularity, remove=False, example_inputs=example_inputs, **kwargs)
    removed_result = prune(removed, granularity=granularity, remove=True, example_inputs=example_inputs, **kwargs)
    assert_same_outputs(removed, masked, inputs)
    assert masked_result.units_after == removed_result.units_after
    if removed_result.units_after < removed_result.units_before:
        assert n_params(removed) < n_params(model)
    else:
        assert same_state(removed, model)
    if then_remove_masked:
        remove_masked_units(masked, granularity, example_inputs)
        assert same_state(masked, removed)
        assert_same_outputs(removed, masked, inputs)
        pruner = Pruner(copy.deepcopy(model), granularity=granularity, example_inputs=example_inputs, **kwargs)
        pruner.step()
        assert same_state(pruner.finalize(), removed)


@PROPERTY
@given(spec=mlps(min_layers=2), sparsity=unit_sparsities, scope=scopes,
       method=st.sampled_from(["l1", "l2", "fpgm", "weight-norm", "random", "activation-mean", "taylor"]), seed=seeds)
def test_neuron_removal_equals_masking_on_mlps(spec, sparsity, scope, method, seed):
    check_removal_equals_masking(spec.build(), spec.inputs(), "neuron", method=method, sparsity=sparsity,
                                 scope=scope, seed=seed, data=[(spec.inputs(), spec.targets())])


@PROPERTY
@given(spec=st.one_of(cnns(), residual_nets()), sparsity=unit_sparsities, scope=scopes,
       method=st.sampled_from(["l1", "l2", "fpgm", "bn-scale", "random", "activation-mean", "taylor"]), seed=seeds)
def test_channel_removal_equals_masking_on_cnns_and_residual_nets(spec, sparsity, scope, method, seed):
    assume(method != "bn-scale" or spec.kind == "residual" or all(spec.batchnorm))  # it needs a BatchNorm per conv
    check_removal_equals_masking(spec.build(), spec.inputs(), "channel", method=method, sparsity=sparsity, scope=scope,
                                 seed=seed, data=[(spec.inputs(), spec.targets())])


def lstm_case(hidden: int, size: int, model_seed: int, seed: int) -> tuple[nn.Module, torch.Tensor, list]:
    """The zoo LSTM with `hidden` units for size x size inputs, inputs, and one batch of data."""
    torch.manual_seed(model_seed)
    model = build_model("lstm", (1, size, size), CLASSES, hidden_size=hidden).eval()
    inputs = torch.randn(6, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return model, inputs, [(inputs, torch.arange(6) % CLASSES)]


lstm_methods = st.sampled_from(["l1", "l2", "random", "activation-mean"])


@PROPERTY
@given(hidden=widths, size=pixels, model_seed=seeds, sparsity=unit_sparsities, method=lstm_methods, seed=seeds)
def test_lstm_unit_removal_equals_masking(hidden, size, model_seed, sparsity, method, seed):
    model, inputs, data = lstm_case(hidden, size, model_seed, seed)
    check_removal_equals_masking(model, inputs, "lstm-unit", then_remove_masked=False,  # that part: the test below
                                 method=method, sparsity=sparsity, seed=seed, data=data)


@settings(PROPERTY, max_examples=10)
@given(hidden=widths, size=pixels, model_seed=seeds, sparsity=unit_sparsities, method=lstm_methods, seed=seeds)
def test_lstm_unit_masking_then_remove_masked_units_equals_removal(hidden, size, model_seed, sparsity, method, seed):
    model, inputs, data = lstm_case(hidden, size, model_seed, seed)
    check_removal_equals_masking(model, inputs, "lstm-unit", method=method, sparsity=sparsity, seed=seed, data=data)


def tiny_transformer(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("transformer-tiny", (1, 8, 8), CLASSES).eval()


@settings(PROPERTY, max_examples=15)
@given(model_seed=seeds, sparsity=unit_sparsities, scope=scopes,
       method=st.sampled_from(["l1", "l2", "random", "activation-mean"]), seed=seeds)
def test_head_removal_equals_masking_on_transformer_tiny(model_seed, sparsity, scope, method, seed):
    inputs = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    data = [(inputs, torch.arange(6) % CLASSES)]
    check_removal_equals_masking(tiny_transformer(model_seed), inputs, "head", method=method, sparsity=sparsity,
                                 scope=scope, seed=seed, data=data)


@st.composite
def layered_models(draw) -> tuple[str, nn.Module, torch.Tensor]:
    """(name, model, inputs): transformer-tiny, resnet20 or a drawn residual net of 2-3 blocks (the
    name is there for hypothesis's report of a failing example)."""
    name = draw(st.sampled_from(["transformer-tiny", "resnet20", "residual"]))
    seed = draw(seeds)
    if name == "residual":
        spec = draw(residual_nets(min_blocks=2))
        return name, spec.build(), spec.inputs()
    torch.manual_seed(seed)
    shape = (1, 8, 8) if name == "transformer-tiny" else (draw(st.integers(1, 3)), 8, 8)
    model = randomise_norms(build_model(name, shape, CLASSES), seed).eval()
    return name, model, torch.randn(6, *shape, generator=torch.Generator().manual_seed(seed))


@settings(PROPERTY, max_examples=15)
@given(case=layered_models(), sparsity=unit_sparsities, scope=scopes,
       method=st.sampled_from(["random", "removal-cost"]), seed=seeds)
def test_layer_removal_equals_masking(case, sparsity, scope, method, seed):
    _, model, inputs = case
    data = [(inputs, torch.arange(len(inputs)) % CLASSES)]
    check_removal_equals_masking(model, inputs, "layer", method=method, sparsity=sparsity, scope=scope, seed=seed,
                                 data=data)


# ---------------------------------------------------------------- 5. mixed order


def kept_units(record) -> dict[str, list[int]]:
    """Per group a ShrinkRecord names, the unit indices that stayed."""
    return {step["group"]: sorted(set(range(step["num_units"])) - set(step["removed"])) for step in record.steps}


def expected_carried_masks(weight_masks: dict[str, torch.Tensor], kept: dict[str, list[int]],
                           layers: int) -> dict[str, torch.Tensor]:
    """The weight masks of an MLP (Linear layers at 0, 2, 4, ...) sliced to the kept neurons; all-True dropped."""
    carried = {}
    for layer in range(layers):
        name = f"{2 * layer}.weight"
        keep = weight_masks[name]
        rows = kept.get(str(2 * layer), range(keep.shape[0]))
        columns = kept.get(str(2 * layer - 2), range(keep.shape[1]))
        keep = keep[list(rows)][:, list(columns)]
        if not bool(keep.all()):
            carried[name] = keep
    return carried


def check_unstructured_then_neuron_removal(spec: Spec, weight_sparsity: float, unit_sparsity: float, method: str,
                                           seed: int) -> None:
    """Global unstructured pruning, then neuron removal: computes what neuron masking computes, and
    the weight masks of the kept neurons stay (sliced with the weights), their weights zero."""
    model, inputs = spec.build(), spec.inputs()
    prune(model, sparsity=weight_sparsity, scope="global")
    weight_masks = get_masks(model)
    masked = copy.deepcopy(model)
    kwargs = dict(method=method, sparsity=unit_sparsity, granularity="neuron", example_inputs=inputs[:2], seed=seed)
    prune(masked, remove=False, **kwargs)
    result = prune(model, remove=True, **kwargs)
    assert_same_outputs(model, masked, inputs)
    carried = get_masks(model)
    expected = expected_carried_masks(weight_masks, kept_units(result.shrink_record), len(spec.widths) - 1)
    assert carried.keys() == expected.keys()
    assert all(torch.equal(carried[name], expected[name]) for name in carried)
    for name, keep in carried.items():
        assert not bool(model.get_submodule(name.rpartition(".")[0]).weight[~keep].any()), name


@PROPERTY
@given(spec=mlps(min_layers=2), weight_sparsity=sparsities, unit_sparsity=unit_sparsities,
       method=st.sampled_from(["l1", "fpgm", "random"]), seed=seeds)
def test_unstructured_then_neuron_removal_keeps_weight_masks_of_kept_neurons(spec, weight_sparsity, unit_sparsity,
                                                                          method, seed):
    check_unstructured_then_neuron_removal(spec, weight_sparsity, unit_sparsity, method, seed)


def test_neuron_pruning_after_unstructured_pruning_emptied_a_layer():
    """The minimal example hypothesis found for the property above (in a run of 150 random examples;
    the 25 derandomized ones do not reach it): it used to fail because the one-unit floor was undone
    by the units the masks had already taken."""
    spec = Spec("mlp", (2, 2, 2, 2), bias=False, seed=0)
    model = spec.build()
    prune(model, sparsity=0.88, scope="global")
    assert not get_masks(model)["2.weight"].any() and not get_masks(model)["4.weight"].any()  # layer '2' is dead
    check_unstructured_then_neuron_removal(spec, weight_sparsity=0.88, unit_sparsity=0.0, method="l1", seed=0)


@PROPERTY
@given(spec=st.one_of(cnns(), residual_nets()), weight_sparsity=sparsities, unit_sparsity=unit_sparsities,
       method=st.sampled_from(["l1", "random"]), seed=seeds)
def test_unstructured_then_channel_removal_equals_masking(spec, weight_sparsity, unit_sparsity, method, seed):
    model, inputs = spec.build(), spec.inputs()
    prune(model, sparsity=weight_sparsity, scope="global")
    masked = copy.deepcopy(model)
    kwargs = dict(method=method, sparsity=unit_sparsity, granularity="channel", example_inputs=inputs[:2], seed=seed)
    prune(masked, remove=False, **kwargs)
    prune(model, remove=True, **kwargs)
    assert_same_outputs(model, masked, inputs)
    remove_masked_units(masked, "channel", inputs[:2])
    assert same_state(masked, model)
    for name, keep in get_masks(model).items():
        assert not bool(model.get_submodule(name.rpartition(".")[0]).weight[~keep].any()), name
