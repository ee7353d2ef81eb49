"""Input feature norms: for each pruned weight, ‖X_j‖₂ of every input feature j of its layer over
all calibration observations (Wanda, Sun et al. 2023: a weight matters as much as |w| times the
size of the input it multiplies).

Forward passes only (no labels, no gradients): each batch is run through the model while
pre-forward hooks read the inputs of the layers; the hooks are removed on exit, also on error.
The layer's handler (``prunekit.layers``) turns its input into rows of input features, so a
``Conv1D``'s transposed weight needs nothing here. Every observation counts: for a transformer,
every token of every sequence, padding included (pass batches without padding to leave it out).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.distributed import all_reduce_sum
from prunekit.errors import PrunekitError
from prunekit.inputs import call_model
from prunekit.layers import handler_for, require_input_width
from prunekit.masking import split_name
from prunekit.stats.loop import for_each_batch, module_hooks


@dataclass(frozen=True)
class FeatureNorms:
    """‖X_j‖₂ of each input feature j of a layer (`norms`, one per input feature) over the
    `observations` rows (tokens, samples) its input had on the calibration data."""

    norms: torch.Tensor
    observations: int


def _layer_widths(model: nn.Module, names: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """``{module name: [weight names]}`` and each module's input width, after checking that every
    layer can say what its input features are."""
    layers: dict[str, list[str]] = {}
    widths: dict[str, int] = {}
    for name in names:
        module_name = split_name(name)[0]
        layers.setdefault(module_name, []).append(name)
        widths[module_name] = require_input_width(model.get_submodule(module_name), name)
    return layers, widths


@contextmanager
def _squared_sums(model: nn.Module, widths: dict[str, int]) -> Iterator[dict[str, dict]]:
    """While the block runs, ``{module name: {"sums": sum over rows of x_j², "rows": rows}}`` of
    every call's input (float64)."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else None
    totals = {name: {"sums": torch.zeros(width, dtype=torch.float64, device=device), "rows": 0}
              for name, width in widths.items()}

    def hook_for(name: str):
        def hook(module, args):
            features = handler_for(module).input_features(module, args)
            if features is not None:
                totals[name]["sums"] += features.detach().double().pow(2).sum(dim=0)
                totals[name]["rows"] += features.shape[0]
        return hook

    with module_hooks(model, {name: hook_for(name) for name in totals}, pre=True):
        yield totals


def collect_input_norms(model: nn.Module, data: Iterable, names: Sequence[str],
                        num_batches: int = 8) -> dict[str, FeatureNorms]:
    """For each weight in `names`, ‖X_j‖₂ over every observation of its layer's input feature j
    in up to `num_batches` batches of `data` (batches: ``(inputs, targets)`` or a dict of keyword
    inputs such as a tokenizer's output; targets are not used). Under ``torch.distributed`` the
    sums of squares of every rank are added before the square root.

    >>> layer = nn.Linear(2, 1)
    >>> x = torch.tensor([[3.0, 1.0], [4.0, 0.0]])
    >>> collect_input_norms(layer, [(x, None)], ["weight"])["weight"].norms
    tensor([5., 1.])
    """
    layers, widths = _layer_widths(model, names)

    def run(inputs, targets) -> None:
        with torch.no_grad():
            call_model(model, inputs)

    with _squared_sums(model, widths) as totals:
        for_each_batch(model, data, num_batches, run)
    totals = all_reduce_sum(totals)
    silent = [name for name, seen in totals.items() if seen["rows"] == 0]
    if silent:
        raise PrunekitError(
            f"layer '{silent[0]}' saw no input on the calibration data (the model never called it, or called it "
            "functionally); leave it out with exclude=[...] or check the data"
        )
    return {name: FeatureNorms(totals[module]["sums"].sqrt().float().cpu(), int(totals[module]["rows"]))
            for module, weights in layers.items() for name in weights}
