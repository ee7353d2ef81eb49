"""``prunekit prune``: zoo, factory and pickled models, bundled and user data, output as data, errors."""

import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.checkpoint import load_checkpoint
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.training import evaluate

from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

USER_NETS = '''
from torch import nn

def build(width=8, num_classes=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
'''

USER_DATA = '''
import torch
from torch.utils.data import DataLoader, TensorDataset

def loaders():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(48, 1, 8, 8, generator=generator)
    targets = (inputs.mean(dim=(1, 2, 3)) * 8).long() % 4
    train = DataLoader(TensorDataset(inputs[:32], targets[:32]), batch_size=16, shuffle=True,
                       generator=torch.Generator().manual_seed(1))
    return train, DataLoader(TensorDataset(inputs[32:], targets[32:]), batch_size=16)
'''

PRUNE_HALF = "stages:\n  - type: prune\n    sparsity: 0.5\n  - type: finetune\n    epochs: 1\n  - type: finalize\n"


def _zoo_args(tmp_path, recipe, out="out.pt"):
    return ["prune", "--model", "lenet300", "--data", "digits", "--recipe", str(recipe), "--out",
            str(tmp_path / out), "--train-epochs", "1", "--max-epochs", "1", "--cache-dir", str(tmp_path / "cache"),
            "--no-progress"]


def _user_modules(tmp_path, monkeypatch, suffix):
    """Write the factory and data modules under names unique to the test; import them from tmp_path."""
    (tmp_path / f"user_nets_{suffix}.py").write_text(USER_NETS)
    (tmp_path / f"user_data_{suffix}.py").write_text(USER_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (f"user_nets_{suffix}", f"user_data_{suffix}"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return f"user_nets_{suffix}:build", f"user_data_{suffix}:loaders"


def test_zoo_model_end_to_end_then_info_lists_what_each_stage_did(tmp_path, capsys):
    assert main(_zoo_args(tmp_path, RECIPES / "lenet300_weights.yaml")) == 0
    assert "written" in capsys.readouterr().out
    out = tmp_path / "out.pt"
    payload = torch.load(out, weights_only=True)  # plain data: no pickle needed
    model, info = load_checkpoint(out)
    stages = info["meta"]["stages"]
    assert [stage["label"] for stage in stages] == ["unstructured:magnitude 90%", "finetune 1 epoch(s)", "finalize"]
    from prunekit.data import load_dataset, make_loader

    splits = load_dataset("digits")
    # the reloaded model computes what the pruned model computed in the run
    assert evaluate(model, make_loader(splits.val, 500, shuffle=False)) == info["meta"]["accuracy_val"]
    assert evaluate(model, make_loader(splits.test, 500, shuffle=False)) == info["meta"]["accuracy_test"]
    targets = [name for name in payload["state_dict"] if name.endswith("weight") and "classifier" not in name]
    zeros = sum(int((payload["state_dict"][name] == 0).sum()) for name in targets)
    assert zeros / sum(payload["state_dict"][name].numel() for name in targets) == pytest.approx(0.9, abs=1e-3)
    fc1_zeros = float((model.fc1.weight == 0).float().mean())
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "stage 1: unstructured:magnitude 90%" in text and "stage 3: finalize" in text
    assert re.search(rf"\n\s+fc1\s+300 -> 300\s+19,200 -> 19,200\s+0\.0% -> {100 * fc1_zeros:.1f}%\n", text), text
    assert "stages: [" not in text  # the record is shown as a table, not as a raw dict


def test_factory_model_and_user_data_from_modules_the_user_wrote(tmp_path, monkeypatch, capsys):
    factory, data = _user_modules(tmp_path, monkeypatch, "factory")
    out = tmp_path / "own.pt"
    code = main(["prune", "--model", factory, "--model-args", '{"width": 6}', "--data", data, "--recipe",
                 "hybrid:l1@0.5+magnitude@0.5", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "--trust-factory" in capsys.readouterr().out
    with pytest.raises(PrunekitError, match="trust_factory"):
        load_checkpoint(out)  # its architecture names a function: called only when trusted
    model, info = load_checkpoint(out, trust_factory=True)
    assert model[0].out_channels + model[2].out_channels == 9  # half of the 6 + 12 channels, removed (global)
    assert info["arch"]["kwargs"] == {"width": 6}
    validation = __import__(data.partition(":")[0]).loaders()[1]
    assert evaluate(model, validation) == info["meta"]["accuracy_val"]
    assert main(["info", str(out), "--trust-factory"]) == 0
    assert "stage 1: channel:l1 50%" in capsys.readouterr().out


def test_weights_file_is_loaded_into_the_factory_model(tmp_path, monkeypatch, capsys):
    factory, data = _user_modules(tmp_path, monkeypatch, "weights")
    torch.manual_seed(5)
    trained = __import__(factory.partition(":")[0]).build(width=4)
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    recipe = tmp_path / "finalize.yaml"
    recipe.write_text("stages:\n  - type: finalize\n")
    code = main(["prune", "--model", factory, "--model-args", '{"width": 4}', "--weights", str(tmp_path / "weights.pt"),
                 "--data", data, "--recipe", str(recipe), "--out", str(tmp_path / "out.pt"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    model, _ = load_checkpoint(tmp_path / "out.pt", trust_factory=True)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in trained.state_dict().items())
    before = (tmp_path / "weights.pt").read_bytes()  # --out naming the weights read is refused, even with --overwrite
    code = main(["prune", "--model", factory, "--model-args", '{"width": 4}', "--weights", str(tmp_path / "weights.pt"),
                 "--data", data, "--recipe", str(recipe), "--out", str(tmp_path / "weights.pt"), "--overwrite",
                 "--no-progress"])
    assert code == 2 and "is the --weights file being read" in capsys.readouterr().err
    assert (tmp_path / "weights.pt").read_bytes() == before


def test_pickled_model_is_refused_without_trust_pickle_and_accepted_with_it(tmp_path, capsys):
    from user_models import SmallNet

    torch.manual_seed(0)
    pickled = tmp_path / "whole.pt"
    torch.save(SmallNet(width=4), pickled)
    recipe = tmp_path / "half.yaml"
    recipe.write_text(PRUNE_HALF)
    args = ["prune", "--model", str(pickled), "--data", "digits", "--recipe", str(recipe), "--out",
            str(tmp_path / "out.pt"), "--no-progress"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"'{pickled}' holds a pickled model" in error and "--trust-pickle" in error and "any" in error
    assert not (tmp_path / "out.pt").exists()
    assert main([*args, "--trust-pickle", "--model-args", '{"width": 4}']) == 0
    model, info = load_checkpoint(tmp_path / "out.pt")
    assert info["arch"]["model"] == "user_models:SmallNet" and not info["masked"]
    assert float((model.conv2.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def _truncated_checkpoint(tmp_path) -> Path:
    from prunekit.checkpoint import ArchSpec, save_checkpoint

    arch = ArchSpec("lenet300", (1, 8, 8), 10)
    path = save_checkpoint(tmp_path / "whole.pt", arch.build(), arch)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize("case", ["missing checkpoint", "truncated checkpoint", "malformed yaml", "unknown stage",
                                  "existing out"])
def test_bad_input_fails_cleanly_and_writes_nothing(case, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(PRUNE_HALF)
    args = _zoo_args(tmp_path, recipe)
    expected = ""
    if case == "missing checkpoint":
        args[2], expected = str(tmp_path / "nowhere.pt"), f"model file '{tmp_path / 'nowhere.pt'}' does not exist"
    elif case == "truncated checkpoint":
        args[2] = str(_truncated_checkpoint(tmp_path))
        expected = f"'{args[2]}' is not a readable torch file: it is truncated or damaged"
    elif case == "malformed yaml":
        recipe.write_text("stages:\n  - type: prune\n    sparsity: [0.5\n")
        expected = f"{recipe}:"
    elif case == "unknown stage":
        recipe.write_text("stages:\n  - type: prune\n    sparsity: 0.5\n  - type: finetun\n")
        expected = f"{recipe}:4: stage 2 (finetun), key 'type': unknown stage type 'finetun'"
    else:
        (tmp_path / "out.pt").write_bytes(b"keep me")
        expected = "exists; pass --overwrite"
    assert main(args) == 2
    assert expected in capsys.readouterr().err
    out = tmp_path / "out.pt"
    assert (out.read_bytes() == b"keep me") if case == "existing out" else not out.exists()
    assert not (tmp_path / "cache").exists()  # refused before any baseline was trained


def test_a_stage_that_cannot_run_leaves_the_input_checkpoint_as_it_was(tmp_path, capsys):
    from prunekit.checkpoint import ArchSpec, save_checkpoint

    arch = ArchSpec("lenet300", (1, 8, 8), 10)
    source = save_checkpoint(tmp_path / "in.pt", arch.build(), arch)
    before = source.read_bytes()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - type: prune\n    sparsity: 0.5\n  - type: prune\n    granularity: neuron\n"
                      "    sparsity: 0.5\n    exclude: [fc9]\n")
    args = ["prune", "--model", str(source), "--data", "digits", "--recipe", str(recipe), "--out",
            str(tmp_path / "out.pt"), "--no-progress"]
    assert main(args) == 2
    assert "stage 2 (neuron:l1 50%)" in capsys.readouterr().err
    assert source.read_bytes() == before and not (tmp_path / "out.pt").exists()


def test_pruning_a_checkpoint_again_keeps_its_structure(tmp_path, capsys):
    recipe = tmp_path / "neurons.yaml"
    recipe.write_text("stages:\n  - type: prune\n    granularity: neuron\n    sparsity: 0.5\n")
    assert main(_zoo_args(tmp_path, recipe, "first.pt")) == 0
    again = ["prune", "--model", str(tmp_path / "first.pt"), "--data", "digits", "--recipe", str(recipe), "--out",
             str(tmp_path / "second.pt"), "--no-progress"]
    assert main(again) == 0, capsys.readouterr().err
    model, _ = load_checkpoint(tmp_path / "second.pt")
    assert isinstance(model.fc1, nn.Linear) and model.fc1.out_features == 75 and model.fc2.out_features == 25
