"""Hugging Face ``Trainer``: ``PrunekitTrainerCallback`` drives a Pruner from ``Trainer.train``.

Needs ``transformers`` (``pip install prunekit[transformers]``). Build the Pruner on the model
before the Trainer (its masks attach by parametrization, so the Trainer's optimizer keeps the
parameter objects). ``pruner.step()`` runs after every optimizer step (``on_step_end``, so
gradient accumulation counts optimizer steps). A callback cannot change the loss, so the
penalty (non-zero only with a ``regularizer``) goes in through the Trainer's own
``compute_loss_func`` argument::

    callback = PrunekitTrainerCallback(pruner)
    trainer = Trainer(model, args, train_dataset=data, callbacks=[callback],
                      compute_loss_func=callback.loss_with_penalty())
    trainer.train()

Each checkpoint the Trainer saves carries the Pruner: its ``state_dict()`` goes into the
checkpoint folder as ``prunekit_pruner.pt``. ``trainer.train(resume_from_checkpoint=...)`` with a
fresh model, a new Pruner of the same settings and a new callback puts masks, schedule position
and the masked weights back before the first step (the Trainer, loading the checkpoint into the
model before the masks are back, warns about missing and unexpected ``parametrizations`` keys;
the callback then loads those; a model that is not a transformers ``PreTrainedModel`` needs the
class attribute ``_keys_to_ignore_on_save = None``, which the Trainer reads on missing keys). The
checkpoint must be the Trainer's ``<args.output_dir>/checkpoint-<step>``; to resume from one
elsewhere, load its ``prunekit_pruner.pt`` into the Pruner before ``trainer.train`` (the Trainer
then finds the masks in place and loads every weight itself). Step the Pruner only through the
callback, not before ``trainer.train()``: masks reorder ``model.parameters()``, the Trainer builds
its optimizer from that order and loads a checkpoint's optimizer state by position, so a run whose
model was masked before its optimizer existed would not resume into a fresh, unmasked model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from prunekit.integrations._common import checked_pruner, require
from prunekit.integrations.hf_checkpoint import checkpoint_folder, resume_pruner, save_pruner_state
from prunekit.pruner import Pruner

_transformers = require("transformers", "transformers")


def classification_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy of ``outputs.logits`` against `labels` (-100 ignored), summed over the batch
    and divided by `num_items_in_batch` when the Trainer gives it (its convention for gradient
    accumulation), else the mean.

    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> round(float(classification_loss({"logits": logits}, torch.tensor([0, 1]))), 4)
    0.1269
    """
    logits = outputs["logits"]
    flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device)
    if num_items_in_batch is None:
        return F.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum")
    return total / torch.as_tensor(num_items_in_batch, device=total.device)


class PrunekitTrainerCallback(_transformers.TrainerCallback):
    """Steps `pruner` after each optimizer step of ``Trainer.train``; ``finalize=True`` calls
    ``pruner.finalize()`` when training ends (units removed, masks baked in). Writes the Pruner's
    state into each checkpoint the Trainer saves and, when ``train`` resumes from one, puts the
    Pruner and its masked weights back before the first step.

    >>> import prunekit
    >>> from torch import nn
    >>> callback = PrunekitTrainerCallback(prunekit.Pruner(nn.Linear(4, 2), "magnitude", 0.5))
    >>> callback.pruner.step_count
    0
    """

    def __init__(self, pruner: Pruner, finalize: bool = False) -> None:
        self.pruner = checked_pruner(pruner, "PrunekitTrainerCallback")
        self.finalize = bool(finalize)
        self._accumulation_steps = 1

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._accumulation_steps = max(int(args.gradient_accumulation_steps), 1)
        # the Trainer loaded the checkpoint's TrainerState before this event: a resumed run is past step 0
        if state.global_step > 0 and not self.pruner.finalized:
            trainer_model = self.pruner.model if model is None else model
            resume_pruner(self.pruner, trainer_model, checkpoint_folder(args.output_dir, state.global_step),
                          state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.pruner.finalized:
            self.pruner.step()

    def on_save(self, args, state, control, **kwargs):
        if args.should_save and not self.pruner.finalized:  # the process that writes the checkpoint
            save_pruner_state(self.pruner, checkpoint_folder(args.output_dir, state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        if self.finalize and not self.pruner.finalized:
            self.pruner.finalize()

    def loss_with_penalty(self, task_loss: Callable | None = None) -> Callable:
        """A ``compute_loss_func`` for the Trainer: ``task_loss(outputs, labels, num_items_in_batch)``
        (default :func:`classification_loss`) plus the Pruner's penalty, shared out over the
        micro-batches of one optimizer step (the Trainer does not rescale such a loss).

        >>> import prunekit
        >>> from torch import nn
        >>> callback = PrunekitTrainerCallback(prunekit.Pruner(nn.Linear(4, 2), "magnitude", 0.5))
        >>> loss_func = callback.loss_with_penalty()
        >>> float(loss_func({"logits": torch.zeros(2, 2)}, torch.tensor([0, 1])))  # no regularizer: 0 penalty
        0.6931471824645996
        """
        task_loss = classification_loss if task_loss is None else task_loss

        def compute_loss(outputs, labels, num_items_in_batch=None):
            loss = task_loss(outputs, labels, num_items_in_batch=num_items_in_batch)
            return loss + self.pruner.penalty() / self._accumulation_steps

        return compute_loss
