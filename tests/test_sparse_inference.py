"""SparseLinear and sparse_inference: every kernel computes what the dense (baked) layer computes,
conversion decisions are recorded, the caller's model is never changed, bad input is refused.

Speed is not tested here (benchmarks/sparse_inference_mnist.py measures it); the tests that run
kernel="auto" use the shortest timing settings and check only outputs and records.
"""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)
from prunekit import PrunekitError, get_masks, prune
from prunekit.deploy.native_kernel import native_kernel_status
from prunekit.deploy.sparse_inference import TimingConfig, sparse_inference
from prunekit.deploy.sparse_linear import SparseLinear

QUICK = TimingConfig(rounds=1, round_seconds=1e-4, model_rounds=1, model_repeats=1)


def sparse_linear_layer(in_features=12, out_features=7, bias=True, keep=0.3, seed=0) -> nn.Linear:
    """A Linear whose weight keeps about `keep` of its entries, with one all-zero row."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, in_features, generator=generator))
        layer.weight.mul_(torch.rand(out_features, in_features, generator=generator) < keep)
        layer.weight[2] = 0
    return layer


def sparse_mlp(seed=0) -> nn.Sequential:
    """24 -> 32 -> 16 -> 4 with the first two layers 80% zeros and the last one dense."""
    model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand(layer.weight.shape, generator=generator) < 0.2)
    return model.eval()


@pytest.mark.parametrize("kernels", ["csr", "bag", "native", "dense", {1: "csr", 4: "native", 9: "dense"}])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(12,), (1, 12), (5, 12), (2, 3, 12), (4, 1, 2, 12)])
def test_sparse_linear_equals_the_dense_layer(kernels, bias, shape):
    dense = sparse_linear_layer(bias=bias)
    sparse = SparseLinear.from_linear(dense, kernels)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = sparse(x)
    assert out.shape == dense(x).shape
    torch.testing.assert_close(out, F.linear(x, dense.weight, dense.bias))
    torch.testing.assert_close(sparse.dense_weight(), dense.weight.detach())


def test_kernel_table_picks_the_nearest_row_count_by_ratio():
    sparse = SparseLinear.from_linear(sparse_linear_layer(), {4: "bag", 1: "csr", 64: "dense"})
    # 2 is as near to 1 as to 4 and 16 as near to 4 as to 64: ties go to the larger
    assert [sparse.kernel_for(rows) for rows in (0, 1, 2, 4, 15, 16, 64, 1000)] == [
        "csr", "csr", "bag", "bag", "bag", "dense", "dense", "dense"]
    assert sparse.dense is not None  # kept only because a row count runs dense
    assert SparseLinear.from_linear(sparse_linear_layer(), "bag").dense is None


def test_chained_layers_hand_on_transposed_views_with_the_same_values():
    first, second = sparse_linear_layer(12, 9), sparse_linear_layer(9, 5, seed=3)
    x = torch.randn(6, 12)
    expected = second(torch.relu(first(x)))
    for views in (True, False):
        layers = [SparseLinear.from_linear(layer, "bag", transposed_output=views) for layer in (first, second)]
        hidden = torch.relu(layers[0](x))
        assert hidden.is_contiguous() is not views
        torch.testing.assert_close(layers[1](hidden), expected)


def test_copies_dtype_changes_and_state_dicts_keep_the_values():
    dense = sparse_linear_layer()
    x = torch.randn(3, 12)
    sparse = SparseLinear.from_linear(dense, "csr")
    sparse(x)  # builds the cached CSR tensor, which copies and pickles must leave out
    torch.testing.assert_close(copy.deepcopy(sparse)(x), dense(x))
    buffer = io.BytesIO()
    torch.save(sparse, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), dense(x))
    torch.testing.assert_close(copy.deepcopy(sparse).double()(x.double()), dense.double()(x.double()))
    fresh = SparseLinear.from_linear(sparse_linear_layer(), "csr")
    fresh.load_state_dict(sparse.state_dict())
    assert sorted(sparse.state_dict()) == ["bias", "col_indices", "row_offsets", "values"]
    assert list(sparse.parameters()) == []


def test_sparse_linear_refuses_bad_input():
    with pytest.raises(PrunekitError, match="features in the last dimension"):
        SparseLinear.from_linear(sparse_linear_layer(), "bag")(torch.randn(2, 5))
    with pytest.raises(PrunekitError, match="unknown kernel"):
        SparseLinear.from_linear(sparse_linear_layer(), "coo")
    with pytest.raises(PrunekitError, match="row counts"):
        SparseLinear.from_linear(sparse_linear_layer(), {0: "bag"})
    with pytest.raises(PrunekitError, match="float32 or float64"):
        SparseLinear.from_linear(sparse_linear_layer().half(), "bag")
    with pytest.raises(PrunekitError, match="nn.Linear"):
        SparseLinear.from_linear(nn.Conv1d(2, 2, 1), "bag")


def test_forced_kernel_converts_sparse_enough_layers_and_keeps_the_rest_dense():
    model = sparse_mlp()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(8, 24)
    result = sparse_inference(model, x, min_sparsity=0.5, kernel="bag")
    assert [(d.name, d.kernel) for d in result.layers] == [("0", "bag"), ("2", "bag"), ("4", "dense")]
    assert "below min_sparsity" in result.layers[2].reason
    assert [type(result.model[i]).__name__ for i in (0, 2, 4)] == ["SparseLinear", "SparseLinear", "Linear"]
    torch.testing.assert_close(result.model(x), model(x))
    assert result.max_abs_difference < 1e-5 and result.timings == [] and not result.kept_dense
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    assert all(type(model[i]) is nn.Linear for i in (0, 2, 4))  # the caller's model unchanged


def test_a_masked_model_is_converted_from_a_copy_and_keeps_its_masks():
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    prune(model, "magnitude", 0.8)
    masks = get_masks(model)
    x = torch.randn(5, 20)
    result = sparse_inference(model, x, kernel="csr")
    assert result.layers[0].kernel == "csr" and result.layers[0].sparsity == pytest.approx(0.8)
    assert get_masks(model).keys() == masks.keys()
    torch.testing.assert_close(result.model(x), model(x))


def test_measured_conversion_records_every_decision_and_keeps_the_outputs():
    model = sparse_mlp()
    x64, x1 = torch.randn(64, 24), torch.randn(1, 24)
    result = sparse_inference(model, x64, also_on=[x1], timing=QUICK)
    first, _, last = result.layers
    assert sorted(first.timings_us) == [1, 64]
    timed = ["bag", "csr", "dense", "native"] if native_kernel_status() is None else ["bag", "csr", "dense"]
    assert all(sorted(times) == timed for times in first.timings_us.values())
    assert last.kernel == "dense" and last.timings_us == {}  # not sparse enough: never timed
    if result.timings:  # some layer was faster sparse, so the whole model was timed
        assert [t.batch_size for t in result.timings] == [64, 1]
        assert result.kept_dense == any(t.converted_ms >= t.dense_ms for t in result.timings)
    converted = [name for name, m in result.model.named_modules() if isinstance(m, SparseLinear)]
    assert converted == [d.name for d in result.layers if d.kernel != "dense"]
    for x in (x64, x1):
        torch.testing.assert_close(result.model(x), model(x))
    assert result.to_dict()["layers"][0]["kernel"] == first.kernel
    assert "reason" in str(result)


def fixed_layer_times(layers, layer_input, timing):
    """Stand-in timings: sparse kernels win at 64 rows, dense wins at 1 row."""
    rows = layer_input.shape[0]
    times = ({"dense": 10.0, "csr": 6.0, "bag": 3.0, "native": 4.0} if rows == 64
             else {"dense": 1.0, "csr": 2.0, "bag": 5.0, "native": 3.0})
    return {name: times[name] for name in layers}


@pytest.mark.parametrize(("model_times", "kept_dense"), [((2.0, 1.0), False), ((1.0, 2.0), True)])
def test_kernels_follow_the_timings_and_a_slower_model_is_returned_dense(
        monkeypatch, model_times, kept_dense):
    import prunekit.deploy.sparse_inference as module

    monkeypatch.setattr(module, "time_layers", fixed_layer_times)
    monkeypatch.setattr(module, "paired_latency", lambda *args: model_times)
    model = sparse_mlp()
    x64, x1 = torch.randn(64, 24), torch.randn(1, 24)
    result = sparse_inference(model, x64, also_on=[x1])
    assert result.kept_dense is kept_dense
    assert [(t.batch_size, t.dense_ms, t.converted_ms) for t in result.timings] == [
        (64, *model_times), (1, *model_times)]
    first = result.layers[0]
    if kept_dense:
        assert first.kernel == "dense" and "not faster on every example input" in first.reason
        assert all(type(result.model[i]) is nn.Linear for i in (0, 2, 4))
    else:
        assert first.kernels == {1: "dense", 64: "bag"} and first.kernel == "1:dense 64:bag"
        assert result.model[0].kernels == {1: "dense", 64: "bag"}
    for x in (x64, x1):
        torch.testing.assert_close(result.model(x), model(x))


class FlattensItsOutput(nn.Module):
    """Merges the Linear's output dimensions with .view, which a transposed view cannot do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = sparse_linear_layer(12, 8)

    def forward(self, x):
        return self.fc(x).view(-1)


class ReadsItsWeight(nn.Module):
    """Reads the Linear's .weight in forward, which a SparseLinear does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = sparse_linear_layer(12, 8)

    def forward(self, x):
        return self.fc(x) + self.fc.weight.sum()


def test_a_model_that_cannot_take_views_gets_contiguous_outputs():
    model = FlattensItsOutput().eval()
    x = torch.randn(4, 12)
    result = sparse_inference(model, x, kernel="bag")
    assert isinstance(result.model.fc, SparseLinear) and not result.model.fc.transposed_output
    torch.testing.assert_close(result.model(x), model(x))


def test_a_model_that_fails_converted_is_returned_dense_with_the_reason():
    model = ReadsItsWeight().eval()
    result = sparse_inference(model, torch.randn(4, 12), kernel="bag")
    assert result.kept_dense and type(result.model.fc) is nn.Linear
    assert result.layers[0].kernel == "dense" and "failed" in result.layers[0].reason


def test_layers_that_do_not_run_or_belong_to_attention_are_left_alone():
    class WithAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = sparse_linear_layer(8, 3)
            self.unused = sparse_linear_layer(8, 3)

        def forward(self, x):
            return self.head(self.attention(x, x, x, need_weights=False)[0])

    model = WithAttention().eval()
    with torch.no_grad():
        model.attention.out_proj.weight.zero_()
    x = torch.randn(2, 5, 8)
    result = sparse_inference(model, x, kernel="bag")
    decisions = {d.name: d for d in result.layers}
    assert "attention.out_proj" not in decisions  # a Linear subclass the attention reads directly
    assert decisions["head"].kernel == "bag"
    assert decisions["unused"].kernel == "dense" and "did not run" in decisions["unused"].reason
    torch.testing.assert_close(result.model(x), model(x))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sparse_inference(nn.Sequential(nn.Conv2d(1, 2, 3)), torch.randn(1, 1, 5, 5)), "no nn.Linear"),
        (lambda: sparse_inference(sparse_mlp(), torch.randn(2, 7)), "failed on example_inputs"),
        (lambda: sparse_inference(sparse_mlp(), torch.randn(2, 24), also_on=[torch.randn(2, 3)]),
         r"failed on also_on\[0\]"),
        (lambda: sparse_inference(sparse_mlp(), torch.randn(2, 24), min_sparsity=1.5), "min_sparsity"),
        (lambda: sparse_inference(sparse_mlp(), torch.randn(2, 24), kernel="fast"), "unknown kernel"),
        (lambda: sparse_inference(sparse_mlp(), torch.randn(2, 24), timing=TimingConfig(margin=1)),
         "TimingConfig"),
        (lambda: sparse_inference("model", torch.randn(2, 24)), "nn.Module"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, message):
    with pytest.raises(PrunekitError, match=message):
        call()


def test_bad_example_inputs_leave_the_model_unchanged():
    model = sparse_mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError):
        sparse_inference(model, torch.randn(2, 7))
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    assert not model.training
