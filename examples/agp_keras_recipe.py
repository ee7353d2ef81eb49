"""The seed's Keras recipe, in PyTorch with prunekit: gradual magnitude pruning to 50% sparsity on a
polynomial schedule from step 1000 to step 2000, then retraining, on a bundled CNN (LeNet-5).

Keras (TF Model Optimization) writes it as::

    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=0.5,
                                                    begin_step=1000, end_step=2000)
    model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    model.fit(..., callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])

Steps scaled to the bundled data: the seed counts steps on full MNIST (60,000 images at batch 128:
469 steps per epoch, so steps 1000 -> 2000 are epochs 2.1 -> 4.3). MNIST-5k has 3,500 training
images at batch 64: 55 steps per epoch, so the same epochs are steps 117 -> 235 here. Training
runs 6 epochs in all (330 steps): 2 before pruning starts, about 2 while it ramps, 2 of retraining.

Run:  .venv/bin/python examples/agp_keras_recipe.py     (about 15 s on 2 cores after the baseline)
"""

from __future__ import annotations

import torch

import prunekit
from prunekit.callbacks import PrunerCallback
from prunekit.data import load_dataset, make_loader
from prunekit.schedules import Polynomial
from prunekit.training import evaluate, get_baseline, train

KERAS_STEPS_PER_EPOCH = 469  # ceil(60_000 / 128)
KERAS_BEGIN, KERAS_END, TARGET = 1000, 2000, 0.5


def main() -> None:
    splits = load_dataset("mnist5k")
    loader = make_loader(splits.train, batch_size=64, shuffle=True, seed=0, augment_shift=2)
    test_loader = make_loader(splits.test, batch_size=256, shuffle=False)
    steps_per_epoch = len(loader)
    begin = round(KERAS_BEGIN / KERAS_STEPS_PER_EPOCH * steps_per_epoch)
    end = round(KERAS_END / KERAS_STEPS_PER_EPOCH * steps_per_epoch)
    frequency = max(1, round(100 / KERAS_STEPS_PER_EPOCH * steps_per_epoch))  # Keras' default: every 100 steps
    model, _ = get_baseline("lenet5", "mnist5k", seed=0)
    dense_accuracy = evaluate(model, test_loader)
    print(f"LeNet-5 dense: {100 * dense_accuracy:.2f}%; pruning {TARGET:.0%} from step {begin} to {end} "
          f"(every {frequency} steps; {steps_per_epoch} steps per epoch)")

    schedule = Polynomial(initial=0.0, final=TARGET, begin_step=begin, end_step=end, frequency=frequency)
    pruner = prunekit.Pruner(model, "magnitude", schedule=schedule)  # layer scope, as prune_low_magnitude
    train(model, loader, epochs=6, lr=1e-3, lr_schedule="constant", seed=0, progress=False,
          callbacks=[PrunerCallback(pruner)])  # the role of Keras' UpdatePruningStep
    pruner.finalize()  # strip_pruning: plain weights holding the zeros
    weights = [module.weight for module in model.modules() if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((weight == 0).sum()) for weight in weights) / sum(weight.numel() for weight in weights)
    accuracy = evaluate(model, test_loader)
    print(f"after the schedule and retraining: {100 * accuracy:.2f}% ({100 * (dense_accuracy - accuracy):+.2f} pt "
          f"drop), weight sparsity {zeros:.2%}, pruner says {pruner.sparsity}")


if __name__ == "__main__":
    main()
