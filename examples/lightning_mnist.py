"""Gradual magnitude pruning inside PyTorch Lightning: LeNet-300-100 on the bundled MNIST-5k, the
sparsity rising to 90% on a polynomial schedule over the first half of training, then recovery.

``PrunekitLightningCallback`` calls ``pruner.step()`` after every optimizer step, keeps the
Pruner's state in Lightning's checkpoints and (``finalize=True``) bakes the masks in at the end;
``training_step`` adds ``pruner.penalty()`` (zero here: no regularizer).

Run:  .venv/bin/python examples/lightning_mnist.py     (needs: pip install prunekit[lightning]; ~10 s)
"""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import torch
from torch.nn import functional as F

import prunekit
from prunekit.data import load_dataset, make_loader
from prunekit.integrations.lightning import PrunekitLightningCallback
from prunekit.schedules import Polynomial
from prunekit.training import evaluate
from prunekit.zoo import build_model


class Classifier(pl.LightningModule):
    def __init__(self, net: torch.nn.Module, pruner: prunekit.Pruner, lr: float = 0.05) -> None:
        super().__init__()
        self.net, self.pruner, self.lr = net, pruner, lr

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return F.cross_entropy(self.net(inputs), targets) + self.pruner.penalty()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main(epochs: int = 4, sparsity: float = 0.9) -> dict:
    """Train and prune; returns the achieved sparsity and test accuracy."""
    splits = load_dataset("mnist5k")
    loader = make_loader(splits.train, batch_size=64, shuffle=True, seed=0)
    steps = epochs * len(loader)
    torch.manual_seed(0)
    net = build_model("lenet300", splits.input_shape, splits.num_classes)
    pruner = prunekit.Pruner(net, "magnitude", sparsity, scope="global",
                             schedule=Polynomial(begin_step=0, end_step=steps // 2, frequency=max(steps // 20, 1)))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[PrunekitLightningCallback(pruner, finalize=True)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about DataLoader workers
        trainer.fit(Classifier(net, pruner), loader)
    zeros = sum(int((layer.weight == 0).sum()) for layer in net.modules() if isinstance(layer, torch.nn.Linear))
    total = sum(layer.weight.numel() for layer in net.modules() if isinstance(layer, torch.nn.Linear))
    accuracy = evaluate(net, make_loader(splits.test, batch_size=256, shuffle=False))
    return {"steps": trainer.global_step, "sparsity": zeros / total, "accuracy": accuracy}


if __name__ == "__main__":
    result = main()
    print(f"{result['steps']} steps: weight sparsity {result['sparsity']:.1%}, test accuracy {result['accuracy']:.2%}")
