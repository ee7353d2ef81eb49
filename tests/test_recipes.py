"""Recipes: YAML read with line numbers, validated completely before anything runs, run in Python."""

import copy
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from prunekit.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from prunekit.data import load_dataset, make_loader
from prunekit.errors import PrunekitError
from prunekit.hybrid import prune_hybrid
from prunekit.masking import get_masks, named_effective_parameters
from prunekit.recipe_schema import (Distill, FinalizeStage, FinetuneStage, PruneStage, Recipe, ScheduleStage,
                                    stage_from_mapping)
from prunekit.recipe_yaml import RecipeError, load_recipe
from prunekit.recipes import recipe_from_spec, run_recipe
from prunekit.zoo import build_model

from invariants import mlp, one_thread, same_state, small_cnn  # noqa: F401 (one_thread: autouse)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
#: the zoo model each shipped recipe is written for (a new recipe must be added here to be run)
MODEL_FOR = {"lenet300_weights.yaml": "lenet300", "lenet5_hybrid.yaml": "lenet5",
             "resnet20_channels.yaml": "resnet20"}


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _error(path: Path) -> str:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    return str(caught.value)


@pytest.fixture(scope="module")
def digits_subset():
    """96 training and 64 validation digits: enough for every stage to do its work once."""
    splits = load_dataset("digits")
    train = make_loader(Subset(splits.train, range(96)), 32, shuffle=True, seed=0)
    val = DataLoader(Subset(splits.val, range(64)), batch_size=64)
    return train, val


# ---------------------------------------------------------------- reading and validation


def test_malformed_yaml_names_the_file_and_the_line(tmp_path):
    path = _write(tmp_path, "stages:\n  - type: prune\n    sparsity: 0.5\n   method: l1\n")
    message = _error(path)
    assert f"{path}:4:" in message and "not valid YAML" in message


def test_unknown_stage_type_names_the_line_and_the_valid_types(tmp_path):
    path = _write(tmp_path, "stages:\n  - type: prune\n    sparsity: 0.5\n  - type: prunee\n")
    message = _error(path)
    assert f"{path}:4: stage 2 (prunee), key 'type': unknown stage type 'prunee'; did you mean 'prune'?" in message
    assert "Choose one of: finalize, finetune, prune, schedule" in message


def test_wrong_value_type_names_the_key_and_the_line(tmp_path):
    path = _write(tmp_path, "seed: 0\nstages:\n  - type: finetune\n    lr: 0.01\n    epochs: two\n")
    message = _error(path)
    assert f"{path}:5: stage 1 (finetune), key 'epochs': must be an integer >= 0" in message
    assert "got 'two' (str)" in message


def test_every_problem_of_the_file_is_listed_with_its_line(tmp_path):
    path = _write(tmp_path, "\n".join([
        "stages:",
        "  - type: prune",
        "    sparsty: 0.5",                          # 3: unknown key
        "  - type: schedule",
        "    method: magnitude",
        "    sparsity: 0.8",
        "    distill: {temperature: -1}",            # 7: nested key
        "  - type: finalize",
        "colour: blue",                              # 9: unknown recipe key
    ]) + "\n")
    problems = _error(path)
    assert f"{path} has 3 problems" in problems
    assert f"{path}:3: stage 1 (prune), key 'sparsty': unknown prune stage key 'sparsty'; did you mean 'sparsity'?" \
        in problems
    assert f"{path}:7: stage 2 (schedule), key 'distill.temperature': must be a number > 0" in problems
    assert f"{path}:9: unknown recipe key 'colour'" in problems


def test_missing_empty_and_non_mapping_recipes_are_refused(tmp_path):
    assert "does not exist" in _error(tmp_path / "absent.yaml")
    assert "is empty" in _error(_write(tmp_path, "# nothing\n"))
    assert f"{tmp_path / 'recipe.yaml'}:1: key 'stages' must be a non-empty list" in _error(
        _write(tmp_path, "stages: prune\n"))
    assert "appears twice (first on line 2)" in _error(
        _write(tmp_path, "stages:\n  - type: prune\n    type: finalize\n"))


def test_python_built_recipe_equals_the_yaml_one():
    loaded = load_recipe(RECIPES / "resnet20_channels.yaml")
    built = Recipe([PruneStage("taylor", "channel", 0.3),
                    ScheduleStage(PruneStage("magnitude", sparsity=0.8, scope="global"), schedule="polynomial",
                                  epochs=3, distill=Distill(temperature=4, alpha=0.5)),
                    FinalizeStage()], description=loaded.description, seed=0)
    assert loaded == built
    assert [stage_from_mapping(stage) for stage in built.to_dict()["stages"]] == list(built.stages)


def test_python_built_stages_get_the_same_checks():
    with pytest.raises(PrunekitError, match="key 'method': unknown channel method 'magnitud'"):
        PruneStage("magnitud", "channel", 0.3)
    with pytest.raises(PrunekitError, match="key 'epochs': must be an integer >= 1"):
        ScheduleStage(PruneStage("magnitude", sparsity=0.5), epochs=0)


# ---------------------------------------------------------------- running


def test_a_bad_second_stage_leaves_the_model_untouched():
    model = mlp((8, 8, 4))
    before = copy.deepcopy(model)
    recipe = Recipe([PruneStage("magnitude", sparsity=0.5), PruneStage("l1", "neuron", 0.5, exclude=("fc9",))])
    with pytest.raises(PrunekitError, match=r"stage 2 \(neuron:l1 50%\): .*'fc9'.*Nothing was run"):
        run_recipe(recipe, model, None, example_inputs=torch.zeros(2, 8))
    assert same_state(model, before) and get_masks(model) == {}
    with pytest.raises(PrunekitError, match=r"stage 2 \(finetune 1 epoch\(s\)\): a finetune stage trains"):
        run_recipe(Recipe([PruneStage("magnitude", sparsity=0.5), FinetuneStage(1)]), model, None)
    assert same_state(model, before) and get_masks(model) == {}


def test_hybrid_spec_is_two_stages_that_prune_like_prune_hybrid(digits_subset):
    train, _ = digits_subset
    example = torch.zeros(2, 1, 8, 8)
    expected, pruned = small_cnn(seed=3), small_cnn(seed=3)
    prune_hybrid(expected, "l1", 0.5, "magnitude", 0.8, example, scope="global", data=train, seed=0)
    recipe = recipe_from_spec("hybrid:l1@0.5+magnitude@0.8", model=pruned)
    assert [stage.label for stage in recipe.stages] == ["channel:l1 50%", "unstructured:magnitude 80%"]
    run = run_recipe(recipe, pruned, train, example_inputs=example)
    expected_parameters = dict(named_effective_parameters(expected))
    for name, tensor in named_effective_parameters(pruned):
        assert torch.equal(tensor, expected_parameters[name]), name
    assert get_masks(pruned).keys() == get_masks(expected).keys()
    inputs = torch.rand(4, 1, 8, 8)
    assert torch.equal(pruned.eval()(inputs), expected.eval()(inputs))
    assert run.shrink_record is not None and [stage.result.granularity for stage in run.stages] == \
        ["channel", "unstructured"]


def test_a_spec_without_a_sparsity_is_refused():
    with pytest.raises(PrunekitError, match="names no weight sparsity"):
        recipe_from_spec("hybrid:l1@0.5+magnitude", granularity="channel")


def _zero_share(model, names) -> float:
    parameters = dict(named_effective_parameters(model))
    return sum(int((parameters[name] == 0).sum()) for name in names) / sum(parameters[name].numel() for name in names)


def test_every_shipped_recipe_is_listed_here():
    assert sorted(path.name for path in RECIPES.glob("*.yaml")) == sorted(MODEL_FOR)


@pytest.mark.parametrize("name", sorted(MODEL_FOR))
def test_shipped_recipe_runs_on_a_tiny_budget_and_reaches_its_targets(name, digits_subset, tmp_path):
    train, val = digits_subset
    recipe = load_recipe(RECIPES / name).capped(1)
    torch.manual_seed(0)
    arch = ArchSpec(MODEL_FOR[name], (1, 8, 8), 10)
    model = arch.build()
    run = run_recipe(recipe, model, train, val)
    assert [stage.stage for stage in run.stages] == list(recipe.stages)
    assert get_masks(model) == {}  # every shipped recipe ends with finalize
    last_weights = [stage for stage in run.stages if stage.result is not None and stage.result.unit == "weight"][-1]
    target = getattr(last_weights.stage, "prune", last_weights.stage).sparsity
    # the masks held through fine-tuning: the final weights are as sparse as the last weight stage made them
    assert _zero_share(model, last_weights.result.targets) == pytest.approx(target, abs=0.01)
    for stage in run.stages:
        if stage.result is not None and stage.result.unit != "weight":
            assert stage.result.sparsity_achieved == pytest.approx(stage.stage.sparsity, abs=0.05)
            units = [(stage.layers_before[layer]["units"], stage.layers_after[layer]["units"])
                     for layer in stage.layers_before if stage.layers_before[layer]["units"] is not None]
            assert sum(after for _, after in units) < sum(before for before, _ in units)
    path = save_checkpoint(tmp_path / "out.pt", model, arch, record=run.shrink_record)
    loaded, _ = load_checkpoint(path)
    inputs = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded.eval()(inputs), model.eval()(inputs))
    assert run.stages[-1].accuracy_after == pytest.approx(
        sum(int((loaded(x).argmax(1) == y).sum()) for x, y in val) / 64)


def test_schedule_stage_masks_units_until_finalize_removes_them(digits_subset):
    train, _ = digits_subset
    torch.manual_seed(0)
    model = build_model("lenet300", (1, 8, 8), 10)
    recipe = Recipe([ScheduleStage(PruneStage("l1", "neuron", 0.5), schedule="iterative", rounds=2), FinalizeStage()])
    run = run_recipe(recipe, model, train, example_inputs=torch.zeros(2, 1, 8, 8))
    schedule, finalize = run.stages
    assert schedule.layers_after["fc1"]["units"] == 300 and finalize.layers_after["fc1"]["units"] == 150
    assert finalize.layers_after["fc2"]["units"] == 50 and get_masks(model) == {}
    assert schedule.result.sparsity_achieved == pytest.approx(0.5)
