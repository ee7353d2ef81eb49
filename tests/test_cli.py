import json

import pytest
import torch

from prunekit.checkpoint import ArchSpec, save_checkpoint
from prunekit.cli import main
from prunekit.criteria import CRITERIA
from prunekit.pruner import prune


def test_methods_lists_every_registered_criterion(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name, criterion in CRITERIA.items():
        assert name in out and criterion.description in out


def test_list_shows_models_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("lenet300", "lenet5", "resnet20", "lstm", "transformer-tiny", "mnist5k", "digits"):
        assert name in out


def test_info_prints_the_summary_of_a_checkpoint(tmp_path, capsys):
    arch = ArchSpec("lenet300", (1, 8, 8), 10)
    model = arch.build()
    prune(model, sparsity=0.8, scope="global")
    path = save_checkpoint(tmp_path / "m.pt", model, arch, meta={"method": "magnitude"})
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "lenet300" in out and "masked" in out and "fc1" in out and "method: magnitude" in out


def test_info_reports_the_removed_units_of_a_shrunk_checkpoint(tmp_path, capsys):
    arch = ArchSpec("resnet20", (1, 8, 8), 10)
    model = arch.build()
    first = prune(model, "l1", 0.5, granularity="channel", example_inputs=torch.zeros(2, 1, 8, 8))
    second = prune(model, "random", 2 / 7, granularity="layer")
    path = save_checkpoint(tmp_path / "m.pt", model, arch, record=first.shrink_record + second.shrink_record)
    assert main(["info", str(path)]) == 0
    channels = sum(len(step["removed"]) for step in first.shrink_record.steps)
    assert f"structurally pruned: {channels} channels removed, 2 layers removed" in capsys.readouterr().out


def test_compare_with_unknown_method_fails_cleanly(tmp_path, capsys):
    code = main(["compare", "--model", "lenet300", "--dataset", "digits", "--methods", "magnitud",
                 "--sparsity", "0.5", "--out", str(tmp_path), "--cache-dir", str(tmp_path), "--no-progress",
                 "--train-epochs", "1", "--finetune-epochs", "0"])
    assert code == 2
    assert "did you mean 'magnitude'" in capsys.readouterr().err


def test_compare_writes_results_json(tmp_path, capsys):
    code = main(["compare", "--model", "lenet300", "--dataset", "digits", "--methods", "magnitude",
                 "--sparsity", "0.5", "--seeds", "0", "--finetune-epochs", "1", "--train-epochs", "2",
                 "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 0
    runs = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert [(run["method"], run["sparsity_target"]) for run in runs] == [("magnitude", 0.5)]
    assert "results written to" in capsys.readouterr().out


def test_bad_sparsity_list_is_an_argument_error(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--model", "lenet300", "--dataset", "digits", "--methods", "magnitude",
              "--sparsity", "half"])
    assert "comma-separated numbers" in capsys.readouterr().err


def test_info_shows_a_users_own_channel_pruned_model(tmp_path, capsys):
    from user_models import SmallNet

    torch.manual_seed(0)
    model = SmallNet(width=8).eval()
    result = prune(model, "l1", 0.5, granularity="channel", example_inputs=torch.zeros(2, 1, 8, 8))
    arch = ArchSpec("user_models:SmallNet", (1, 8, 8), kwargs={"width": 8})
    path = save_checkpoint(tmp_path / "own.pt", model, arch, record=result.shrink_record)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    removed = sum(len(step["removed"]) for step in result.shrink_record.steps)
    assert "user_models:SmallNet (input (1, 8, 8), kwargs {'width': 8})" in out and "None classes" not in out
    assert f"{removed} channels removed" in out


def test_compare_passes_schedule_distill_and_tolerance_to_the_runs(tmp_path, capsys):
    common = ["compare", "--model", "lenet300", "--dataset", "digits", "--methods", "magnitude", "--seeds", "0",
              "--train-epochs", "2", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    code = main([*common, "--sparsity", "0.5", "--finetune-epochs", "1", "--schedule", "agp", "--distill",
                 "--out", str(tmp_path / "agp")])
    assert code == 0
    (run,) = json.loads((tmp_path / "agp" / "results.json").read_text())["runs"]
    assert (run["schedule"], run["distill"], run["sparsity_achieved"]) == ("agp", True, 0.5)
    code = main([*common, "--sparsity", "0.5", "--finetune-epochs", "0", "--tolerance", "1",
                 "--out", str(tmp_path / "bad")])
    assert code == 2 and "--schedule iterative" in capsys.readouterr().err
