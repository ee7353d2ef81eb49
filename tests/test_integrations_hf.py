"""Hugging Face Trainer callback against the same schedule stepped by hand: one pruner.step() per
optimizer step (gradient accumulation included), the same targets at the same steps, pruned
weights held at zero, and the penalty joining the loss through ``compute_loss_func``; a run resumed
from a Trainer checkpoint into a fresh model against the same run uninterrupted."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import prunekit
from integration_models import (SCHEDULES, STEPS, assert_held_at_zero, load_example, reference_targets, tiny_data,
                                tiny_net)
from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)
from prunekit.errors import PrunekitError
from prunekit.regularizers import GroupLasso
from prunekit.schedules import Polynomial


pytest.importorskip("accelerate")  # the Trainer needs it
transformers = pytest.importorskip("transformers")
import safetensors.torch  # noqa: E402 (comes with transformers)
from prunekit.integrations.hf_checkpoint import PRUNER_FILE  # noqa: E402
from prunekit.integrations.hf_trainer import PrunekitTrainerCallback, classification_loss  # noqa: E402


class _HFNet(nn.Module):
    """A Trainer-compatible classifier: keyword inputs in, ``{"logits": ...}`` out."""

    _keys_to_ignore_on_save = None  # read by the Trainer when a checkpoint misses some of the model's keys

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.net = tiny_net(seed)

    def forward(self, x, labels=None):
        return {"logits": self.net(x)}


def _hf_data() -> list[dict]:
    inputs, labels = tiny_data().tensors
    return [{"x": x, "labels": y} for x, y in zip(inputs, labels)]


def _hf_trainer(model, callback, tmp_path, accumulation: int = 1, save_steps: int | None = None):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=1, learning_rate=0.1,
        gradient_accumulation_steps=accumulation, report_to=[], logging_strategy="no",
        save_strategy="no" if save_steps is None else "steps", save_steps=save_steps or 500,
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=_hf_data(), callbacks=[callback],
                                compute_loss_func=callback.loss_with_penalty())


class _HFRecorder(transformers.TrainerCallback):
    def __init__(self, pruner, keep_at: int) -> None:
        self.pruner, self.keep_at, self.targets, self.masks = pruner, keep_at, [], None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.targets.append(self.pruner.sparsity.target)
        if state.global_step == self.keep_at:
            self.masks = {name: keep.clone() for name, keep in prunekit.get_masks(self.pruner.model).items()}


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["polynomial", "iterative"])
def test_hf_trainer_steps_the_pruner_like_a_hand_written_loop(schedule, tmp_path):
    model = _HFNet()
    pruner = prunekit.Pruner(model.net, "magnitude", 0.75, schedule=schedule)
    last_pruning = max(step for step in range(STEPS) if schedule.prunes_at(step)) + 1
    recorder = _HFRecorder(pruner, keep_at=last_pruning)
    trainer = _hf_trainer(model, PrunekitTrainerCallback(pruner), tmp_path)
    trainer.add_callback(recorder)
    trainer.train()
    assert pruner.step_count == trainer.state.global_step == STEPS
    assert recorder.targets == reference_targets(schedule)
    assert pruner.sparsity.achieved == pytest.approx(0.75, abs=0.01)
    assert_held_at_zero(model.net, recorder.masks)


def test_hf_penalty_joins_the_loss_shared_over_accumulated_batches(tmp_path):
    model = _HFNet()
    pruner = prunekit.Pruner(model.net, "l1", 0.5, granularity="neuron", regularizer=GroupLasso(0.01),
                             example_inputs=torch.randn(2, 6),
                             schedule=Polynomial(begin_step=2, end_step=3, frequency=1))
    callback = PrunekitTrainerCallback(pruner, finalize=True)
    trainer = _hf_trainer(model, callback, tmp_path, accumulation=2)
    outputs = model(torch.randn(4, 6))
    labels = torch.tensor([0, 1, 2, 0])
    callback._accumulation_steps = 2  # as on_train_begin sets it from the arguments
    expected = F.cross_entropy(outputs["logits"], labels) + pruner.penalty() / 2
    assert float(trainer.compute_loss_func(outputs, labels).detach()) == pytest.approx(float(expected.detach()))
    assert float(pruner.penalty().detach()) > 0
    trainer.train()
    assert pruner.step_count == trainer.state.global_step == STEPS // 2
    assert pruner.finalized and model.net[0].weight.shape[0] == 8  # half the hidden neurons removed


def test_hf_example_reaches_its_sparsity():
    result = load_example("hf_trainer_tiny_bert").main(epochs=4)
    assert result["steps"] == 64  # 512 sequences in batches of 32, 4 epochs
    assert result["sparsity"] == pytest.approx(0.7, abs=0.001)
    assert result["accuracy"] > 0.6


# ---------------------------------------------------------------- checkpoints and resuming

RESUME_STEPS, SAVE_EVERY = 8, 3  # checkpoints at steps 3, 6 and 8
BERT_SCHEDULE = Polynomial(begin_step=0, end_step=6, frequency=2)  # prunes at 0, 2, 4, 6: still ramping at 3


def _tiny_bert(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=24, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=8, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def _bert_data() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 24, (32, 8), generator=generator), torch.randint(0, 2, (32,), generator=generator)
    return [{"input_ids": row, "labels": label} for row, label in zip(ids, labels)]


class _AtStart(transformers.TrainerCallback):
    """Runs after PrunekitTrainerCallback: the Pruner's step and masks when training (re)starts."""

    def __init__(self, pruner) -> None:
        self.pruner, self.step_count, self.masks = pruner, None, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.step_count, self.masks = self.pruner.step_count, prunekit.get_masks(self.pruner.model)


def _bert_run(output_dir, seed: int = 0, resume_from=None, restore_by_hand=None):
    """RESUME_STEPS steps of a tiny BERT (AdamW, dropout on) pruned by a new Pruner and callback."""
    model = _tiny_bert(seed)
    pruner = prunekit.Pruner(model, "magnitude", 0.6, scope="global", schedule=BERT_SCHEDULE)
    if restore_by_hand is not None:
        pruner.load_state_dict(torch.load(restore_by_hand, weights_only=True))
    callback, at_start = PrunekitTrainerCallback(pruner), _AtStart(pruner)
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=RESUME_STEPS, learning_rate=1e-2,
        save_strategy="steps", save_steps=SAVE_EVERY, report_to=[], logging_strategy="no", use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_bert_data(), callbacks=[callback, at_start],
                                   compute_loss_func=callback.loss_with_penalty())
    trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    return model, pruner, at_start


def _assert_same_run(model, pruner, reference_model, reference_pruner) -> None:
    state, reference = pruner.state_dict(), reference_pruner.state_dict()
    assert (state["step"], state["target"], state["achieved"]) == (reference["step"], reference["target"],
                                                                   reference["achieved"])
    assert state["masks"].keys() == reference["masks"].keys() and state["masks"]
    assert all(torch.equal(state["masks"][name], reference["masks"][name]) for name in reference["masks"])
    assert pruner.sparsity == reference_pruner.sparsity
    weights, reference_weights = model.state_dict(), reference_model.state_dict()
    assert weights.keys() == reference_weights.keys()
    for name, value in reference_weights.items():
        assert torch.equal(weights[name], value), name  # the same steps on the same numbers: bit for bit


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One run straight through, saving checkpoints: the reference, and the checkpoints to resume from."""
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    model, pruner, _ = _bert_run(output_dir)
    return output_dir, model, pruner


def test_hf_checkpoints_carry_the_pruner_state(uninterrupted):
    output_dir, _, _ = uninterrupted
    by_hand = prunekit.Pruner(_tiny_bert(0), "magnitude", 0.6, scope="global", schedule=BERT_SCHEDULE)
    targets = {}
    for step in range(1, RESUME_STEPS + 1):
        by_hand.step()
        targets[step] = by_hand.sparsity.target
    for step in (SAVE_EVERY, 2 * SAVE_EVERY, RESUME_STEPS):
        folder = output_dir / f"checkpoint-{step}"
        state = torch.load(folder / PRUNER_FILE, weights_only=True)
        assert (state["step"], state["target"]) == (step, targets[step])  # saved after that step's pruner.step()
        assert not [path for path in folder.iterdir() if path.name.endswith(".tmp")]  # written atomically


def test_hf_resume_into_a_fresh_model_matches_the_uninterrupted_run(uninterrupted, tmp_path):
    output_dir, reference_model, reference_pruner = uninterrupted
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(output_dir / f"checkpoint-{SAVE_EVERY}", resumed_dir / f"checkpoint-{SAVE_EVERY}")
    saved = torch.load(resumed_dir / f"checkpoint-{SAVE_EVERY}" / PRUNER_FILE, weights_only=True)
    model, pruner, at_start = _bert_run(resumed_dir, seed=1, resume_from=resumed_dir / f"checkpoint-{SAVE_EVERY}")
    assert at_start.step_count == SAVE_EVERY  # restored before the first resumed step
    assert at_start.masks.keys() == saved["masks"].keys()
    assert all(torch.equal(at_start.masks[name], saved["masks"][name]) for name in saved["masks"])
    _assert_same_run(model, pruner, reference_model, reference_pruner)


def test_hf_resume_from_elsewhere_needs_the_pruner_state_loaded_by_hand(uninterrupted, tmp_path):
    output_dir, reference_model, reference_pruner = uninterrupted
    elsewhere, new_run = tmp_path / "copied", tmp_path / "new_run"
    shutil.copytree(output_dir / f"checkpoint-{SAVE_EVERY}", elsewhere)
    with pytest.raises(PrunekitError, match="the checkpoint it resumed from lies elsewhere"):
        _bert_run(new_run, seed=1, resume_from=elsewhere)
    stale = new_run / f"checkpoint-{SAVE_EVERY}"  # the callback's guess: here, a checkpoint of another run
    shutil.copytree(elsewhere, stale)
    weights = safetensors.torch.load_file(stale / "model.safetensors")
    weights["classifier.bias"] += 1.0
    safetensors.torch.save_file(weights, stale / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PrunekitError, match="from a checkpoint other than .*their weights differ"):
        _bert_run(new_run, seed=1, resume_from=elsewhere)
    model, pruner, _ = _bert_run(new_run, seed=1, resume_from=elsewhere, restore_by_hand=elsewhere / PRUNER_FILE)
    _assert_same_run(model, pruner, reference_model, reference_pruner)


def test_hf_resume_restores_a_pruner_on_a_submodule(tmp_path):
    """The Trainer trains _HFNet, the Pruner prunes its .net: the checkpoint's names start with 'net.'."""

    def run(seed: int, resume_from=None):
        model = _HFNet(seed)
        pruner = prunekit.Pruner(model.net, "magnitude", 0.75, schedule=SCHEDULES[0])  # prunes at 0, 2 and 4
        trainer = _hf_trainer(model, PrunekitTrainerCallback(pruner), tmp_path, save_steps=3)
        trainer.train(resume_from_checkpoint=resume_from)
        return model, pruner

    reference_model, reference_pruner = run(0)
    model, pruner = run(1, resume_from=str(tmp_path / "checkpoint-3"))
    _assert_same_run(model, pruner, reference_model, reference_pruner)


def test_hf_resume_refuses_a_checkpoint_saved_without_the_callback(tmp_path):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, save_strategy="steps", save_steps=2,
        report_to=[], logging_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )
    transformers.Trainer(model=_HFNet(), args=args, train_dataset=_hf_data(),  # no prunekit callback
                         compute_loss_func=classification_loss).train()
    model = _HFNet()
    pruner = prunekit.Pruner(model.net, "magnitude", 0.5, schedule=Polynomial(begin_step=0, end_step=4, frequency=1))
    callback = PrunekitTrainerCallback(pruner)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_hf_data(), callbacks=[callback])
    with pytest.raises(PrunekitError, match=f"holds no {PRUNER_FILE}: it was saved without PrunekitTrainerCallback"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert pruner.step_count == 0 and not prunekit.get_masks(model.net)  # the Pruner is left as it was
