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
