"""Property-based tests (hypothesis) of unstructured pruning and of the state prunekit leaves,
on drawn tiny models (tests/drawn_models.py), each against a reference:

1. unstructured pruning removes exactly ``round(s * n)`` weights per tensor (layer scope) or over
   all targeted weights (global scope), and the result reports that count;
2. re-pruning never revives a weight and lands on the second target's count;
4. module train/eval flags, torch's global RNG state and BatchNorm running statistics are as
   they were after every call, also with a shuffling DataLoader as data.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit import get_masks, prune, remove_masked_units

from drawn_models import (  # the strategies, Spec and references shared by the property tests
    PROPERTY, Spec, UNIT_GRANULARITY, all_weights_nonzero, any_model, norm_statistics,
    pruned_counts, scopes, seeds, sparsities, structured_model, unit_sparsities, weight_methods,
    weight_sizes,
)
from invariants import one_thread  # noqa: F401 - autouse fixture


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


