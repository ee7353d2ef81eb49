"""Whole blocks as units: residual blocks and transformer encoder layers that can be skipped.

Pipeline position: ``find_layer_candidates`` lists the units (blocks, by dotted name);
``score_layers`` is a data-driven criterion (quality lost when one block is skipped);
``layer_masks`` is the masked equivalent where one exists; ``remove_layers`` removes blocks and
returns a ``ShrinkRecord`` that ``prunekit.graph.replay`` applies to a fresh model.

Supported blocks (nothing else is offered):

* residual blocks with an identity shortcut: a module with a ``shortcut`` or ``downsample``
  attribute that is None, ``nn.Identity`` or an empty ``nn.Sequential`` (prunekit's zoo
  BasicBlock, torchvision's BasicBlock/Bottleneck without downsampling). Such a block computes
  ``f(x) + x``, so its output has its input's shape and skipping it keeps every shape.
* ``nn.TransformerEncoderLayer`` (in an ``nn.TransformerEncoder``, a ModuleList, a Sequential).
* Hugging Face encoder layers: the entries of the model's ``nn.ModuleList`` named ``layer`` or
  ``layers`` whose length is ``config.num_hidden_layers`` (BERT's ``encoder.layer``).

Removal: a block in a Sequential, ModuleList or attribute becomes a ``SkippedBlock`` (an
``nn.Identity`` that ignores extra arguments); layers of an ``nn.TransformerEncoder`` or a
Hugging Face encoder are deleted from their list, and ``num_layers`` /
``config.num_hidden_layers`` and every ``layer_idx`` attribute are renumbered, so a Hugging Face
model still saves and reloads with plain ``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.errors import PrunekitError, unknown_name
from prunekit.graph.record import ShrinkRecord, step_keep_mask
from prunekit.inputs import as_call
from prunekit.masking import named_effective_parameters

GRANULARITY = "layer"
_SHORTCUT_ATTRS = ("shortcut", "downsample")


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


@dataclass(frozen=True)
class _Block:
    """A removable block: `kind` is "residual", "transformer" or "hf-layer"; `stack` is the
    ModuleList it is deleted from (None: it is replaced by a SkippedBlock instead)."""

    name: str
    kind: str
    stack: nn.ModuleList | None
    counters: tuple[tuple[object, str], ...] = ()  # (object, attribute) holding the layer count


def _identity_shortcut(module: nn.Module) -> bool:
    for attr in _SHORTCUT_ATTRS:
        if hasattr(module, attr):
            shortcut = getattr(module, attr)
            empty = isinstance(shortcut, nn.Sequential) and len(shortcut) == 0
            return shortcut is None or isinstance(shortcut, nn.Identity) or empty
    return False


def _hf_stacks(model: nn.Module) -> dict[str, nn.ModuleList]:
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.rpartition(".")[2] in ("layer", "layers")
        and isinstance(count, int) and len(module) == count
    }  # fmt: skip


def _blocks(model: nn.Module) -> dict[str, _Block]:
    modules = dict(model.named_modules())
    blocks: dict[str, _Block] = {}
    for stack_name, stack in _hf_stacks(model).items():
        for index in range(len(stack)):
            name = f"{stack_name}.{index}" if stack_name else str(index)
            blocks[name] = _Block(name, "hf-layer", stack, ((model.config, "num_hidden_layers"),))
    for name, module in modules.items():
        if not name or name in blocks:
            continue
        parent_name = name.rpartition(".")[0]
        parent = modules[parent_name]
        owner = modules[parent_name.rpartition(".")[0]] if parent_name else None
        if isinstance(module, nn.TransformerEncoderLayer):
            in_encoder = isinstance(owner, nn.TransformerEncoder) and owner.layers is parent
            stack, counters = (parent, ((owner, "num_layers"),)) if in_encoder else (None, ())
            blocks[name] = _Block(name, "transformer", stack, counters)
        elif _identity_shortcut(module):
            blocks[name] = _Block(name, "residual", None)
    return blocks


def _shape_preserving(model: nn.Module, names: list[str], example_inputs) -> set[str]:
    """Names among `names` that ran exactly once on `example_inputs`, output shaped like input."""
    seen: dict[str, list[bool]] = {name: [] for name in names}

    def hook(name):
        def check(_module, args, output):
            same = bool(args) and isinstance(output, torch.Tensor) and args[0].shape == output.shape
            seen[name].append(same)

        return check

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            as_call(example_inputs)(model)
    finally:
        for handle in handles:
            handle.remove()
    return {name for name, calls in seen.items() if calls == [True]}


def find_layer_candidates(model: nn.Module, example_inputs=None) -> list[str]:
    """Dotted names of the blocks that can be removed without breaking shapes, in module order.

    See the module docstring for what is recognised. With `example_inputs` (what the model is
    called with) the model is also run once and blocks that did not run exactly once with an
    output shaped like their input are dropped.

    >>> from prunekit.zoo import build_model
    >>> find_layer_candidates(build_model("resnet20", (3, 8, 8), 10))[:4]
    ['layer1.0', 'layer1.1', 'layer1.2', 'layer2.1']
    """
    blocks = _blocks(model)
    names = [name for name, _ in model.named_modules() if name in blocks]
    if example_inputs is not None:
        keep = _shape_preserving(model, names, example_inputs)
        names = [name for name in names if name in keep]
    return names


def _not_removable(name: str, module: nn.Module | None, blocks: dict[str, _Block]) -> PrunekitError:
    if module is None:
        return unknown_name("removable layer", str(name), blocks)
    if any(getattr(module, attr, None) is not None for attr in _SHORTCUT_ATTRS):
        why = "its shortcut is not the identity (a projection changes the shape)"
    else:
        why = "it is not a residual block with an identity shortcut or a transformer encoder layer"
    return PrunekitError(
        f"'{name}' cannot be removed: {why}; removable blocks: {', '.join(blocks)}"
    )


def _resolve(model: nn.Module, names: Iterable[str]) -> list[_Block]:
    if isinstance(names, str):
        names = [names]
    blocks = _blocks(model)
    if not blocks:
        raise PrunekitError(
            f"granularity 'layer' needs removable blocks; {type(model).__name__} has none "
            "(prunekit removes identity-shortcut residual blocks, nn.TransformerEncoderLayer "
            "and Hugging Face encoder layers)"
        )
    chosen = list(dict.fromkeys(names))
    modules = dict(model.named_modules())
    for name in chosen:
        if name not in blocks:
            raise _not_removable(name, modules.get(name), blocks)
    if not chosen:
        raise PrunekitError("no layer names given; pass names from find_layer_candidates(model)")
    if len(chosen) == len(blocks):
        raise PrunekitError(
            f"removing all {len(blocks)} removable blocks would leave only the stem and the "
            "head; keep at least one"
        )
    for block in {id(b.stack): b for b in map(blocks.get, chosen) if b.stack is not None}.values():
        if sum(blocks[name].stack is block.stack for name in chosen) == len(block.stack):
            raise PrunekitError(
                f"removing every layer of the stack holding '{block.name}' leaves an empty "
                "encoder; keep at least one of its layers"
            )
    return [blocks[name] for name in chosen]


def _resolve_one(model: nn.Module, name: str) -> list[_Block]:
    blocks = _blocks(model)
    if name not in blocks:
        raise _not_removable(name, dict(model.named_modules()).get(name), blocks)
    return [blocks[name]]


def _renumber(stack: nn.ModuleList, undo: list[Callable[[], None]]) -> None:
    for index, layer in enumerate(stack):
        for module in layer.modules():
            old = getattr(module, "layer_idx", None)
            if isinstance(old, int) and old != index:
                module.layer_idx = index
                undo.append(lambda module=module, old=old: setattr(module, "layer_idx", old))


def _remove(model: nn.Module, blocks: list[_Block]) -> list[Callable[[], None]]:
    """Remove `blocks` from `model`; returns the steps that undo it, to run in reverse order."""
    undo: list[Callable[[], None]] = []
    for block in blocks:
        if block.stack is None:
            parent_name, _, child = block.name.rpartition(".")
            parent = model.get_submodule(parent_name)
            original = getattr(parent, child)
            setattr(parent, child, SkippedBlock(type(original).__name__))
            undo.append(lambda p=parent, c=child, o=original: setattr(p, c, o))
    stacks = {id(b.stack): b for b in blocks if b.stack is not None}
    for first in stacks.values():
        stack, saved = first.stack, dict(first.stack._modules)
        indices = [int(b.name.rpartition(".")[2]) for b in blocks if b.stack is stack]
        for index in sorted(indices, reverse=True):  # later indices first: earlier ones stay valid
            del stack[index]
        undo.append(lambda s=stack, saved=saved: (s._modules.clear(), s._modules.update(saved)))
        for owner, attr in first.counters:
            old = getattr(owner, attr)
            setattr(owner, attr, len(stack))
            undo.append(lambda owner=owner, attr=attr, old=old: setattr(owner, attr, old))
        _renumber(stack, undo)
    return undo


@contextlib.contextmanager
def layers_removed(model: nn.Module, names: Iterable[str]):
    """Context manager: `model` without the named blocks inside, exactly as before afterwards.

    >>> from prunekit.zoo import build_model
    >>> model = build_model("resnet20", (3, 8, 8), 10)
    >>> with layers_removed(model, ["layer1.1"]):
    ...     type(model.layer1[1]).__name__
    'SkippedBlock'
    >>> type(model.layer1[1]).__name__
    'BasicBlock'
    """
    undo = _remove(model, _resolve(model, names))
    try:
        yield model
    finally:
        for step in reversed(undo):
            step()


def score_layers(
    model: nn.Module, candidates: Iterable[str], eval_fn: Callable[[nn.Module], float]
) -> dict[str, float]:
    """Cost of removing each candidate alone: ``eval_fn(model) - eval_fn(model without it)``.

    `eval_fn` returns a quality number, higher is better (e.g. validation accuracy). Each block
    is skipped temporarily and put back, so `model` ends exactly as it started.

    >>> from prunekit.zoo import build_model
    >>> model, x = build_model("resnet20", (3, 8, 8), 10).eval(), torch.randn(4, 3, 8, 8)
    >>> dense = model(x).detach()
    >>> quality = lambda m: -float((m(x).detach() - dense).abs().mean())  # closeness to dense
    >>> scores = score_layers(model, ["layer1.1", "layer3.2"], quality)
    >>> sorted(scores), all(cost > 0 for cost in scores.values())
    (['layer1.1', 'layer3.2'], True)
    """
    candidates = list(dict.fromkeys([candidates] if isinstance(candidates, str) else candidates))
    for name in candidates:  # validate every name before the first evaluation
        _resolve(model, [name])
    baseline = float(eval_fn(model))
    scores = {}
    for name in candidates:
        with layers_removed(model, [name]):
            scores[name] = baseline - float(eval_fn(model))
    return scores


def remove_layers(model: nn.Module, names: Iterable[str]) -> ShrinkRecord:
    """Remove the named blocks from `model` in place; returns a ``ShrinkRecord`` for replay.

    Names come from ``find_layer_candidates`` and refer to the model as it is now. Everything is
    validated first; removing every candidate (or emptying a transformer stack) is refused. In
    the record each removed block is one step ``{"group": name, "granularity": "layer",
    "num_units": 1, "removed": [0]}``.

    >>> from prunekit.zoo import build_model
    >>> model = build_model("resnet20", (3, 8, 8), 10)
    >>> [step["group"] for step in remove_layers(model, ["layer1.1", "layer3.2"]).steps]
    ['layer1.1', 'layer3.2']
    >>> model(torch.zeros(1, 3, 8, 8)).shape
    torch.Size([1, 10])
    """
    blocks = _resolve(model, names)
    _remove(model, blocks)
    return ShrinkRecord([
        {"round": 0, "group": block.name, "granularity": GRANULARITY, "num_units": 1, "removed": [0]}
        for block in blocks
    ])  # fmt: skip


def replay_layer_round(model: nn.Module, example_inputs: object, steps: list[dict], check: bool = True) -> None:
    """Replay one round of layer steps of a ``ShrinkRecord`` (`example_inputs`, `check` unused).

    >>> from prunekit.zoo import build_model
    >>> model = build_model("resnet20", (3, 8, 8), 10)
    >>> record = remove_layers(model, ["layer2.2"])
    >>> fresh = build_model("resnet20", (3, 8, 8), 10)
    >>> replay_layer_round(fresh, None, record.steps)
    >>> fresh.load_state_dict(model.state_dict())
    <All keys matched successfully>
    """
    blocks = _blocks(model)
    for step in steps:
        keep = step_keep_mask(step, 1 if step["group"] in blocks else None)
        if bool(keep.any()):
            raise PrunekitError(f"layer step {step!r} removes nothing; a layer step removes unit 0")
    remove_layers(model, [step["group"] for step in steps])


def _residual_branch_norm(name: str, block: nn.Module) -> str:
    skip = tuple(f"{attr}." for attr in _SHORTCUT_ATTRS)
    norms = [
        sub_name
        for sub_name, module in block.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine
        and not any(sub_name.startswith(prefix) or sub_name == prefix[:-1] for prefix in skip)
    ]  # fmt: skip
    if not norms:
        raise PrunekitError(
            f"block '{name}' has no affine BatchNorm in its residual branch, so it has no masked "
            "equivalent; remove it with remove_layers instead"
        )
    return f"{name}.{norms[-1]}"


def block_mask_params(model: nn.Module, name: str) -> list[str]:
    """The parameters whose masking makes block `name` compute what removing it computes.

    Residual block: the residual branch's last BatchNorm (weight and bias), so the block returns
    ``relu(0 + x) = x`` for the non-negative (post-ReLU) inputs it receives in a ResNet.
    Pre-norm ``nn.TransformerEncoderLayer``: the attention output projection and the second
    feed-forward linear, so both residual branches add exactly zero. Post-norm layers (incl.
    BERT) have no masked equivalent: an error says so.

    >>> from prunekit.zoo import build_model
    >>> block_mask_params(build_model("resnet20", (3, 8, 8), 10), "layer1.1")
    ['layer1.1.bn2.weight', 'layer1.1.bn2.bias']
    """
    (block,) = _resolve_one(model, name)
    module = model.get_submodule(block.name)
    if block.kind == "residual":
        norm = _residual_branch_norm(block.name, module)
        return [f"{norm}.weight", f"{norm}.bias"]
    if block.kind == "transformer" and module.norm_first:
        params = []
        for linear in ("self_attn.out_proj", "linear2"):
            kinds = ["weight"] + ["bias"] * (module.get_submodule(linear).bias is not None)
            params += [f"{block.name}.{linear}.{kind}" for kind in kinds]
        return params
    raise PrunekitError(
        f"'{block.name}' is a post-norm transformer layer: masking cannot turn it into the "
        "identity, so it has no masked equivalent; use remove_layers"
    )


def layer_masks(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Keep-masks that make each named block compute what removing it computes (see
    :func:`block_mask_params`).

    >>> from prunekit.zoo import build_model
    >>> sorted(layer_masks(build_model("resnet20", (3, 8, 8), 10), ["layer1.1"]))
    ['layer1.1.bn2.bias', 'layer1.1.bn2.weight']
    """
    params = [param for block in _resolve(model, names) for param in block_mask_params(model, block.name)]
    shapes = {name: param.shape for name, param in named_effective_parameters(model)}
    return {param: torch.zeros(shapes[param], dtype=torch.bool) for param in params}
