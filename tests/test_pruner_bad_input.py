"""Bad input to prunekit.Pruner and its helpers: a clear error, and the model (and the Pruner)
left as they were."""

import copy

import pytest
import torch

from prunekit import Pruner, get_masks, prune, remove_masked_units
from prunekit.errors import PrunekitError
from prunekit.schedules import OneShot, Schedule

from invariants import mlp, small_cnn


class _EveryStep(Schedule):
    """Prunes at every step to the final target (a schedule that prunes more than once)."""

    def prunes_at(self, step):
        return True

    def sparsity_at(self, step, final):
        return final

    def finished(self, step):
        return False

    def to_dict(self):
        return {"type": "EveryStep"}


def test_step_and_finalize_after_finalize_are_refused():
    pruner = Pruner(mlp(), "magnitude", 0.5)
    pruner.step()
    pruner.finalize()
    for action in (pruner.step, pruner.finalize, pruner.release):
        with pytest.raises(PrunekitError, match="after this Pruner was finalized"):
            action()


@pytest.mark.parametrize("other", [
    {"model": lambda: mlp((20, 16, 12, 5)), "method": "magnitude", "match": "different model"},
    {"model": mlp, "method": "random", "match": "method='random'"},
])
def test_load_state_dict_from_another_model_or_method_is_refused(other):
    source = other["model"]()
    source_pruner = Pruner(source, other["method"], 0.5)
    source_pruner.step()
    model = mlp()
    pruner = Pruner(model, "magnitude", 0.5)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PrunekitError, match=other["match"]):
        pruner.load_state_dict(source_pruner.state_dict())
    assert not get_masks(model) and all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(PrunekitError, match="not a Pruner state"):
        pruner.load_state_dict({"masks": {}})


def test_a_second_pruner_on_masks_of_a_live_pruner_is_refused_until_released():
    model = mlp()
    first = Pruner(model, "magnitude", 0.5)
    first.step()
    masks = get_masks(model)
    with pytest.raises(PrunekitError, match="mask managed by another live Pruner"):
        Pruner(model, "random", 0.7)
    assert all(torch.equal(get_masks(model)[name], mask) for name, mask in masks.items())
    first.release()
    second = Pruner(model, "magnitude", 0.7)
    second.step()
    assert all(bool((get_masks(model)[name] <= mask).all()) for name, mask in masks.items())


def test_removing_traced_units_without_example_inputs_is_refused():
    model = small_cnn()
    prune(model, "l1", 0.5, granularity="channel", example_inputs=torch.randn(2, 1, 8, 8), remove=False)
    masks = get_masks(model)
    with pytest.raises(PrunekitError, match="pass example_inputs"):
        remove_masked_units(model, "channel")
    assert get_masks(model).keys() == masks.keys()
    with pytest.raises(PrunekitError, match="pass example_inputs"):
        Pruner(model, "l1", 0.5, granularity="channel")


def test_unknown_pruner_option_and_bad_schedule_are_refused():
    with pytest.raises(PrunekitError, match="unknown Pruner option 'exlude'; did you mean 'exclude'"):
        Pruner(mlp(), "magnitude", 0.5, exlude=["4"])
    with pytest.raises(PrunekitError, match="schedule must be"):
        Pruner(mlp(), "magnitude", 0.5, schedule="one-shot")
    with pytest.raises(PrunekitError, match="at_step"):
        OneShot(at_step=-1)


def test_removal_at_once_is_refused_with_a_repeating_schedule_and_inside_train():
    from prunekit.callbacks import PrunerCallback

    model, inputs = small_cnn(), torch.randn(4, 1, 8, 8)
    with pytest.raises(PrunekitError, match="suits a schedule that prunes once"):
        Pruner(model, "l1", 0.5, granularity="channel", example_inputs=inputs[:2], remove=True, schedule=_EveryStep())
    pruner = Pruner(model, "l1", 0.5, granularity="channel", example_inputs=inputs[:2], remove=True)
    with pytest.raises(PrunekitError, match="optimiser holding the old parameters"):
        PrunerCallback(pruner)
    pruner.step()  # once it has pruned (before training), driving it from train is harmless
    assert PrunerCallback(pruner).pruner is pruner


def test_two_pruners_made_before_either_steps_cannot_share_masks():
    model = mlp()
    first, second = Pruner(model, "magnitude", 0.5), Pruner(model, "random", 0.7)
    first.step()
    masks = get_masks(model)
    with pytest.raises(PrunekitError, match="mask managed by another live Pruner"):
        second.step()
    assert all(torch.equal(get_masks(model)[k], v) for k, v in masks.items())
    assert second.state_dict()["step"] == 0


def test_resuming_from_a_finalized_state_is_refused():
    pruner = Pruner(mlp(), "magnitude", 0.5)
    pruner.step()
    pruner.finalize()
    with pytest.raises(PrunekitError, match="was finalized: there is nothing left to resume"):
        Pruner(mlp(), "magnitude", 0.5).load_state_dict(pruner.state_dict())


def test_module_level_finalize_removes_masked_units_or_refuses_without_example_inputs():
    from prunekit import finalize

    inputs = torch.randn(4, 1, 8, 8)
    model = small_cnn().eval()
    prune(model, "l1", 0.5, granularity="channel", example_inputs=inputs[:2], remove=False)
    with torch.no_grad():
        masked = model(inputs)
    with pytest.raises(PrunekitError, match="pass example_inputs"):
        finalize(model, "channel")
    assert get_masks(model)
    assert finalize(model, "channel", inputs[:2]) is model and not get_masks(model) and model[0].out_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), masked, atol=1e-5, rtol=1e-5)
    live = Pruner(mlp(), "magnitude", 0.5)
    live.step()
    with pytest.raises(PrunekitError, match="managed by another live Pruner"):
        finalize(live.model)


def test_options_as_a_dataclass_equal_options_as_keywords():
    from prunekit import PruneOptions

    by_keywords, by_dataclass = mlp(), mlp()
    Pruner(by_keywords, "random", 0.5, exclude=["4"], seed=3).step()
    Pruner(by_dataclass, "random", 0.5, options=PruneOptions(exclude=("4",), seed=3)).step()
    assert sorted(get_masks(by_dataclass)) == ["0.weight", "2.weight"]
    assert all(torch.equal(get_masks(by_keywords)[k], v) for k, v in get_masks(by_dataclass).items())
    with pytest.raises(PrunekitError, match="either options=PruneOptions"):
        Pruner(mlp(), "random", 0.5, options=PruneOptions(), seed=3)
