"""Compressed storage (prunekit.deploy.codec / storage, save_checkpoint(storage=...)): encodings
against hand-computed costs, round trips against the saved model's outputs, the size of a
95%-sparse LeNet-300-100 against its dense file, fp16 against its documented bound, and damaged
or missing files refused without touching anything."""

import math

import pytest
import torch

from prunekit.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from prunekit.cli import main
from prunekit.deploy.codec import decode_tensor, encode_tensor
from prunekit.deploy.storage import compress_checkpoint, save_compressed
from prunekit.errors import PrunekitError
from prunekit.masking import bake, get_masks
from prunekit.pruner import prune

from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)

LENET = ArchSpec("lenet300", (1, 28, 28), 10)


def sparse_lenet(sparsity=0.95, seed=0):
    torch.manual_seed(seed)
    model = LENET.build().eval()
    prune(model, "magnitude", sparsity, scope="global")
    return model


def mnist_like(rows=16, seed=1):
    return torch.rand(rows, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the codec


def test_each_tensor_takes_the_encoding_hand_computed_to_be_smallest():
    weight = torch.zeros(30, 784)
    weight[:, :10] = torch.arange(1, 301, dtype=torch.float32).view(30, 10)  # 300 of 23,520 kept (1.3%)
    half = torch.ones(30, 784)
    half[:, ::2] = 0.0  # 50% kept
    # csr: 31 row pointers x 4 + 300 x (2 + 4); bitmask: 23,520 / 8 + 300 x 4; dense: 23,520 x 4
    assert 31 * 4 + 300 * 6 < 23520 / 8 + 300 * 4 < 23520 * 4
    # 50%: bitmask 2,940 + 11,760 x 4 = 49,980 beats dense 94,080 and csr 124 + 11,760 x 6 = 70,684
    for tensor, expected in ((weight, "csr"), (half, "bitmask"), (torch.randn(30, 784), "dense"),
                             (torch.arange(6), "dense"), (torch.tensor(3.0), "dense")):
        entry = encode_tensor(tensor)
        assert entry["encoding"] == expected
        decoded, _ = decode_tensor(entry)
        assert decoded.dtype == tensor.dtype and torch.equal(decoded, tensor)
    csr = encode_tensor(weight)
    assert csr["columns"].dtype == torch.int16 and csr["row_ptr"].tolist() == list(range(0, 301, 10))
    assert csr["values"].tolist() == list(range(1, 301))  # row-major order


def test_bitmask_packs_bits_little_endian_and_negative_zero_comes_back_as_zero():
    tensor = torch.zeros(64, 64)
    tensor[0, :40] = torch.arange(1.0, 41.0)
    tensor[1:, 0] = -1.0
    tensor[5, 5] = -0.0
    # 103 kept of 4,096: bitmask 512 + 103 x 4 (+ 2 records) beats csr 65 x 4 + 103 x 6 (+ 3 records)
    entry = encode_tensor(tensor)
    assert entry["encoding"] == "bitmask"
    assert entry["bits"][:9].tolist() == [255] * 5 + [0, 0, 0, 1]  # entry 64 (row 1) is bit 0 of byte 8
    decoded, kept = decode_tensor(entry)
    assert torch.equal(decoded, tensor) and int(kept.sum()) == 103
    assert not torch.signbit(decoded[5, 5])


def test_a_given_support_keeps_kept_zeros_and_is_never_dense():
    tensor = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    support = torch.tensor([[True, True], [False, True]])  # a kept weight that happens to be zero
    decoded, kept = decode_tensor(encode_tensor(tensor, support=support))
    assert torch.equal(kept, support) and decoded.tolist() == [[0.0, 1.0], [0.0, 3.0]]


# ---------------------------------------------------------------- round trips


def _channel_and_weight_pruned_resnet():
    torch.manual_seed(0)
    arch = ArchSpec("resnet20", (3, 8, 8), 10)
    model = arch.build().eval()
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    first = prune(model, "l1", 0.5, granularity="channel", example_inputs=torch.zeros(2, 3, 8, 8))
    prune(model, "magnitude", 0.8, scope="global")
    return model, arch, first.shrink_record, torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("kind", ["masked", "baked", "shrunk"])
def test_compressed_model_reloads_with_bit_identical_outputs(tmp_path, kind):
    if kind == "shrunk":
        model, arch, record, inputs = _channel_and_weight_pruned_resnet()
    else:
        model, arch, record, inputs = sparse_lenet(0.9), LENET, None, mnist_like()
        model = bake(model) if kind == "baked" else model
    with torch.no_grad():
        expected = model(inputs)
    report = save_compressed(tmp_path / "m.pt", model, arch, record=record, meta={"note": kind})
    loaded, info = load_checkpoint(tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.equal(loaded.eval()(inputs), expected)
    assert info["storage"] == "sparse" and info["meta"] == {"note": kind} and info["masked"] == (kind != "baked")
    assert get_masks(loaded).keys() == get_masks(model).keys()
    assert all(torch.equal(get_masks(loaded)[name], mask) for name, mask in get_masks(model).items())
    assert report.file_bytes == (tmp_path / "m.pt").stat().st_size
    assert {tensor.encoding for tensor in report.tensors} >= {"dense", "bitmask" if kind == "shrunk" else "csr"}


def test_a_95_percent_sparse_lenet300_file_is_at_least_8x_smaller_than_the_dense_one(tmp_path):
    model = sparse_lenet(0.95)
    torch.manual_seed(0)
    dense = save_checkpoint(tmp_path / "dense.pt", LENET.build(), LENET)
    report = save_compressed(tmp_path / "sparse.pt", model, LENET)
    ratio = dense.stat().st_size / report.file_bytes
    assert ratio >= 8.0, f"{ratio:.2f}x"
    assert math.isclose(report.ratio, report.dense_bytes / report.file_bytes)
    assert abs(report.dense_bytes - dense.stat().st_size) < 0.01 * dense.stat().st_size
    fc1 = next(tensor for tensor in report.tensors if tensor.name == "fc1.weight")
    assert fc1.kept == int(get_masks(model)["fc1.weight"].sum())


def test_fp16_values_stay_within_the_documented_bound(tmp_path):
    model = sparse_lenet(0.9)
    inputs = mnist_like()
    fp32 = save_compressed(tmp_path / "fp32.pt", model, LENET)
    fp16 = save_compressed(tmp_path / "fp16.pt", model, LENET, fp16=True)
    assert fp16.file_bytes < 0.75 * fp32.file_bytes and fp16.storage == "sparse-fp16"
    loaded, _ = load_checkpoint(tmp_path / "fp16.pt")
    stored, reloaded = bake(model).state_dict(), bake(loaded).state_dict()
    for name, tensor in stored.items():
        assert reloaded[name].dtype == tensor.dtype
        assert ((reloaded[name] - tensor).abs() <= tensor.abs() * 2**-11 + 2**-25).all(), name
    with torch.no_grad():
        expected, got = model(inputs), loaded.eval()(inputs)
    assert not torch.equal(got, expected)
    assert (got - expected).abs().max() <= 2e-3 * expected.abs().max()


# ---------------------------------------------------------------- bad input


def test_fp16_overflow_is_refused_before_anything_is_written(tmp_path):
    model = sparse_lenet(0.9)
    with torch.no_grad():
        model.classifier.bias[0] = 1e6
    (tmp_path / "out.pt").write_bytes(b"keep me")
    with pytest.raises(PrunekitError, match="'classifier.bias' holds 1e\\+06, beyond float16's largest value"):
        save_compressed(tmp_path / "out.pt", model, LENET, fp16=True)
    assert (tmp_path / "out.pt").read_bytes() == b"keep me"


def test_missing_truncated_random_and_damaged_files_are_refused_clearly(tmp_path):
    path = save_compressed(tmp_path / "m.pt", sparse_lenet(0.9), LENET).path
    with pytest.raises(PrunekitError, match="checkpoint '.*nothere.pt' does not exist"):
        load_checkpoint(tmp_path / "nothere.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(PrunekitError, match=r"cut.pt' is not a readable prunekit checkpoint: it is truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "noise.pt").write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(PrunekitError, match="noise.pt' is not a readable prunekit checkpoint: it was not written"):
        load_checkpoint(tmp_path / "noise.pt")
    payload = torch.load(path, weights_only=True)
    entry = payload["state_dict"]["fc1.weight"]
    entry["values"] = entry["values"][:-1]
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(PrunekitError, match="damaged.pt': stored tensor 'fc1.weight' is corrupt: its 'values' "
                                            "entry has \\d+ entries, expected \\d+"):
        load_checkpoint(tmp_path / "damaged.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["state_dict"]["fc1.weight"]["encoding"] == "csr"
    payload["state_dict"]["fc1.weight"]["columns"][0] = 5000
    torch.save(payload, tmp_path / "index.pt")
    with pytest.raises(PrunekitError, match="'fc1.weight' is corrupt: a column index lies outside"):
        load_checkpoint(tmp_path / "index.pt")


def test_compress_refuses_to_overwrite_its_source_and_a_bad_source_writes_nothing(tmp_path):
    source = save_checkpoint(tmp_path / "m.pt", sparse_lenet(0.9), LENET)
    before = source.read_bytes()
    with pytest.raises(PrunekitError, match="is the checkpoint itself"):
        compress_checkpoint(source, tmp_path / "." / "m.pt")
    assert source.read_bytes() == before
    (tmp_path / "cut.pt").write_bytes(before[:1000])
    (tmp_path / "out.pt").write_bytes(b"keep me")
    with pytest.raises(PrunekitError, match="cut.pt' is not a readable prunekit checkpoint: it is truncated"):
        compress_checkpoint(tmp_path / "cut.pt", tmp_path / "out.pt")
    assert (tmp_path / "out.pt").read_bytes() == b"keep me"


# ---------------------------------------------------------------- command line


def test_cli_compress_prints_the_sizes_and_writes_a_loadable_file(tmp_path, capsys):
    model = sparse_lenet(0.95)
    source = save_checkpoint(tmp_path / "m.pt", model, LENET, meta={"accuracy": 0.97})
    assert main(["compress", str(source), str(tmp_path / "small.pt"), "--fp16"]) == 0
    out = capsys.readouterr().out
    small = (tmp_path / "small.pt").stat().st_size
    assert f"{source.stat().st_size:,} bytes" in out and f"(sparse-fp16): {small:,} bytes" in out
    assert "fc1.weight" in out and "csr" in out and "float16" in out
    loaded, info = load_checkpoint(tmp_path / "small.pt")
    assert info["meta"] == {"accuracy": 0.97}
    inputs = mnist_like()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(inputs), model(inputs), atol=2e-3, rtol=2e-3)
    assert main(["compress", str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")]) == 2
    assert "missing.pt' does not exist" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_cli_compress_never_writes_over_an_existing_file_without_overwrite(tmp_path, capsys):
    source = save_checkpoint(tmp_path / "m.pt", sparse_lenet(0.95), LENET)
    precious = tmp_path / "precious.pt"
    precious.write_bytes(b"precious")
    assert main(["compress", str(source), str(precious)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and precious.read_bytes() == b"precious"
    before = source.read_bytes()
    assert main(["compress", str(source), str(source), "--overwrite"]) == 2  # never over its own input
    assert "is the checkpoint being read" in capsys.readouterr().err and source.read_bytes() == before
    assert main(["compress", str(source), str(precious), "--overwrite"]) == 0
    assert load_checkpoint(precious)[1]["storage"] == "sparse"
