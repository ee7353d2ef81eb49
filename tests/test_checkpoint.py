import pytest
import torch

from prunekit.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from prunekit.errors import PrunekitError
from prunekit.masking import bake, get_masks
from prunekit.pruner import prune
from prunekit.zoo import build_model

ARCH = ArchSpec("lenet5", (1, 8, 8), 10)


def _pruned_model():
    torch.manual_seed(0)
    model = ARCH.build()
    prune(model, method="magnitude", sparsity=0.7, scope="global")
    return model


def test_masked_checkpoint_reloads_bit_identical(tmp_path):
    model = _pruned_model()
    inputs = torch.rand(5, 1, 8, 8)
    model.eval()
    expected = model(inputs)
    path = save_checkpoint(tmp_path / "masked.pt", model, ARCH, meta={"accuracy": 0.9})
    loaded, info = load_checkpoint(path)
    loaded.eval()
    assert torch.equal(loaded(inputs), expected)
    assert info["masked"] and info["meta"] == {"accuracy": 0.9}
    saved_masks, loaded_masks = get_masks(model), get_masks(loaded)
    assert saved_masks.keys() == loaded_masks.keys()
    assert all(torch.equal(saved_masks[name], loaded_masks[name]) for name in saved_masks)
    # the payload is plain data: it loads with weights_only=True
    assert torch.load(path, weights_only=True)["arch"]["model"] == "lenet5"


def test_baked_checkpoint_reloads_bit_identical_and_plain(tmp_path):
    model = bake(_pruned_model()).eval()
    inputs = torch.rand(5, 1, 8, 8)
    path = save_checkpoint(tmp_path / "baked.pt", model, ARCH)
    loaded, info = load_checkpoint(path)
    assert not info["masked"] and get_masks(loaded) == {}
    assert torch.equal(loaded.eval()(inputs), model(inputs))
    # the stored weights load straight into the unpruned architecture
    fresh = build_model("lenet5", (1, 8, 8), 10)
    fresh.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)


def test_failed_write_leaves_existing_checkpoint_intact(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "model.pt", _pruned_model(), ARCH, meta={"version": 1})
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, _pruned_model(), ARCH, meta={"version": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_loading_missing_or_foreign_files_gives_clear_errors(tmp_path):
    with pytest.raises(PrunekitError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(PrunekitError, match="not a prunekit checkpoint"):
        load_checkpoint(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(PrunekitError, match="not a readable"):
        load_checkpoint(garbage)


def _structured(model_name, granularity, method="l1", sparsity=0.5, **kwargs):
    """A zoo model pruned structurally (physically), its ArchSpec and the removal record."""
    torch.manual_seed(0)
    arch = ArchSpec(model_name, (1, 8, 8), 10)
    model = arch.build().eval()
    result = prune(model, method=method, sparsity=sparsity, granularity=granularity,
                   example_inputs=torch.zeros(2, 1, 8, 8), **kwargs)
    return model, arch, result.shrink_record


@pytest.mark.parametrize(
    ("model_name", "granularity", "method"),
    [("lenet300", "neuron", "l1"), ("resnet20", "channel", "l1"), ("lstm", "lstm-unit", "weight-norm"),
     ("transformer-tiny", "head", "l2"), ("resnet20", "layer", "random"), ("transformer-tiny", "layer", "random")],
)
def test_structurally_pruned_checkpoint_reloads_bit_identical(tmp_path, model_name, granularity, method):
    model, arch, record = _structured(model_name, granularity, method)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in arch.build().parameters())
    inputs = torch.rand(5, 1, 8, 8)
    path = save_checkpoint(tmp_path / "shrunk.pt", model, arch, record=record)
    payload = torch.load(path, weights_only=True)
    assert payload["version"] == 2 and payload["structure"]["steps"] == record.steps
    loaded, info = load_checkpoint(path)
    assert not info["masked"]
    with torch.no_grad():
        assert torch.equal(loaded.eval()(inputs), model(inputs))


def test_shrunk_then_masked_model_and_records_of_two_calls_reload_bit_identical(tmp_path):
    model, arch, first = _structured("resnet20", "channel", "l1", 0.25)
    second = prune(model, method="random", sparsity=2 / 7, granularity="layer").shrink_record
    prune(model, method="magnitude", sparsity=0.6, scope="global")  # hybrid: weights of what remains
    path = save_checkpoint(tmp_path / "hybrid.pt", model, arch, record=first + second)
    loaded, info = load_checkpoint(path)
    inputs = torch.rand(5, 1, 8, 8)
    assert info["masked"] and get_masks(loaded).keys() == get_masks(model).keys()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(inputs), model(inputs))


def test_saving_a_shrunk_model_without_its_record_is_refused_before_writing(tmp_path):
    model, arch, record = _structured("lenet300", "neuron")
    with pytest.raises(PrunekitError, match=r"does not match architecture 'lenet300' .*pass record="):
        save_checkpoint(tmp_path / "m.pt", model, arch)
    other = _structured("lenet300", "neuron", sparsity=0.25)[2]
    with pytest.raises(PrunekitError, match="the record does not describe how this model was pruned"):
        save_checkpoint(tmp_path / "m.pt", model, arch, record=other)
    assert list(tmp_path.iterdir()) == []


def test_version_1_checkpoints_still_load_and_unknown_versions_are_refused(tmp_path):
    model = bake(_pruned_model()).eval()
    path = save_checkpoint(tmp_path / "v1.pt", model, ARCH)
    payload = torch.load(path, weights_only=True)
    del payload["structure"]
    torch.save({**payload, "version": 1}, path)
    inputs = torch.rand(3, 1, 8, 8)
    assert torch.equal(load_checkpoint(path)[0].eval()(inputs), model(inputs))
    torch.save({**payload, "version": 9}, path)
    with pytest.raises(PrunekitError, match="version 9; this prunekit reads versions 1, 2"):
        load_checkpoint(path)
