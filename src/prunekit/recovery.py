"""How accuracy comes back: distillation from the dense model, and the schedules the harness and
the command line build for a training budget.

``Distillation(teacher)`` is a ``loss_fn`` for :func:`prunekit.training.train`: the sparse
student learns from the dense teacher's softened outputs as well as from the labels (Hinton et
al. 2015), the seed's co-training of the full and the sparse model. ``schedule_for(name, ...)``
turns a schedule name (``--schedule agp``) into a schedule that fits inside the fine-tuning
budget, so every schedule gets the same total training: pruning steps count toward it.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.callbacks import TrainCallback
from prunekit.errors import PrunekitError, unknown_name
from prunekit.pruner import Pruner
from prunekit.schedules import GradientThreshold, Iterative, OneShot, Polynomial, Schedule
from prunekit.state import preserved_modes

#: the names ``prunekit compare --schedule`` accepts ("lottery" trains from the initialisation)
SCHEDULE_NAMES = ("oneshot", "iterative", "agp", "gradient", "lottery")

#: the share of the budget during which gradual schedules prune; the rest recovers at the target
#: (LeNet-300-100 at 95%, 10 epochs at lr 5e-3, 3 seeds: agp with 0.5 lost 0.77 pt, with 0.25 0.50)
PRUNING_SHARE = 0.25

#: Fine-tuning restarts the model's recipe (optimiser, cosine decay, augmentation) at its
#: training learning rate times this factor. Measured on MNIST-5k (test drop, 3 seeds unless
#: noted): LeNet-300-100 global magnitude 95% after 10 epochs: x0.3 6.37 pt, x1 1.67, x3 0.63,
#: x5 0.53, x7 0.50, x10 0.47; LeNet-5 layer magnitude 90%, 2 epochs, seed 0: x0.3 17.6, x1 4.3,
#: x3 2.8, x5 2.1; LSTM 50% units, 2 epochs, seed 0: x0.3 6.1, x1 2.4, x3 2.0; ResNet-20 (batch
#: norm) 50% channels, 2 epochs, seed 0: x0.3 1.1, x1 0.9, x3 1.7. Models not listed use x1.
FINETUNE_LR_FACTORS = MappingProxyType({"lenet300": 10.0, "lenet5": 5.0, "lstm": 3.0})


def finetune_lr(model_name: str, training_lr: float) -> float:
    """The default fine-tuning learning rate of a zoo model whose recipe trains at `training_lr`.

    >>> finetune_lr("lenet300", 1e-3), finetune_lr("resnet20", 2e-3)
    (0.01, 0.002)
    """
    return training_lr * FINETUNE_LR_FACTORS.get(model_name, 1.0)


#: the number of pruning rounds of "iterative" in the harness
ROUNDS = 3
#: pruning events of a gradual schedule inside its share of the budget
GRADUAL_EVENTS = 20


class Distillation:
    """Loss of a student learning from a dense `teacher`: ``alpha`` x the KL divergence between
    the teacher's and the student's outputs softened by `temperature` (scaled by T^2 so its
    gradients keep their size, Hinton et al. 2015) + ``(1 - alpha)`` x cross-entropy on the labels.

    Pass it as ``train(..., loss_fn=Distillation(teacher))``; the teacher runs in eval mode
    without gradients and must be a separate copy (e.g. ``copy.deepcopy(model)`` before pruning).

    >>> teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    >>> loss = Distillation(teacher, temperature=2.0, alpha=0.5)(student, torch.ones(2, 4), torch.tensor([0, 1]))
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    >>> import copy
    >>> twin = copy.deepcopy(teacher)  # a student equal to its teacher has nothing left to learn from it
    >>> Distillation(teacher, alpha=1.0)(twin, torch.ones(2, 4), torch.tensor([0, 1])).item()
    0.0
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5) -> None:
        if not isinstance(teacher, nn.Module):
            raise PrunekitError(f"Distillation needs the dense teacher model (an nn.Module), got {type(teacher).__name__}")
        if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
                and math.isfinite(temperature) and temperature > 0):
            raise PrunekitError(f"temperature must be a number > 0 (1 = the plain softmax; 2 to 8 are usual), "
                                f"got {temperature!r}")
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 <= alpha <= 1.0):
            raise PrunekitError(f"alpha is the weight of the teacher's soft targets against the labels: a number in "
                                f"[0, 1], got {alpha!r}")
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def __call__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if model is self.teacher:
            raise PrunekitError("the student is the teacher itself; give Distillation a copy of the dense model "
                                "taken before pruning (copy.deepcopy(model))")
        outputs = model(inputs)
        with torch.no_grad(), preserved_modes(self.teacher):
            self.teacher.eval()
            teacher_outputs = self.teacher(inputs)
        loss = F.cross_entropy(outputs, targets) if self.alpha < 1.0 else outputs.new_zeros(())
        if self.alpha > 0.0:
            t = self.temperature
            soft = F.kl_div(F.log_softmax(outputs / t, dim=-1), F.log_softmax(teacher_outputs / t, dim=-1),
                            log_target=True, reduction="batchmean") * (t * t)
            loss = self.alpha * soft + (1.0 - self.alpha) * loss
        return loss


def schedule_for(name: str, total_steps: int, pruning_share: float = PRUNING_SHARE, rounds: int = ROUNDS) -> Schedule:
    """The schedule `name` fitted into a fine-tuning budget of `total_steps` optimiser steps:
    gradual schedules prune during the first `pruning_share` of it and recover during the rest;
    ``"iterative"`` prunes `rounds` times, evenly spread over that share. (``"lottery"`` retrains
    from the initialisation and is built by ``prunekit.lottery``.)

    >>> schedule_for("agp", 1000)
    Polynomial(initial=0.0, final=None, begin_step=0, end_step=250, frequency=12, power=3.0, threshold=None)
    >>> schedule_for("iterative", 1000)
    Iterative(levels=3, every=125, start=0)
    """
    if name not in SCHEDULE_NAMES:
        raise unknown_name("schedule", name, SCHEDULE_NAMES)
    if not isinstance(total_steps, int) or total_steps < 1:
        raise PrunekitError(f"schedule '{name}' needs a training budget of at least one step; got {total_steps!r} "
                            "(give --finetune-epochs >= 1)")
    end = max(0, int(total_steps * pruning_share))
    if name == "oneshot":
        return OneShot()
    if name == "iterative":
        return Iterative(levels=rounds, every=max(1, end // (rounds - 1)) if rounds > 1 else 1)
    frequency = max(1, end // GRADUAL_EVENTS)
    if name == "agp":
        return Polynomial(initial=0.0, final=None, begin_step=0, end_step=end, frequency=frequency)
    if name == "gradient":
        return GradientThreshold(theta=None, begin_step=0, end_step=end, frequency=frequency)
    raise PrunekitError("schedule 'lottery' retrains from the initialisation; the harness runs it with "
                        "prunekit.lottery, not inside a fine-tuning budget")


class PruningWatch(TrainCallback):
    """Rides along a fine-tuning run after the Pruners' own callbacks: adds up the time their
    prunings took and, once every Pruner's schedule has finished, measures `measure()` (e.g.
    test accuracy) right after that last pruning, before the training that follows it.

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from prunekit.callbacks import PrunerCallback
    >>> from prunekit.pruner import Pruner
    >>> from prunekit.training import train
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> pruner = Pruner(model, "magnitude", 0.5, schedule=Iterative(levels=2, every=1))
    >>> watch = PruningWatch([pruner], lambda: "measured")
    >>> data = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.int64)), batch_size=2)
    >>> _ = train(model, data, 1, progress=False, callbacks=[PrunerCallback(pruner), watch])
    >>> watch.measured, watch.prunings
    ('measured', 2)
    """

    def __init__(self, pruners: list[Pruner], measure) -> None:
        self.pruners = list(pruners)
        self.measure = measure
        self.measured = None
        self.seconds = 0.0
        self.prunings = 0
        self._seen: dict[int, object] = {id(pruner): pruner.last_result for pruner in self.pruners}

    def on_step(self, step: int) -> None:
        for pruner in self.pruners:
            result = pruner.last_result
            if result is not None and result is not self._seen[id(pruner)]:
                self._seen[id(pruner)] = result
                self.seconds += result.seconds
                self.prunings += 1
                if self.measured is None and all(p.done for p in self.pruners):
                    self.measured = self.measure()
