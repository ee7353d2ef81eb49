"""PyTorch Lightning: ``PrunekitLightningCallback`` drives a Pruner from ``Trainer.fit``.

Needs ``lightning`` (``pip install prunekit[lightning]``). Build the Pruner on the model before
``fit`` (its masks attach by parametrization, so Lightning's optimizer keeps the parameter
objects), pass the callback, and add the penalty in ``training_step`` (a callback cannot change
the loss)::

    pruner = prunekit.Pruner(net, "magnitude", 0.8, schedule=Polynomial(end_step=100, frequency=10))
    module = MyModule(net, pruner)       # training_step: return task_loss + self.pruner.penalty()
    trainer = lightning.pytorch.Trainer(callbacks=[PrunekitLightningCallback(pruner)])
    trainer.fit(module, loader)

``pruner.step()`` runs once per optimizer step (so gradient accumulation counts optimizer steps,
not batches). The Pruner's state rides in every Lightning checkpoint: resume with
``Trainer(callbacks=[PrunekitLightningCallback(new_pruner)]).fit(module, ckpt_path=...)`` on a
fresh model. In the checkpoint's ``state_dict`` each masked weight is stored plain, as its
pruned value, so the checkpoint also loads into the plain model without prunekit.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.integrations._common import checked_pruner, require
from prunekit.masking import KeepMask
from prunekit.pruner import Pruner

_pl = require("lightning.pytorch", "lightning")


class PrunekitLightningCallback(_pl.Callback):
    """Steps `pruner` after each optimizer step of ``Trainer.fit``; ``finalize=True`` calls
    ``pruner.finalize()`` when fit ends (units removed, masks baked in).

    >>> import prunekit
    >>> pruner = prunekit.Pruner(nn.Linear(4, 2), "magnitude", 0.5)
    >>> PrunekitLightningCallback(pruner).state_key
    'PrunekitLightningCallback'
    """

    def __init__(self, pruner: Pruner, finalize: bool = False) -> None:
        self.pruner = checked_pruner(pruner, "PrunekitLightningCallback")
        self.finalize = bool(finalize)
        self._seen_global_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._seen_global_step = trainer.global_step  # a resumed run starts from the restored count

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # global_step counts optimizer steps: with gradient accumulation some batches do not step
        while self._seen_global_step < trainer.global_step:
            self._seen_global_step += 1
            if not self.pruner.finalized:
                self.pruner.step()

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.finalize and not self.pruner.finalized:
            self.pruner.finalize()

    def state_dict(self) -> dict:
        if self.pruner.finalized:
            return {}
        return {"pruner": self.pruner.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("pruner") is not None:
            self.pruner.load_state_dict(state_dict["pruner"])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if "state_dict" in checkpoint:
            checkpoint["state_dict"] = plain_state_dict(pl_module, checkpoint["state_dict"])


def plain_state_dict(module: nn.Module, state: dict) -> dict:
    """`state` (``module.state_dict()``) with each prunekit-masked weight stored plain, as its pruned
    value (``original * keep``): it loads strictly into the model without masks, and the Pruner's
    own state puts the masks back. Weights with other parametrizations stay as they are.

    >>> import prunekit
    >>> net = nn.Sequential(nn.Linear(4, 4))
    >>> _ = prunekit.prune(net, "magnitude", 0.5)
    >>> plain = plain_state_dict(net, net.state_dict())
    >>> sorted(plain), int((plain["0.weight"] == 0).sum())
    (['0.bias', '0.weight'], 8)
    """
    state = dict(state)
    for module_name, child in module.named_modules():
        parametrizations = getattr(child, "parametrizations", None)
        if parametrizations is None:
            continue
        prefix = f"{module_name}." if module_name else ""
        for tensor_name, chain in parametrizations.items():
            if not all(isinstance(step, KeepMask) for step in chain):
                continue
            key = f"{prefix}parametrizations.{tensor_name}."
            if f"{key}original" not in state:
                continue
            keep = torch.ones_like(chain.original, dtype=torch.bool)
            for step in chain:
                keep &= step.effective_keep().to(keep.device)
            value = state[f"{key}original"] * keep
            for name in [name for name in state if name.startswith(key)]:
                del state[name]
            state[f"{prefix}{tensor_name}"] = value
    return state
