"""PyTorch Lightning callback against the same schedule stepped by hand: one pruner.step() per
optimizer step, the same targets at the same steps, pruned weights held at zero by later optimizer
steps, and a Lightning checkpoint resuming the Pruner where it stopped."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

import prunekit
from integration_models import (SCHEDULES, STEPS, assert_held_at_zero, load_example, reference_targets, tiny_data,
                                tiny_net)
from prunekit.errors import PrunekitError
from prunekit.schedules import Polynomial

pl = pytest.importorskip("lightning.pytorch")
from prunekit.integrations.lightning import PrunekitLightningCallback  # noqa: E402


class _Module(pl.LightningModule):
    def __init__(self, net: nn.Module, pruner: prunekit.Pruner) -> None:
        super().__init__()
        self.net, self.pruner = net, pruner

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return F.cross_entropy(self.net(inputs), targets) + self.pruner.penalty()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Recorder(pl.Callback):
    """Runs after PrunekitLightningCallback: the target after each batch and the masks at `keep_at`."""

    def __init__(self, pruner: prunekit.Pruner, keep_at: int) -> None:
        self.pruner, self.keep_at, self.targets, self.masks, self.at_start = pruner, keep_at, [], None, None

    def on_train_start(self, trainer, pl_module):
        self.at_start = (self.pruner.step_count, self.pruner.sparsity.target, prunekit.get_masks(pl_module.net))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.targets.append(self.pruner.sparsity.target)
        if trainer.global_step == self.keep_at:
            self.masks = {name: keep.clone() for name, keep in prunekit.get_masks(pl_module.net).items()}


def _trainer(callbacks, tmp_path=None, max_epochs: int = 1, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
                      enable_checkpointing=False, **kwargs)


def _fit(trainer, module, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about DataLoader workers
        trainer.fit(module, DataLoader(tiny_data(), batch_size=8), **kwargs)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["polynomial", "iterative"])
def test_lightning_steps_the_pruner_like_a_hand_written_loop(schedule):
    net = tiny_net()
    pruner = prunekit.Pruner(net, "magnitude", 0.75, schedule=schedule)
    last_pruning = max(step for step in range(STEPS) if schedule.prunes_at(step)) + 1
    recorder = _Recorder(pruner, keep_at=last_pruning)
    trainer = _trainer([PrunekitLightningCallback(pruner), recorder])
    _fit(trainer, _Module(net, pruner))
    assert pruner.step_count == trainer.global_step == STEPS
    assert recorder.targets == reference_targets(schedule)
    assert pruner.sparsity.achieved == pytest.approx(0.75, abs=0.01)
    assert_held_at_zero(net, recorder.masks)


def test_lightning_counts_optimizer_steps_under_gradient_accumulation():
    net = tiny_net()
    pruner = prunekit.Pruner(net, "magnitude", 0.5, schedule=Polynomial(begin_step=0, end_step=2, frequency=1))
    trainer = _trainer([PrunekitLightningCallback(pruner, finalize=True)], accumulate_grad_batches=2)
    _fit(trainer, _Module(net, pruner))
    assert pruner.step_count == trainer.global_step == STEPS // 2
    assert pruner.finalized and not prunekit.get_masks(net)  # baked: a plain model
    assert (net[0].weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)


def test_lightning_checkpoint_resumes_the_pruner(tmp_path):
    schedule = Polynomial(begin_step=0, end_step=12, frequency=2)  # still pruning at the end of epoch 1
    net = tiny_net()
    pruner = prunekit.Pruner(net, "magnitude", 0.75, schedule=schedule)
    first = _trainer([PrunekitLightningCallback(pruner)], tmp_path)
    _fit(first, _Module(net, pruner))
    path = tmp_path / "epoch1.ckpt"
    first.save_checkpoint(path)
    saved_state = pruner.state_dict()

    plain = tiny_net(seed=1)  # a fresh process: a new model, a new Pruner, weights from the checkpoint
    plain_state = torch.load(path, weights_only=False)["state_dict"]
    nn.Module.load_state_dict(_Module(plain, prunekit.Pruner(plain, "magnitude", 0.75, schedule=schedule)),
                              plain_state)  # the checkpoint's weights load strictly into a plain model
    assert not plain[0].weight[~saved_state["masks"]["0.weight"]].any()

    resumed_net = tiny_net(seed=2)
    resumed = prunekit.Pruner(resumed_net, "magnitude", 0.75, schedule=schedule)
    recorder = _Recorder(resumed, keep_at=-1)
    second = _trainer([PrunekitLightningCallback(resumed), recorder], tmp_path, max_epochs=2)
    _fit(second, _Module(resumed_net, resumed), ckpt_path=path)
    step_count, target, masks = recorder.at_start  # restored before the first resumed step
    assert (step_count, target) == (STEPS, saved_state["target"])
    assert masks.keys() == saved_state["masks"].keys()
    assert all(torch.equal(masks[name], saved_state["masks"][name]) for name in masks)
    assert resumed.step_count == second.global_step == 2 * STEPS

    reference_net = tiny_net()  # the whole schedule by hand: the same steps give the same target
    reference = prunekit.Pruner(reference_net, "magnitude", 0.75, schedule=schedule)
    for _ in range(2 * STEPS):
        reference.step()
    assert resumed.sparsity == reference.sparsity


def test_lightning_callback_refuses_what_it_cannot_drive():
    with pytest.raises(PrunekitError, match="needs a prunekit.Pruner"):
        PrunekitLightningCallback(object())


def test_lightning_example_reaches_its_sparsity():
    result = load_example("lightning_mnist").main(epochs=1)
    assert result["steps"] == 55  # 3,500 images in batches of 64
    assert result["sparsity"] == pytest.approx(0.9, abs=0.001)
    assert result["accuracy"] > 0.5
