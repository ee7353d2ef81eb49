"""ONNX export (prunekit.deploy.onnx_export): onnxruntime's outputs against torch's for every zoo
model (masked, head-pruned, layer-removed) and the MiniLM, at the traced batch and a larger one;
the caller's model untouched; the CLI on checkpoints; bad input refused with nothing written."""

import copy

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from prunekit.checkpoint import ArchSpec, save_checkpoint  # noqa: E402
from prunekit.cli import main  # noqa: E402
from prunekit.deploy.onnx_export import export_onnx  # noqa: E402
from prunekit.deploy.onnx_runtime import OnnxRuntimeModel  # noqa: E402
from prunekit.errors import PrunekitError  # noqa: E402
from prunekit.graph.layers import SkippedBlock  # noqa: E402
from prunekit.layers.pruned_attention import PrunedMultiheadAttention  # noqa: E402
from prunekit.masking import get_masks  # noqa: E402
from prunekit.pruner import prune  # noqa: E402
from prunekit.zoo import build_model, list_models  # noqa: E402

from invariants import minilm_with_texts, one_thread, same_state  # noqa: E402, F401 (one_thread: autouse)

SHAPE = (1, 8, 8)


def inputs(rows=3, seed=0, shape=SHAPE):
    return torch.randn(rows, *shape, generator=torch.Generator().manual_seed(seed))


def check_against_torch(model, example, path, other_batch):
    """Export, then run the file in onnxruntime on a batch of another size: it must match the
    caller's (masked) model, which must be exactly as it was."""
    before, masks = copy.deepcopy(model), get_masks(model)
    done = export_onnx(model, example, path)
    assert same_state(model, before) and get_masks(model).keys() == masks.keys()
    runtime = OnnxRuntimeModel(path, threads=1)
    with torch.no_grad():
        expected = model(other_batch)
    (got,) = runtime(other_batch)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    return done


@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_masked_zoo_model_runs_in_onnxruntime_like_in_torch(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, SHAPE, 10).eval()
    prune(model, "magnitude", 0.8, scope="global")
    done = check_against_torch(model, inputs(), tmp_path / f"{name}.onnx", inputs(rows=5, seed=1))
    assert done.checked_shapes == ((3, *SHAPE), (6, *SHAPE))
    assert done.max_abs_diff <= 1e-4 * max(1.0, done.output_scale)
    assert done.file_bytes == (tmp_path / f"{name}.onnx").stat().st_size
    assert 0.7 < done.zero_fraction < 0.9  # the 80% zeros are stored in the graph as zeros


def test_a_head_pruned_transformer_exports_its_narrowed_attention(tmp_path):
    torch.manual_seed(0)
    model = build_model("transformer-tiny", SHAPE, 10).eval()
    prune(model, "l1", 0.5, granularity="head")
    assert all(isinstance(layer.self_attn, PrunedMultiheadAttention) for layer in model.layers)
    check_against_torch(model, inputs(), tmp_path / "heads.onnx", inputs(rows=4, seed=2))


def test_a_resnet_with_removed_blocks_exports_without_them(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20", SHAPE, 10).eval()
    for module in model.modules():  # non-trivial BatchNorm so every block changes the output
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    prune(model, "random", 0.5, granularity="layer", seed=2)
    assert sum(isinstance(module, SkippedBlock) for module in model.modules()) == 4
    full = export_onnx(build_model("resnet20", SHAPE, 10).eval(), inputs(), tmp_path / "full.onnx")
    done = check_against_torch(model, inputs(), tmp_path / "layers.onnx", inputs(rows=4, seed=2))
    assert done.file_bytes < full.file_bytes  # the removed blocks' weights are not in the file


def test_a_pruned_minilm_exports_with_keyword_inputs_of_any_batch_and_length(tmp_path):
    model, tokenizer, texts = minilm_with_texts(5, seed=0)
    prune(model, "l1", 0.5, granularity="head")  # 6 of 12 heads left in every layer
    prune(model, "random", 1 / 6, granularity="layer", seed=0)  # one block skipped
    prune(model, "magnitude", 0.5)  # and half the weights of the rest masked
    assert [layer.attention.self.num_attention_heads for layer in model.encoder.layer if
            not isinstance(layer, SkippedBlock)] == [6] * 5
    batch = dict(tokenizer(texts[:2], padding=True, truncation=True, max_length=16, return_tensors="pt"))
    done = export_onnx(model, batch, tmp_path / "minilm.onnx", dynamic_axes=(0, 1))
    assert done.checked_shapes == ((2, 16), (4, 16), (2, 15))
    assert done.max_abs_diff <= 1e-4 * max(1.0, done.output_scale)
    other = dict(tokenizer(texts[2:], padding=True, truncation=True, max_length=40, return_tensors="pt"))
    with torch.no_grad():
        expected = model(**other)
    got = OnnxRuntimeModel(tmp_path / "minilm.onnx", threads=1)(**other)
    assert other["input_ids"].shape[0] == 3 and other["input_ids"].shape[1] > 16  # neither size was traced
    torch.testing.assert_close(got[0], expected.last_hidden_state, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1], expected.pooler_output, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- command line and bad input


def test_cli_export_of_a_shrunk_checkpoint_matches_the_loaded_model(tmp_path, capsys):
    torch.manual_seed(0)
    arch = ArchSpec("lenet300", SHAPE, 10)
    model = arch.build().eval()
    result = prune(model, "l1", 0.5, granularity="neuron", example_inputs=inputs())
    prune(model, "magnitude", 0.9, scope="global")
    checkpoint = save_checkpoint(tmp_path / "m.pt", model, arch, record=result.shrink_record)
    assert main(["export", str(checkpoint), "--onnx", str(tmp_path / "m.onnx"), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime agrees with torch" in out and "at batch 4 and 8" in out and "are zeros" in out
    with torch.no_grad():
        expected = model(inputs(rows=7))
    torch.testing.assert_close(OnnxRuntimeModel(tmp_path / "m.onnx")(inputs(rows=7))[0], expected,
                               atol=1e-5, rtol=1e-5)


def test_cli_export_never_writes_over_its_checkpoint_or_an_existing_file(tmp_path, capsys):
    arch = ArchSpec("lenet300", SHAPE, 10)
    checkpoint = save_checkpoint(tmp_path / "m.pt", arch.build().eval(), arch)
    before = checkpoint.read_bytes()
    assert main(["export", str(checkpoint), "--onnx", str(checkpoint), "--overwrite"]) == 2
    assert "is the checkpoint being read" in capsys.readouterr().err and checkpoint.read_bytes() == before
    existing = tmp_path / "old.onnx"
    existing.write_bytes(b"keep me")
    assert main(["export", str(checkpoint), "--onnx", str(existing)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and existing.read_bytes() == b"keep me"


def test_cli_export_of_a_missing_or_truncated_checkpoint_fails_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"an older export")
    assert main(["export", str(tmp_path / "none.pt"), "--onnx", str(out), "--overwrite"]) == 2
    assert "none.pt' does not exist" in capsys.readouterr().err
    arch = ArchSpec("lenet300", SHAPE, 10)
    data = save_checkpoint(tmp_path / "m.pt", arch.build(), arch).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    assert main(["export", str(tmp_path / "cut.pt"), "--onnx", str(out), "--overwrite"]) == 2
    assert "cut.pt' is not a readable prunekit checkpoint: it is truncated" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "m.pt"), "--onnx", str(out), "--batch-size", "1", "--overwrite"]) == 2
    assert "--batch-size must be at least 2" in capsys.readouterr().err
    assert out.read_bytes() == b"an older export"


def test_a_batch_of_one_and_inputs_that_are_not_tensors_are_refused(tmp_path):
    model = build_model("lenet300", SHAPE, 10).eval()
    with pytest.raises(PrunekitError, match=r"shape \(1, 1, 8, 8\) has size 1 on dynamic axis 0; give at least 2"):
        export_onnx(model, inputs(rows=1), tmp_path / "m.onnx")
    with pytest.raises(PrunekitError, match="example_inputs must be a tensor"):
        export_onnx(model, "pixels", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_graph_that_disagrees_with_torch_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    import prunekit.deploy.onnx_export as onnx_export

    class OffByOne(OnnxRuntimeModel):  # stands for an exporter or runtime that computes something else
        def forward(self, *args, **kwargs):
            return [output + 1e-2 for output in super().forward(*args, **kwargs)]

    monkeypatch.setattr(onnx_export, "OnnxRuntimeModel", OffByOne)
    (tmp_path / "m.onnx").write_bytes(b"an older export")
    with pytest.raises(PrunekitError, match="differ from torch's by up to 0.01 .* Nothing was written"):
        export_onnx(build_model("lenet300", SHAPE, 10).eval(), inputs(), tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"an older export"
