import pytest
import torch
import user_models
from torch import nn

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
    assert payload["version"] == 3 and payload["structure"]["steps"] == record.steps
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
    with pytest.raises(PrunekitError, match="version 9; this prunekit reads versions 1, 2, 3"):
        load_checkpoint(path)


def test_version_2_checkpoints_with_zoo_only_arch_still_load(tmp_path):
    model, arch, record = _structured("lenet300", "neuron")
    path = save_checkpoint(tmp_path / "v2.pt", model, arch, record=record)
    payload = torch.load(path, weights_only=True)
    assert payload["arch"] == {"model": "lenet300", "input_shape": [1, 8, 8], "num_classes": 10,
                               "kwargs": {}, "input_dtype": "float32"}
    old_arch = {"model": "lenet300", "input_shape": [1, 8, 8], "num_classes": 10}  # as version 2 wrote it
    torch.save({**payload, "version": 2, "arch": old_arch}, path)
    loaded, info = load_checkpoint(path)
    inputs = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(inputs), model(inputs))
    assert info["version"] == 2 and info["arch"] == payload["arch"]


# ---------------------------------------------------------------- models outside the zoo

USER_ARCH = ArchSpec("user_models:SmallNet", (1, 8, 8), kwargs={"width": 8})


def _user_model(seed=0):
    """A trained-looking SmallNet: random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = user_models.SmallNet(width=8)
    with torch.no_grad():
        model(torch.randn(16, 1, 8, 8))  # train mode: updates running_mean / running_var
    return model.eval()


def _assert_same_outputs(loaded, model, inputs):
    with torch.no_grad():
        assert torch.equal(loaded.eval()(inputs), model.eval()(inputs))


def test_channel_pruned_user_model_reloads_bit_identical(tmp_path):
    model = _user_model()
    dense_params = sum(p.numel() for p in model.parameters())
    result = prune(model, method="l1", granularity="channel", sparsity=0.5, example_inputs=torch.zeros(2, 1, 8, 8))
    assert model.conv1.out_channels == 4 and sum(p.numel() for p in model.parameters()) < dense_params
    path = save_checkpoint(tmp_path / "user.pt", model, USER_ARCH, record=result.shrink_record)
    payload = torch.load(path, weights_only=True)  # plain data, no pickled module
    assert payload["arch"] == {"model": "user_models:SmallNet", "input_shape": [1, 8, 8], "num_classes": None,
                               "kwargs": {"width": 8}, "input_dtype": "float32"}
    loaded, info = load_checkpoint(path)
    assert type(loaded) is user_models.SmallNet and not info["masked"]
    assert loaded.conv1.weight.shape == model.conv1.weight.shape == (4, 1, 3, 3)
    assert torch.equal(loaded.bn1.running_var, model.bn1.running_var)
    _assert_same_outputs(loaded, model, torch.rand(5, 1, 8, 8))


def test_masked_user_model_named_by_arch_spec_of_reloads_bit_identical(tmp_path):
    model = _user_model()
    prune(model, method="magnitude", sparsity=0.6, scope="global")
    arch = ArchSpec.of(model, (), kwargs={"width": 8})  # no structural record: no input shape needed
    path = save_checkpoint(tmp_path / "masked.pt", model, arch)
    loaded, info = load_checkpoint(path)
    assert info["masked"] and get_masks(loaded).keys() == get_masks(model).keys()
    assert all(torch.equal(get_masks(loaded)[name], mask) for name, mask in get_masks(model).items())
    _assert_same_outputs(loaded, model, torch.rand(5, 1, 8, 8))


def test_token_id_model_replays_its_record_with_int64_example_inputs(tmp_path):
    torch.manual_seed(0)
    model = user_models.TokenNet().eval()
    token_ids = torch.randint(0, 20, (4, 5))
    result = prune(model, method="l1", granularity="neuron", sparsity=0.5, example_inputs=token_ids[:2])
    arch = ArchSpec.of(model, (5,), input_dtype="int64")
    assert arch.example_inputs().dtype == torch.int64 and arch.example_inputs().shape == (2, 5)
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "tokens.pt", model, arch, record=result.shrink_record))
    assert loaded.fc1.out_features == model.fc1.out_features == 8
    _assert_same_outputs(loaded, model, token_ids)


def test_a_factory_function_is_called_only_with_trust_factory(tmp_path, monkeypatch):
    model = _user_model()
    factory_arch = ArchSpec("user_models:small_net", (1, 8, 8), kwargs={"width": 8})
    with pytest.raises(PrunekitError, match=r"'user_models:small_net' is a function, not a torch.nn.Module subclass.*"
                                            r"trust_factory=True"):
        save_checkpoint(tmp_path / "f.pt", model, factory_arch)
    assert list(tmp_path.iterdir()) == []
    path = save_checkpoint(tmp_path / "f.pt", model, factory_arch, trust_factory=True)

    calls = []
    monkeypatch.setattr(user_models, "small_net", lambda **kwargs: calls.append(kwargs) or user_models.SmallNet(**kwargs))
    with pytest.raises(PrunekitError, match=r"f\.pt'.*'user_models:small_net' is a function, not a torch.nn.Module"):
        load_checkpoint(path)
    assert calls == []  # refused before anything named in the file was called
    loaded, _ = load_checkpoint(path, trust_factory=True)
    assert calls == [{"width": 8}]
    _assert_same_outputs(loaded, model, torch.rand(3, 1, 8, 8))


def test_a_file_naming_a_non_module_callable_is_refused_without_calling_it(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", _user_model(), USER_ARCH)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "arch": {**payload["arch"], "model": "os:system", "kwargs": {"command": "exit 3"}}}, path)
    called = []
    monkeypatch.setattr("os.system", lambda command: called.append(command))
    with pytest.raises(PrunekitError, match=r"'os:system' is a .*, not a torch.nn.Module subclass"):
        load_checkpoint(path)
    assert called == []


def test_a_factory_that_returns_no_module_is_refused(tmp_path):
    arch = ArchSpec("user_models:not_a_model", (1, 8, 8), kwargs={"width": 8})
    with pytest.raises(PrunekitError, match=r"'user_models:not_a_model' returned a dict, not a torch.nn.Module"):
        save_checkpoint(tmp_path / "m.pt", _user_model(), arch, trust_factory=True)
    assert list(tmp_path.iterdir()) == []


def test_arch_spec_of_names_an_importable_class_and_refuses_others():
    assert ArchSpec.of(_user_model(), (1, 8, 8), kwargs={"width": 8}) == USER_ARCH
    linear = nn.Linear(4, 2)
    prune(linear, method="magnitude", sparsity=0.5)  # masking swaps in a generated Parametrized class
    assert type(linear).__name__ == "ParametrizedLinear"
    assert ArchSpec.of(linear, (4,)).model == "torch.nn.modules.linear:Linear"

    class LocalNet(nn.Module):
        pass

    with pytest.raises(PrunekitError, match=r"LocalNet is defined inside a function.*move the class into an importable"):
        ArchSpec.of(LocalNet(), (1, 8, 8))
    script_class = type("ScriptNet", (nn.Module,), {"__module__": "__main__"})
    with pytest.raises(PrunekitError, match=r"ScriptNet is defined in __main__.*move the class into an importable"):
        ArchSpec.of(script_class(), (1, 8, 8))


@pytest.mark.parametrize(
    ("arch_args", "message"),
    [
        (("Net", (1, 8, 8)), r"unknown model 'Net'.*'package\.module:ClassName'"),
        (("user_models.SmallNet", (1, 8, 8)), r"unknown model 'user_models\.SmallNet'.*'package\.module:ClassName'"),
        (("user_models:SmallNet.__init__", (1, 8, 8)), r"not of the form 'package\.module:Callable'"),
        (("user_models:SmallNet", (1, 8, 8), None, {"act": nn.ReLU()}), r"kwargs\['act'\] is a ReLU.*JSON values"),
        (("user_models:SmallNet", (1, 8, 8), None, {"width": float("nan")}), r"kwargs\['width'\] is nan"),
        (("user_models:SmallNet", (1, 8, 8), None, {"sizes": {1: 2}}), r"kwargs\['sizes'\] has the key 1"),
        (("user_models:SmallNet", (1, 8, 8), 10), r"num_classes is only used for zoo models.*kwargs=\{'num_classes': 10\}"),
        (("lenet5", (1, 8, 8)), r"zoo model 'lenet5' needs input_shape and num_classes"),
        (("user_models:SmallNet", (1, 0, 8)), r"input_shape must be .* positive ints"),
        (("user_models:SmallNet", (1, 8, 8), None, None, "float33"), r"input_dtype must name a torch dtype"),
    ],
)
def test_malformed_arch_specs_are_refused_when_made(arch_args, message):
    with pytest.raises(PrunekitError, match=message):
        ArchSpec(*arch_args)


@pytest.mark.parametrize(
    ("target", "kwargs", "message"),
    [
        ("no_such_module_xyz:Net", {}, r"cannot import module 'no_such_module_xyz' named by model 'no_such_module_xyz:Net'"),
        ("user_models:SmallNett", {}, r"'user_models' has no attribute 'SmallNett'.*did you mean 'SmallNet'"),
        ("user_models:SmallNet", {"depth": 3}, r"'user_models:SmallNet' does not accept kwargs \['depth'\]"),
        ("user_models:SmallNet", {"width": -1}, r"building model 'user_models:SmallNet' .* raised ValueError: width must"),
    ],
)
def test_unbuildable_arch_is_refused_before_anything_is_written(tmp_path, target, kwargs, message):
    with pytest.raises(PrunekitError, match=message):
        save_checkpoint(tmp_path / "m.pt", _user_model(), ArchSpec(target, (1, 8, 8), kwargs=kwargs))
    assert list(tmp_path.iterdir()) == []


def test_a_structural_record_needs_an_input_shape_to_replay(tmp_path):
    model = _user_model()
    record = prune(model, method="l1", granularity="channel", sparsity=0.5,
                   example_inputs=torch.zeros(2, 1, 8, 8)).shrink_record
    with pytest.raises(PrunekitError, match="has no input_shape, but replaying its structural record"):
        save_checkpoint(tmp_path / "m.pt", model, ArchSpec.of(model, (), kwargs={"width": 8}), record=record)
    assert list(tmp_path.iterdir()) == []


def test_arch_spec_keeps_its_positional_form_and_is_a_hashable_value():
    arch = ArchSpec("lenet5", [1, 8, 8], 10)
    assert arch == ARCH and hash(arch) == hash(ARCH) and arch.input_shape == (1, 8, 8) and arch.kwargs == {}
    spec = ArchSpec("user_models:SmallNet", (1, 8, 8), kwargs={"widths": (4, 8)})
    assert spec.kwargs == {"widths": [4, 8]}  # stored as JSON would hold it
    assert ArchSpec.from_dict(spec.to_dict()) == spec and len({spec, ArchSpec.from_dict(spec.to_dict())}) == 1
    reordered = ArchSpec("user_models:SmallNet", kwargs={"width": 8, "num_classes": 3})
    assert reordered == ArchSpec("user_models:SmallNet", kwargs={"num_classes": 3, "width": 8})
    assert hash(reordered) == hash(ArchSpec("user_models:SmallNet", kwargs={"num_classes": 3, "width": 8}))
