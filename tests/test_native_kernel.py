"""prunekit's compiled sparse kernel: it builds on this machine, computes what the dense layer
(and torch.nn.utils.prune's pruned layer) computes for every row count, dtype and thread count,
and where it cannot be built everything falls back to torch's kernels with the reason said.

Speed is measured by benchmarks/sparse_inference_mnist.py, not here.
"""

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from torch import nn

import prunekit.deploy.native_kernel as native
from prunekit import PrunekitError
from prunekit.deploy.native_kernel import native_kernel_status, native_sparse_linear
from prunekit.deploy.sparse_inference import TimingConfig, sparse_inference
from prunekit.deploy.sparse_linear import SparseLinear

QUICK = TimingConfig(rounds=1, round_seconds=1e-4, model_rounds=1, model_repeats=1)
#: the tests that run the kernel skip where it cannot be built; test_the_compiled_kernel_builds_here
#: fails there instead, with the reason (make test installs g++ so that it builds)
needs_kernel = pytest.mark.skipif(native_kernel_status() is not None,
                                  reason=f"the compiled kernel is not available: {native_kernel_status()}")


@pytest.fixture
def threads():
    """Set torch's thread count inside a test; the count before is put back after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def native_off(monkeypatch):
    """The kernel as a machine without it sees it (asked afresh, and asked afresh after)."""
    monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    native._load.cache_clear()
    yield
    monkeypatch.undo()
    native._load.cache_clear()


def pruned_linear(in_features, out_features, amount, bias=True, seed=0, dtype=torch.float32):
    """A Linear pruned by torch.nn.utils.prune.l1_unstructured (the reference), mask baked in,
    with its first output row all zeros (a row with no nonzeros at all)."""
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias).to(dtype)
    torch_prune.l1_unstructured(layer, "weight", amount=amount)
    torch_prune.remove(layer, "weight")
    with torch.no_grad():
        layer.weight[0] = 0
    return layer


def test_the_compiled_kernel_builds_here():
    # the project's own set-up (make test) installs g++ and ninja; without them the kernel is
    # skipped at run time, but here it must build so the tests below exercise it
    assert native_kernel_status() is None, native_kernel_status()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("thread_count", [1, 2])
def test_it_equals_the_pruned_dense_layer_at_every_row_count(dtype, bias, thread_count, threads):
    threads(thread_count)
    layer = pruned_linear(300, 37, 0.95, bias=bias, dtype=dtype)
    sparse = SparseLinear.from_linear(layer, "native")
    for rows in (0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 63, 64, 65, 131):
        x = torch.randn(rows, 300, dtype=dtype)
        expected = F.linear(x, layer.weight, layer.bias)
        out = sparse(x)
        assert out.shape == (rows, 37) and out.dtype == dtype and out.is_contiguous()
        torch.testing.assert_close(out, expected)
        assert torch.equal(out[:, 0], layer.bias[0].expand(rows) if bias else torch.zeros(rows, dtype=dtype))


@needs_kernel
def test_it_equals_a_hand_computed_product():
    values = torch.tensor([2.0, -1.0, 0.5, 3.0])
    cols = torch.tensor([1, 3, 0, 2], dtype=torch.int32)
    offsets = torch.tensor([0, 2, 2, 4], dtype=torch.int32)  # row 1 keeps nothing
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 10.0, 1.0]])
    bias = torch.tensor([0.25, 7.0, -1.0])
    # row 0: 2*x1 - x3; row 1: 0; row 2: 0.5*x0 + 3*x2
    expected = torch.tensor([[2 * 2.0 - 4.0 + 0.25, 7.0, 0.5 + 9.0 - 1.0],
                             [-2.0 - 1.0 + 0.25, 7.0, 30.0 - 1.0]])
    torch.testing.assert_close(native_sparse_linear(values, cols, offsets, x, bias), expected)
    torch.testing.assert_close(native_sparse_linear(values, cols, offsets, x[:1], bias), expected[:1])
    with pytest.raises(RuntimeError, match="one dtype"):
        native_sparse_linear(values, cols, offsets, x.double(), bias)
    with pytest.raises(RuntimeError, match="contiguous CPU tensors"):
        native_sparse_linear(values, cols, offsets, x, torch.stack([bias, bias], 1)[:, 0])  # strided bias
    with pytest.raises(PrunekitError, match="largest column index"):
        native_sparse_linear(values, cols, offsets, x[:, :3], bias)  # column 3 is past x's width
    bad_offsets = [torch.tensor(o, dtype=torch.int32) for o in ([1, 2, 2, 4], [0, 2, 2, 3], [0, 3, 2, 4])]
    for offsets_case, message in zip(bad_offsets, ["run from 0", "run from 0", "must not decrease"]):
        with pytest.raises(RuntimeError, match=message):
            native_sparse_linear(values, cols, offsets_case, x, bias)
    with pytest.raises(RuntimeError, match="one value per output unit"):
        native_sparse_linear(values, cols, offsets, x, bias[:2])


@needs_kernel
def test_views_leading_dimensions_and_chained_layers_match_dense(threads):
    threads(2)
    first, second = pruned_linear(40, 24, 0.9), pruned_linear(24, 6, 0.8, seed=1)
    x = torch.randn(3, 11, 40)
    expected = second(torch.relu(first(x)))
    native_first = SparseLinear.from_linear(first, "native")
    bag_first = SparseLinear.from_linear(first, "bag")  # hands on a transposed view
    native_second = SparseLinear.from_linear(second, "native")
    torch.testing.assert_close(native_second(torch.relu(native_first(x))), expected)
    torch.testing.assert_close(native_second(torch.relu(bag_first(x))), expected)
    torch.testing.assert_close(native_first(x.transpose(0, 1)), first(x.transpose(0, 1)))
    # the compiled kernel has no backward: an input that needs gradients runs "bag", which has one
    assert native_first(x.clone().requires_grad_()).grad_fn is not None


@needs_kernel
def test_sparse_inference_times_it_and_keeps_the_outputs():
    model = nn.Sequential(pruned_linear(64, 32, 0.9), nn.ReLU(), pruned_linear(32, 10, 0.9)).eval()
    x64, x1 = torch.randn(64, 64), torch.randn(1, 64)
    result = sparse_inference(model, x64, also_on=[x1], timing=QUICK)
    assert all("native" in times for layer in result.layers for times in layer.timings_us.values())
    assert result.notes == []
    forced = sparse_inference(model, x64, kernel="native")
    assert [layer.kernel for layer in forced.layers] == ["native", "native"]
    for x in (x64, x1):
        torch.testing.assert_close(result.model(x), model(x))
        torch.testing.assert_close(forced.model(x), model(x))


def test_without_it_layers_run_bag_and_the_choice_says_why(native_off):
    assert "turned off by PRUNEKIT_NATIVE_KERNEL=0" in native_kernel_status()
    layer = pruned_linear(30, 12, 0.8)
    x = torch.randn(9, 30)
    sparse = SparseLinear.from_linear(layer, "native")  # e.g. a model converted elsewhere
    torch.testing.assert_close(sparse(x), layer(x))
    with pytest.raises(PrunekitError, match="not available.*PRUNEKIT_NATIVE_KERNEL=0"):
        native_sparse_linear(sparse.values, sparse.col_indices, sparse.row_offsets, x, sparse.bias)
    model = nn.Sequential(layer, nn.ReLU(), pruned_linear(12, 4, 0.8)).eval()
    with pytest.raises(PrunekitError, match="kernel='native'.*not available.*kernel='auto'"):
        sparse_inference(model, x, kernel="native")
    result = sparse_inference(model, x, timing=QUICK)
    assert all("native" not in times for d in result.layers for times in d.timings_us.values())
    assert result.notes == [f"the compiled kernel was not timed: {native_kernel_status()}"]
    assert result.notes[0] in str(result) and result.to_dict()["notes"] == result.notes
    torch.testing.assert_close(result.model(x), model(x))


def test_a_missing_compiler_or_a_failed_build_is_a_reason_not_a_crash(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    native._load.cache_clear()
    try:
        assert "no C++ compiler ('no-such-compiler-here' not found): install g++" in native_kernel_status()
        monkeypatch.delenv("CXX")
        broken = tmp_path / "broken.cpp"
        broken.write_text("#error this source does not compile\n")
        monkeypatch.setattr(native, "SOURCE", broken)
        # another name too: torch would otherwise record a new version of the real extension's
        # name and rebuild the real kernel in every later process
        monkeypatch.setattr(native, "_cpu_fingerprint", lambda: "broken_source_test")
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))  # not the real cache
        native._load.cache_clear()
        assert native_kernel_status().startswith("building broken.cpp failed (")
        layer = pruned_linear(20, 5, 0.5)
        torch.testing.assert_close(SparseLinear.from_linear(layer, "native")(torch.ones(3, 20)),
                                   layer(torch.ones(3, 20)))
    finally:
        monkeypatch.undo()
        native._load.cache_clear()
    assert native_kernel_status() is None
