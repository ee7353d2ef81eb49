"""Whole blocks as units: residual blocks and transformer layers that can be skipped.

Pipeline position: ``find_layer_candidates`` lists the units (blocks, by dotted name; what is
recognised is in :mod:`prunekit.graph.blocks`); ``score_layers`` is a data-driven criterion
(quality lost when one block is skipped); ``layer_masks`` is the masked equivalent where one
exists (:mod:`prunekit.graph.block_masks`); ``remove_layers`` removes blocks and returns a
``ShrinkRecord`` that ``prunekit.graph.replay`` applies to a fresh model.

Removal: a layer of a list the model's config counts is deleted from the list, the count is
lowered (``config.num_hidden_layers``, ``n_layer``, ``depths[i]``) and the layers that move up
take the bookkeeping attributes of their new place (``layer_idx``), so a Hugging Face model still
saves and reloads with plain ``save_pretrained`` / ``from_pretrained`` (layers whose removal would
change what a moving layer computes, like Swin's alternating window shift, are not offered); a layer of an
``nn.TransformerEncoder`` is deleted and ``num_layers`` lowered; any other block becomes a
``SkippedBlock`` (an ``nn.Identity`` that ignores extra arguments).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph.block_masks import block_mask_params, layer_masks, masked_equivalent
from prunekit.graph.blocks import Block, BlockSearch, no_blocks_error, resolve_blocks, search_blocks
from prunekit.graph.probe import naming_failures
from prunekit.graph.record import ShrinkRecord, step_keep_mask
from prunekit.graph.stacks import counted_changes
from prunekit.inputs import as_call
from prunekit.state import preserved_state

__all__ = [
    "GRANULARITY", "BlockSearch", "SkippedBlock", "block_mask_params", "find_layer_candidates", "layer_masks",
    "layers_removed", "masked_equivalent", "no_blocks_error", "remove_layers", "replay_layer_round",
    "score_layers", "search_blocks",
]  # fmt: skip

GRANULARITY = "layer"
Undo = list[Callable[[], None]]


class SkippedBlock(nn.Identity):
    """Stands where a removed block was: returns its first argument, ignores the rest.

    >>> SkippedBlock("BasicBlock")(torch.ones(2), mask=None)
    tensor([1., 1.])
    """

    def __init__(self, removed: str = "") -> None:
        super().__init__()
        self.removed = removed

    def forward(self, hidden, *args, **kwargs):  # noqa: ARG002 - the removed block's signature
        return hidden

    def extra_repr(self) -> str:
        return f"removed {self.removed}" if self.removed else ""


def find_layer_candidates(model: nn.Module, example_inputs=None) -> list[str]:
    """Dotted names of the blocks that can be removed without breaking shapes, in module order.

    See :mod:`prunekit.graph.blocks` for what is recognised. With `example_inputs` (what the
    model is called with) the model is also run once: blocks that did not run exactly once with
    an output shaped like their input are dropped, and residual blocks ``f(x) + x`` are found by
    their forward (a failing forward raises a ``PrunekitError`` naming the failing module).

    >>> from prunekit.zoo import build_model
    >>> find_layer_candidates(build_model("resnet20", (3, 8, 8), 10))[:4]
    ['layer1.0', 'layer1.1', 'layer1.2', 'layer2.1']
    """
    return list(search_blocks(model, example_inputs).blocks)


def _set(target: object, attr: str, value: object, undo: Undo) -> None:
    old = getattr(target, attr)
    setattr(target, attr, value)
    undo.append(lambda: setattr(target, attr, old))


def _renumber(stack: nn.Module, undo: Undo) -> None:
    for index, layer in enumerate(stack):
        for module in layer.modules():
            old = getattr(module, "layer_idx", None)
            if isinstance(old, int) and old != index:
                _set(module, "layer_idx", index, undo)


def _delete_from_lists(model: nn.Module, blocks: list[Block], undo: Undo) -> None:
    counted = {}
    for block in blocks:
        if block.kind == "counted":
            counted.setdefault(block.name.rpartition(".")[0], (block.counted, []))[1].append(block.index)
    changes = counted_changes(model, counted) if counted else []  # raises before anything changes
    for target, attr, value in changes:
        _set(target, attr, value, undo)
    for stack in {id(b.stack): b.stack for b in blocks if b.stack is not None}.values():
        saved = dict(stack._modules)
        for index in sorted((b.index for b in blocks if b.stack is stack), reverse=True):
            del stack[index]  # later indices first: earlier ones stay valid
        undo.append(lambda stack=stack, saved=saved: (stack._modules.clear(), stack._modules.update(saved)))
        first = next(b for b in blocks if b.stack is stack)
        if first.encoder is not None:
            _set(first.encoder, "num_layers", len(stack), undo)
        if first.counted is not None and not first.counted.fresh:
            _renumber(stack, undo)


def _remove(model: nn.Module, blocks: list[Block]) -> Undo:
    """Remove `blocks` from `model`; returns the steps that undo it, to run in reverse order."""
    undo: Undo = []
    try:
        for block in blocks:
            if block.stack is None:
                parent_name, _, child = block.name.rpartition(".")
                parent = model.get_submodule(parent_name)
                _set(parent, child, SkippedBlock(type(getattr(parent, child)).__name__), undo)
        _delete_from_lists(model, blocks, undo)
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    return undo


@contextlib.contextmanager
def layers_removed(model: nn.Module, names: Iterable[str], example_inputs: object = None):
    """Context manager: `model` without the named blocks inside, exactly as before afterwards.

    >>> from prunekit.zoo import build_model
    >>> model = build_model("resnet20", (3, 8, 8), 10)
    >>> with layers_removed(model, ["layer1.1"]):
    ...     type(model.layer1[1]).__name__
    'SkippedBlock'
    >>> type(model.layer1[1]).__name__
    'BasicBlock'
    """
    undo = _remove(model, resolve_blocks(model, names, example_inputs))
    try:
        yield model
    finally:
        for step in reversed(undo):
            step()


def score_layers(model: nn.Module, candidates: Iterable[str], eval_fn: Callable[[nn.Module], float],
                 example_inputs: object = None) -> dict[str, float]:
    """Cost of removing each candidate alone: ``eval_fn(model) - eval_fn(model without it)``.

    `eval_fn` returns a quality number, higher is better (e.g. validation accuracy). Each block
    is skipped temporarily and put back, so `model` ends exactly as it started. An error of the
    model while it is evaluated becomes a ``PrunekitError`` naming the block and the failing module.

    >>> from prunekit.zoo import build_model
    >>> model, x = build_model("resnet20", (3, 8, 8), 10).eval(), torch.randn(4, 3, 8, 8)
    >>> dense = model(x).detach()
    >>> quality = lambda m: -float((m(x).detach() - dense).abs().mean())  # closeness to dense
    >>> scores = score_layers(model, ["layer1.1", "layer3.2"], quality)
    >>> sorted(scores), all(cost > 0 for cost in scores.values())
    (['layer1.1', 'layer3.2'], True)
    """
    candidates = list(dict.fromkeys([candidates] if isinstance(candidates, str) else candidates))
    search = search_blocks(model)
    if example_inputs is not None and not all(name in search.blocks for name in candidates):
        search = search_blocks(model, example_inputs)
    blocks = {}
    for name in candidates:  # validate every name before the first evaluation
        (blocks[name],) = resolve_blocks(model, [name], search=search)
    with naming_failures(model, "evaluating the model before removing blocks"):
        baseline = float(eval_fn(model))
    scores = {}
    for name in candidates:
        undo = _remove(model, [blocks[name]])
        try:
            with naming_failures(model, f"evaluating the model without block '{name}'"):
                scores[name] = baseline - float(eval_fn(model))
        finally:
            for step in reversed(undo):
                step()
    return scores


def _rehearse(model: nn.Module, blocks: list[Block], example_inputs: object) -> None:
    """Run the model without `blocks` once, then put them back: a failure changes nothing."""
    undo = _remove(model, blocks)
    try:
        with preserved_state(model), torch.no_grad():
            model.eval()
            names = ", ".join(f"'{block.name}'" for block in blocks)
            with naming_failures(model, f"running the model without {names}"):
                as_call(example_inputs)(model)
    finally:
        for step in reversed(undo):
            step()


def remove_layers(model: nn.Module, names: Iterable[str], example_inputs: object = None,
                  check: bool = True) -> ShrinkRecord:
    """Remove the named blocks from `model` in place; returns a ``ShrinkRecord`` for replay.

    Names come from ``find_layer_candidates`` and refer to the model as it is now; blocks found
    by running the model need the same `example_inputs`. Everything is validated first (with
    `example_inputs` and `check`, the model is also run once without the blocks); removing every
    candidate (or emptying a layer list) is refused. In the record each removed block is one step
    ``{"group": name, "granularity": "layer", "num_units": 1, "removed": [0]}``.

    >>> from prunekit.zoo import build_model
    >>> model = build_model("resnet20", (3, 8, 8), 10)
    >>> [step["group"] for step in remove_layers(model, ["layer1.1", "layer3.2"]).steps]
    ['layer1.1', 'layer3.2']
    >>> model(torch.zeros(1, 3, 8, 8)).shape
    torch.Size([1, 10])
    """
    blocks = resolve_blocks(model, names, example_inputs)
    if check and example_inputs is not None:
        _rehearse(model, blocks, example_inputs)
    _remove(model, blocks)
    return ShrinkRecord([
        {"round": 0, "group": block.name, "granularity": GRANULARITY, "num_units": 1, "removed": [0]}
        for block in blocks
    ])  # fmt: skip


def replay_layer_round(model: nn.Module, example_inputs: object, steps: list[dict], check: bool = True) -> None:
    """Replay one round of layer steps of a ``ShrinkRecord`` on a fresh model. Blocks found by
    running the model (not by their structure) need the `example_inputs` the record was made with.

    >>> from prunekit.zoo import build_model
    >>> model = build_model("resnet20", (3, 8, 8), 10)
    >>> record = remove_layers(model, ["layer2.2"])
    >>> fresh = build_model("resnet20", (3, 8, 8), 10)
    >>> replay_layer_round(fresh, None, record.steps)
    >>> fresh.load_state_dict(model.state_dict())
    <All keys matched successfully>
    """
    names = [step["group"] for step in steps]
    search = search_blocks(model)
    if example_inputs is not None and not all(name in search.blocks for name in names):
        search = search_blocks(model, example_inputs)
    for step in steps:
        try:
            keep = step_keep_mask(step, 1 if step["group"] in search.blocks else None)
        except PrunekitError as error:
            if example_inputs is not None:
                raise
            raise PrunekitError(f"{error} (blocks found by running the model need the example_inputs: "
                                "replay(model, example_inputs, record))") from error
        if bool(keep.any()):
            raise PrunekitError(f"layer step {step!r} removes nothing; a layer step removes unit 0")
    remove_layers(model, names, example_inputs, check)

