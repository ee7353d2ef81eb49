"""Hugging Face Trainer callback against the same schedule stepped by hand: one pruner.step() per
optimizer step (gradient accumulation included), the same targets at the same steps, pruned
weights held at zero, and the penalty joining the loss through ``compute_loss_func``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import prunekit
from integration_models import (SCHEDULES, STEPS, assert_held_at_zero, load_example, reference_targets, tiny_data,
                                tiny_net)
from prunekit.regularizers import GroupLasso
from prunekit.schedules import Polynomial


pytest.importorskip("accelerate")  # the Trainer needs it
transformers = pytest.importorskip("transformers")
from prunekit.integrations.hf_trainer import PrunekitTrainerCallback  # noqa: E402


class _HFNet(nn.Module):
    """A Trainer-compatible classifier: keyword inputs in, ``{"logits": ...}`` out."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()

    def forward(self, x, labels=None):
        return {"logits": self.net(x)}


def _hf_data() -> list[dict]:
    inputs, labels = tiny_data().tensors
    return [{"x": x, "labels": y} for x, y in zip(inputs, labels)]


def _hf_trainer(model, callback, tmp_path, accumulation: int = 1):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=1, learning_rate=0.1,
        gradient_accumulation_steps=accumulation, save_strategy="no", report_to=[], logging_strategy="no",
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
