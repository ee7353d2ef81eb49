"""The SparseGPT layer solver and the input-Hessian collector, against references: a naive
sequential optimal-brain-surgeon update with explicit inverses, per-row magnitude pruning when
H = I, the least-squares optimum for the solver's own mask, and XᵀX computed by hand."""

import pytest
import torch
from torch import nn

from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)
from prunekit.errors import PrunekitError
from prunekit.sparsegpt import check_calibration_tokens, inverse_hessian_factor, sparsegpt_layer
from prunekit.stats.hessians import HessianCollector, InputHessian


def problem(out=8, inp=16, tokens=200, correlation=0.3, seed=0):
    """Weights and correlated inputs of very different sizes (as activations are)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.eye(inp) + correlation * torch.randn(inp, inp, generator=generator)
    inputs = torch.randn(tokens, inp, generator=generator) @ mixing * torch.logspace(-1, 1, inp)
    weight = torch.randn(out, inp, generator=generator)
    return weight, inputs, 2 * inputs.T @ inputs / tokens


def output_error(weight, new_weight, inputs):
    return float(((inputs @ (weight - new_weight).T) ** 2).sum())


def naive_obs(weight, hessian, keep):
    """Columns left to right: a pruned entry is zeroed and its error spread over the row's later
    columns with the inverse of the Hessian restricted to them (explicit inverses, float64)."""
    weight, hessian = weight.double().clone(), hessian.double()
    for column in range(weight.shape[1]):
        inverse = torch.linalg.inv(hessian[column:, column:])
        for row in torch.nonzero(~keep[:, column]).flatten().tolist():
            weight[row, column:] -= weight[row, column] / inverse[0, 0] * inverse[:, 0]
    return weight


def test_sparsity_zero_leaves_weight_unchanged():
    weight, _, hessian = problem()
    new_weight, keep = sparsegpt_layer(weight, hessian, 0.0)
    assert torch.equal(new_weight, weight) and bool(keep.all())


def test_identity_hessian_is_per_row_magnitude_pruning():
    weight, _, _ = problem(inp=20)
    new_weight, keep = sparsegpt_layer(weight, torch.eye(20), 0.4, block_size=128)
    reference = torch.ones_like(keep)
    reference.scatter_(1, weight.abs().topk(8, dim=1, largest=False).indices, False)
    assert torch.equal(keep, reference)
    assert torch.equal(new_weight, weight * reference)  # no kept weight moved


@pytest.mark.parametrize("pattern,block_size", [(None, 4), (None, 128), ((2, 4), 128), ((1, 4), 8)])
def test_matches_naive_optimal_brain_surgeon(pattern, block_size):
    weight, _, hessian = problem(out=6, inp=16, seed=1)
    new_weight, keep = sparsegpt_layer(weight.double(), hessian.double(), 0.5, pattern=pattern,
                                       block_size=block_size, percdamp=0.0)
    assert torch.allclose(new_weight, naive_obs(weight, hessian, keep), atol=1e-9)


def test_reconstruction_beats_magnitude_and_nears_least_squares_optimum():
    weight, inputs, hessian = problem()
    new_weight, keep = sparsegpt_layer(weight, hessian, 0.5)
    magnitude = weight * (weight.abs() > weight.abs().kthvalue(8, dim=1, keepdim=True).values)
    optimum = torch.zeros_like(weight)
    for row in range(weight.shape[0]):  # least squares on the kept columns: the best this mask allows
        kept = keep[row]
        solution = torch.linalg.lstsq(inputs[:, kept].double(), (inputs @ weight[row]).double()).solution
        optimum[row, kept] = solution.float()
    error, best = output_error(weight, new_weight, inputs), output_error(weight, optimum, inputs)
    assert error < 0.1 * output_error(weight, magnitude, inputs)
    assert best * (1 - 1e-4) <= error < 1.3 * best


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
def test_row_scope_sparsity_is_exact_in_every_row(sparsity):
    weight, _, hessian = problem(inp=20)
    new_weight, keep = sparsegpt_layer(weight, hessian, sparsity, block_size=8)  # blocks of 8, 8, 4 columns
    assert (keep.sum(dim=1) == 20 - round(sparsity * 20)).all()
    assert torch.equal(new_weight == 0, ~keep)


def test_layer_scope_sparsity_is_exact_over_the_layer():
    weight, _, hessian = problem(inp=20)
    _, keep = sparsegpt_layer(weight, hessian, 0.3, block_size=8, scope="layer")
    assert int((~keep).sum()) == round(0.3 * keep.numel())


@pytest.mark.parametrize("pattern", [(2, 4), (4, 8), (1, 2)])
def test_n_m_pattern_is_exact(pattern):
    keep_count, group = pattern
    weight, _, hessian = problem(inp=16)
    new_weight, keep = sparsegpt_layer(weight, hessian, pattern=pattern)
    assert (keep.reshape(8, -1, group).sum(dim=-1) == keep_count).all()
    assert torch.equal(new_weight == 0, ~keep)


def test_n_m_pattern_must_divide_the_input_width():
    weight, _, hessian = problem(inp=18)
    with pytest.raises(PrunekitError, match="multiple of 4; this one has 18 inputs"):
        sparsegpt_layer(weight, hessian, pattern=(2, 4))


def test_rank_deficient_hessian_without_dampening_is_refused():
    weight, inputs, _ = problem(tokens=10)  # 10 tokens, 16 inputs: XᵀX has rank 10
    hessian = 2 * inputs.T @ inputs / 10
    with pytest.raises(PrunekitError, match=r"rank-deficient.*use percdamp > 0"):
        sparsegpt_layer(weight, hessian, 0.5, percdamp=0.0)
    new_weight, keep = sparsegpt_layer(weight, hessian, 0.5)  # dampened: it inverts
    assert torch.isfinite(new_weight).all() and int((~keep).sum()) == 64


def test_too_few_tokens_says_how_many_are_needed():
    with pytest.raises(PrunekitError, match=r"\(1536 for 'ffn'\).*saw 900 tokens.*at least 1536 tokens"):
        check_calibration_tokens(900, 1536, "ffn")


def test_dead_inputs_are_pruned_first_and_move_nothing():
    weight, inputs, _ = problem(inp=8)
    inputs[:, 3] = 0.0  # an input that never fires
    hessian = 2 * inputs.T @ inputs / inputs.shape[0]
    factor = inverse_hessian_factor(hessian)
    assert torch.equal(factor[3, 4:], torch.zeros(4))  # its removal sends no update on
    _, keep = sparsegpt_layer(weight, hessian, 1 / 8)  # one weight per row goes: the dead one
    assert torch.equal(keep[:, 3], torch.zeros(8, dtype=torch.bool)) and int(keep.sum()) == 56


def test_entries_already_pruned_stay_pruned_and_count():
    weight, _, hessian = problem()
    pruned = torch.zeros_like(weight, dtype=torch.bool)
    pruned[:, :3] = True
    new_weight, keep = sparsegpt_layer(weight * ~pruned, hessian, 0.5, pruned=pruned)
    assert not keep[:, :3].any() and (keep.sum(dim=1) == 8).all()
    assert torch.equal(new_weight == 0, ~keep)


def test_bad_arguments_are_refused():
    weight, _, hessian = problem()
    with pytest.raises(PrunekitError, match="Hessian must be in x in"):
        sparsegpt_layer(weight, hessian[:4, :4], 0.5)
    with pytest.raises(PrunekitError, match="sparsity must be"):
        sparsegpt_layer(weight, hessian, 1.0)
    with pytest.raises(PrunekitError, match="finite"):
        sparsegpt_layer(weight, hessian * float("nan"), 0.5)


# ---------------------------------------------------------------- the Hessian collector


def test_running_mean_over_batches_equals_two_xtx_over_n():
    hessian = InputHessian(torch.zeros(3, 3, dtype=torch.float64))
    rows = torch.randn(50, 3, dtype=torch.float64)
    for chunk in rows.split([7, 30, 13]):
        hessian.add(chunk)
    assert hessian.tokens == 50 and torch.allclose(hessian.matrix, 2 * rows.T @ rows / 50)


def test_collector_reads_rows_masks_padding_and_removes_hooks():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    inputs = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad(), HessianCollector(model, ["0", "2"], torch.float64) as collector:
        collector.token_mask = mask
        model(inputs)
    first = inputs[mask].double()
    second = torch.relu(model[0](inputs))[mask].double().detach()
    assert collector.hessians["0"].tokens == 8
    assert torch.allclose(collector.hessians["0"].matrix, 2 * first.T @ first / 8)
    assert torch.allclose(collector.hessians["2"].matrix, 2 * second.T @ second / 8)
    assert not model[0]._forward_pre_hooks and not model[2]._forward_pre_hooks


def test_collector_reads_conv1d_inputs_and_refuses_other_layers():
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(5, 3)  # weight (in=3, out=5)
    inputs = torch.randn(4, 6, 3)
    with torch.no_grad(), HessianCollector(layer, [""]) as collector:
        layer(inputs)
    rows = inputs.reshape(-1, 3)
    assert transformers and torch.allclose(collector.hessians[""].matrix, 2 * rows.T @ rows / 24, atol=1e-5)
    with pytest.raises(PrunekitError, match="leave it out with exclude"):
        HessianCollector(nn.Sequential(nn.Conv2d(1, 1, 3)), ["0"])
