"""Property-based tests (hypothesis) of prunekit.prune on drawn tiny models.

Models are drawn: MLPs (depth, widths, with/without bias), CNNs (Conv2d +/- BatchNorm2d + ReLU
stacks, then flatten or pooling and a Linear), small residual nets (identity-shortcut blocks), an
LSTM, and the zoo's transformer-tiny and resnet20. Every property is checked against a reference:

1. unstructured pruning removes exactly ``round(s * n)`` weights per tensor (layer scope) or over
   all targeted weights (global scope), and the result reports that count;
2. re-pruning never revives a weight and lands on the second target's count;
3. for every structured granularity, physical removal computes what masking computes, and
   masking followed by ``remove_masked_units`` gives the state that removal gives directly;
4. module train/eval flags, torch's global RNG state and BatchNorm running statistics are as
   they were after every call, also with a shuffling DataLoader as data;
5. unstructured then structured removal keeps the weight masks of the kept units.

Two tests pin bugs these properties found (a masked LSTM could not lose units; the one-unit
floor was undone once masks had emptied a layer), fixed since.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit import Pruner, get_masks, prune, remove_masked_units
from prunekit.zoo import build_model

from invariants import n_params, one_thread, same_state  # noqa: F401 - one_thread: autouse fixture

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
CLASSES = 3
UNIT_GRANULARITY = {"mlp": "neuron", "cnn": "channel", "residual": "channel"}


# ---------------------------------------------------------------- drawn models


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the identity, then relu (``shortcut`` marks it removable)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(branch + self.shortcut(x))


@dataclass(frozen=True)
class Spec:
    """A drawn model: `kind` "mlp" (`widths` = input, hidden..., output), "cnn" (`widths` = conv
    channels) or "residual" (`widths` = (channels,), `blocks` blocks). Built seeded by `seed`."""

    kind: str
    widths: tuple[int, ...]
    bias: bool = True
    batchnorm: tuple[bool, ...] = ()
    pool: bool = False
    blocks: int = 0
    in_channels: int = 1
    size: int = 8
    seed: int = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.widths[0],) if self.kind == "mlp" else (self.in_channels, self.size, self.size)

    def inputs(self, rows: int = 6, seed: int = 1) -> torch.Tensor:
        return torch.randn(rows, *self.input_shape, generator=torch.Generator().manual_seed(seed))

    def targets(self, rows: int = 6) -> torch.Tensor:
        return torch.arange(rows) % (self.widths[-1] if self.kind == "mlp" else CLASSES)

    def build(self) -> nn.Module:
        """The model in eval mode, with non-trivial BatchNorm affine parameters and statistics."""
        torch.manual_seed(self.seed)
        model = {"mlp": self._mlp, "cnn": self._cnn, "residual": self._residual}[self.kind]()
        return randomise_norms(model, self.seed).eval()

    def _mlp(self) -> nn.Module:
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(self.widths[:-1], self.widths[1:]):
            layers += [nn.Linear(fan_in, fan_out, bias=self.bias), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    def _cnn(self) -> nn.Module:
        layers: list[nn.Module] = []
        channels = self.in_channels
        for width, norm in zip(self.widths, self.batchnorm):
            layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=self.bias))
            layers += [nn.BatchNorm2d(width)] if norm else []
            layers.append(nn.ReLU())
            channels = width
        features = channels if self.pool else channels * self.size ** 2
        layers += [nn.AdaptiveAvgPool2d(1)] if self.pool else []
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, CLASSES))

    def _residual(self) -> nn.Module:
        (channels,) = self.widths
        return nn.Sequential(
            nn.Conv2d(self.in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Sequential(*[ResidualBlock(channels) for _ in range(self.blocks)]),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, CLASSES),
        )


def randomise_norms(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
                module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
    return model


seeds = st.integers(0, 2**16)
sparsities = st.integers(0, 95).map(lambda percent: percent / 100)  # spread over [0, 0.95], not piled near 0
# tiny models have few units: a coarser grid so that most draws remove some
unit_sparsities = st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95])
scopes = st.sampled_from(["layer", "global"])
weight_methods = st.sampled_from(["magnitude", "random", "normalized"])
widths = st.integers(2, 12)
pixels = st.integers(6, 10)


@st.composite
def mlps(draw, min_layers: int = 1) -> Spec:
    layers = draw(st.integers(min_layers, 3))
    return Spec("mlp", tuple(draw(st.lists(widths, min_size=layers + 1, max_size=layers + 1))),
                bias=draw(st.booleans()), seed=draw(seeds))


@st.composite
def cnns(draw) -> Spec:
    convs = draw(st.integers(1, 3))
    return Spec("cnn", tuple(draw(st.lists(st.integers(2, 8), min_size=convs, max_size=convs))),
                bias=draw(st.booleans()),
                batchnorm=tuple(draw(st.lists(st.booleans(), min_size=convs, max_size=convs))),
                pool=draw(st.booleans()), in_channels=draw(st.integers(1, 3)), size=draw(pixels),
                seed=draw(seeds))


@st.composite
def residual_nets(draw, min_blocks: int = 1) -> Spec:
    return Spec("residual", (draw(st.integers(2, 8)),), blocks=draw(st.integers(min_blocks, 3)),
                in_channels=draw(st.integers(1, 3)), size=draw(pixels), seed=draw(seeds))


any_model = st.one_of(mlps(), cnns(), residual_nets())
structured_model = st.one_of(mlps(min_layers=2), cnns(), residual_nets())


# ---------------------------------------------------------------- references


def weight_sizes(model: nn.Module) -> dict[str, int]:
    """Sizes of the Linear / Conv weights: what unstructured pruning targets (never biases)."""
    return {f"{name}.weight": module.weight.numel() for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d))}


def all_weights_nonzero(model: nn.Module) -> bool:
    return all(bool((model.get_submodule(name.rpartition(".")[0]).weight != 0).all()) for name in weight_sizes(model))


def pruned_counts(model: nn.Module) -> dict[str, int]:
    return {name: int((~keep).sum()) for name, keep in get_masks(model).items()}


def outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs)


def assert_same_outputs(a: nn.Module, b: nn.Module, inputs: torch.Tensor) -> None:
    torch.testing.assert_close(outputs(a, inputs), outputs(b, inputs), atol=1e-5, rtol=0)


def norm_statistics(model: nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
    return {name: (module.running_mean.clone(), module.running_var.clone(), module.num_batches_tracked.clone())
            for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)}


# ---------------------------------------------------------------- 1. exact targets


@PROPERTY
@given(spec=any_model, sparsity=sparsities, scope=scopes, method=weight_methods, seed=seeds)
def test_unstructured_pruning_removes_exactly_round_s_times_n(spec, sparsity, scope, method, seed):
    model = spec.build()
    assume(all_weights_nonzero(model))
    sizes = weight_sizes(model)
    result = prune(model, method=method, sparsity=sparsity, scope=scope, seed=seed)
    counts = pruned_counts(model)
    assert set(counts) == set(sizes)
    total = sum(sizes.values())
    if scope == "layer":
        assert counts == {name: round(sparsity * size) for name, size in sizes.items()}
    else:
        assert sum(counts.values()) == round(sparsity * total)
    assert result.units_targeted == total
    assert result.units_targeted - result.units_after == sum(counts.values())
    assert result.sparsity_achieved == pytest.approx(sum(counts.values()) / total)


# ---------------------------------------------------------------- 2. no revival


@PROPERTY
@given(spec=any_model, first=sparsities, extra=st.floats(0.0, 1.0), scope_pair=st.tuples(scopes, scopes),
       method=weight_methods, seed=seeds)
def test_repruning_never_revives_a_weight(spec, first, extra, scope_pair, method, seed):
    second = first + extra * (0.95 - first)
    model = spec.build()
    assume(all_weights_nonzero(model))
    sizes = weight_sizes(model)
    prune(model, sparsity=first, scope=scope_pair[0])
    before, before_counts = get_masks(model), pruned_counts(model)
    result = prune(model, method=method, sparsity=second, scope=scope_pair[1], seed=seed)
    after, counts = get_masks(model), pruned_counts(model)
    assert set(after) == set(before)
    assert all(not bool((after[name] & ~before[name]).any()) for name in after)
    if scope_pair[1] == "layer":
        expected = {name: max(before_counts[name], round(second * size)) for name, size in sizes.items()}
        assert counts == expected
    else:
        assert sum(counts.values()) == max(sum(before_counts.values()), round(second * sum(sizes.values())))
    assert result.units_targeted - result.units_after == sum(counts.values())


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


# ---------------------------------------------------------------- 4. modes, RNG, statistics


def shuffling_loader(spec: Spec, seed: int) -> DataLoader:
    """A DataLoader that shuffles with torch's global RNG (no generator of its own)."""
    return DataLoader(TensorDataset(spec.inputs(rows=12, seed=seed), spec.targets(rows=12)), batch_size=4, shuffle=True)


def assert_state_preserved(model: nn.Module, modes: dict[str, bool], statistics: dict, rng: torch.Tensor,
                           same_modules: bool) -> None:
    """Modes (by module name), global RNG state and BN statistics as recorded; with `same_modules`
    False (units removed) only the modules still there, and only statistics whose shape is unchanged."""
    now = {name: module.training for name, module in model.named_modules()}
    if same_modules:
        assert set(modes) <= set(now)
    assert {name: now[name] for name in modes if name in now} == {name: modes[name] for name in modes if name in now}
    assert torch.equal(torch.get_rng_state(), rng)
    for name, after in norm_statistics(model).items():
        if same_modules or after[0].shape == statistics[name][0].shape:
            assert all(torch.equal(a, b) for a, b in zip(after, statistics[name])), name


def set_drawn_modes(model: nn.Module, data) -> nn.Module:
    """The model in train mode with a drawn set of its modules (any, the root too) in eval mode."""
    modules = list(model.train().modules())
    evaluate = data.draw(st.lists(st.booleans(), min_size=len(modules), max_size=len(modules)), label="eval flags")
    for module, in_eval in zip(modules, evaluate):
        module.training = not in_eval
    return model


def prune_and_check_state(model: nn.Module, spec: Spec, same_modules: bool, **kwargs) -> None:
    """prune(data=a shuffling loader, **kwargs) leaves modes, global RNG and BN statistics as they were."""
    loader = shuffling_loader(spec, kwargs["seed"])
    modes = {name: module.training for name, module in model.named_modules()}
    statistics, rng = norm_statistics(model), torch.get_rng_state()
    prune(model, data=loader, example_inputs=spec.inputs(rows=2), **kwargs)
    assert_state_preserved(model, modes, statistics, rng, same_modules)
    if kwargs.get("granularity", "unstructured") != "unstructured" and not kwargs["remove"]:
        remove_masked_units(model, kwargs["granularity"], spec.inputs(rows=2))
        assert_state_preserved(model, modes, statistics, rng, same_modules=False)


@PROPERTY
@given(spec=any_model, data=st.data(), method=st.sampled_from(["taylor", "gradient"]), sparsity=sparsities,
       scope=scopes, seed=seeds)
def test_unstructured_data_driven_pruning_leaves_modes_rng_and_norm_statistics(spec, data, method, sparsity, scope,
                                                                              seed):
    model = set_drawn_modes(spec.build(), data)
    prune_and_check_state(model, spec, same_modules=True, method=method, sparsity=sparsity, scope=scope, seed=seed)


@PROPERTY
@given(spec=structured_model, data=st.data(), method=st.sampled_from(["activation-mean", "taylor"]),
       sparsity=unit_sparsities, remove=st.booleans(), seed=seeds)
def test_structured_data_driven_pruning_leaves_modes_rng_and_norm_statistics(spec, data, method, sparsity, remove,
                                                                            seed):
    model = set_drawn_modes(spec.build(), data)
    prune_and_check_state(model, spec, same_modules=not remove, method=method, sparsity=sparsity,
                          granularity=UNIT_GRANULARITY[spec.kind], remove=remove, seed=seed)


def test_a_shuffling_loader_draws_from_the_global_rng():
    """What makes the properties above bite: iterating the loader moves the global RNG."""
    rng = torch.get_rng_state()
    next(iter(shuffling_loader(Spec("mlp", (4, 3)), 0)))
    assert not torch.equal(torch.get_rng_state(), rng)


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
