"""Finding the blocks a model can lose: by structure, by the config, and by running it once.

A block is offered when skipping it keeps every shape by construction:

* ``"residual"``: a module with a ``shortcut`` / ``downsample`` attribute that is None,
  ``nn.Identity`` or an empty ``nn.Sequential`` (prunekit's zoo and torchvision's ResNets);
* ``"transformer"``: an ``nn.TransformerEncoderLayer``;
* ``"counted"``: a layer of a list the model's config counts (``config.num_hidden_layers``,
  ``config.depths[i]``; see :mod:`prunekit.graph.stacks`), unless it is built differently
  from the layers that would take its place;
* ``"found"`` (needs example inputs): a composite module that ran once, kept its input's shape
  and returns its input when all its parameters are zero, i.e. ``f(x) + x`` with a branch that
  ends in a weight, a norm or a scale (MobileNetV2's and EfficientNet's inverted residuals,
  MONAI's ResBlock, pre-norm transformer blocks); see ``_choose_nested`` for nested ones.

With example inputs every block must also have run exactly once with an output shaped like its
input. ``BlockSearch.refused`` says, per module that looked like a block, why it is not one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from prunekit.errors import PrunekitError, unknown_name
from prunekit.graph.probe import ModuleRun, probe_modules
from prunekit.graph.stacks import CountedStack, counted_stacks, layer_structure

SHORTCUT_ATTRS = ("shortcut", "downsample")


@dataclass(frozen=True)
class Block:
    """A removable block. `stack` is the list it is deleted from (None: a ``SkippedBlock`` takes
    its place); `counted` the config-counted list it belongs to; `encoder` the
    ``nn.TransformerEncoder`` whose ``num_layers`` counts it; `zeroed_identity`: running it
    with all its parameters zero returned its input (seen on the example inputs)."""

    name: str
    kind: str
    stack: nn.Module | None = None
    counted: CountedStack | None = None
    encoder: nn.TransformerEncoder | None = None
    zeroed_identity: bool = False

    @property
    def index(self) -> int:
        return int(self.name.rpartition(".")[2])


@dataclass
class BlockSearch:
    """The blocks of a model in module order, and why look-alikes were refused; `probed` is True
    when the model was run on example inputs."""

    blocks: dict[str, Block] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    probed: bool = False


def identity_shortcut(module: nn.Module) -> bool:
    """True for a module whose ``shortcut`` / ``downsample`` attribute is the identity.

    >>> block = nn.Module()
    >>> block.downsample = None
    >>> identity_shortcut(block), identity_shortcut(nn.Linear(2, 2))
    (True, False)
    """
    for attr in SHORTCUT_ATTRS:
        if hasattr(module, attr):
            shortcut = getattr(module, attr)
            empty = isinstance(shortcut, nn.Sequential) and len(shortcut) == 0
            return shortcut is None or isinstance(shortcut, nn.Identity) or empty
    return False


def _inside(name: str, owners: set[str]) -> bool:
    return any(name.startswith(owner + ".") for owner in owners)


def _counted_blocks(model: nn.Module, search: BlockSearch) -> set[str]:
    """Add the layers of config-counted lists; returns every layer's name (removable or not)."""
    layers = set()
    for stack_name, stack in counted_stacks(model).items():
        for index in range(len(stack.container)):
            name = f"{stack_name}.{index}" if stack_name else str(index)
            layers.add(name)
            if index in stack.refusals:
                search.refused[name] = stack.refusals[index]
            else:
                search.blocks[name] = Block(name, "counted", stack.container, counted=stack)
    return layers


def _structural_blocks(model: nn.Module, search: BlockSearch, layers: set[str]) -> None:
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not name or name in layers or _inside(name, layers):
            continue
        parent_name = name.rpartition(".")[0]
        parent = modules[parent_name]
        owner = modules[parent_name.rpartition(".")[0]] if parent_name else None
        if isinstance(module, nn.TransformerEncoderLayer):
            in_encoder = isinstance(owner, nn.TransformerEncoder) and owner.layers is parent
            search.blocks[name] = Block(name, "transformer", parent if in_encoder else None,
                                        encoder=owner if in_encoder else None)
        elif identity_shortcut(module):
            search.blocks[name] = Block(name, "residual")


def _run_problem(block: Block, run: ModuleRun) -> str | None:
    if run.calls != 1:
        return f"it ran {run.calls} times on the example inputs (a removable block runs exactly once)"
    if not run.keeps_shape:
        return "its output is not shaped like its input on the example inputs, so skipping it breaks shapes"
    if block.kind == "residual" and not run.identity_when_zeroed:
        return ("with its parameters zero it does not return its input, so its shortcut / downsample "
                "attribute does not mark a residual block f(x) + x")
    return None


def _repeated(model: nn.Module, name: str, run: ModuleRun) -> bool:
    parent = model.get_submodule(name.rpartition(".")[0]) if name else None
    has_params = next(model.get_submodule(name).parameters(), None) is not None
    return run.calls > 1 and run.keeps_shape and has_params and isinstance(parent, (nn.ModuleList, nn.Sequential))


def _found_blocks(model: nn.Module, search: BlockSearch, runs: dict[str, ModuleRun], owners: set[str]) -> None:
    for name, run in runs.items():
        if not name or name in search.blocks or name in search.refused or _inside(name, owners):
            continue
        if _repeated(model, name, run) and not _inside(name, set(search.refused)):
            search.refused[name] = (
                f"it runs {run.calls} times in one forward: its weights are shared across depth (as in "
                "ALBERT), so removing it would remove every repetition; prunekit removes modules, not "
                "repetitions (fewer repetitions save compute, not parameters): lower the count the model "
                "loops over yourself (ALBERT: config.num_hidden_layers)")
        elif run.calls == 1 and run.keeps_shape and run.identity_when_zeroed:
            if run.returns_tensor:
                search.blocks[name] = Block(name, "found", zeroed_identity=True)
            else:
                search.refused[name] = (
                    "it returns a tuple, so a pass-through cannot stand in its place, and it is not in a "
                    "layer list the model's config counts (where it would be deleted)")


def _param_count(model: nn.Module, name: str) -> int:
    return sum(1 for _ in model.get_submodule(name).parameters())


def _choose_nested(model: nn.Module, search: BlockSearch, owners: set[str]) -> None:
    """Of nested found / residual blocks keep one unit per place: a module holding two or more
    blocks is a stage (keep the blocks); a wrapper whose parameters all sit in the one block it
    holds gives way to that block; a block whose one inner look-alike is only part of it (an
    inverted residual's projection that adds the input back) is kept whole."""
    nestable = [name for name, block in search.blocks.items() if block.kind in ("found", "residual")]
    layers = owners | {name for name in search.blocks if name not in nestable}
    for name in nestable:  # a stage holding transformer or config-counted layers
        if any(layer.startswith(name + ".") for layer in layers):
            del search.blocks[name]
    nestable = [name for name in nestable if name in search.blocks]

    def outermost(names: list[str]) -> list[str]:
        return [name for name in names if not any(name.startswith(other + ".") for other in names)]

    def choose(name: str) -> None:
        inner = outermost([other for other in nestable if other.startswith(name + ".")])
        if len(inner) >= 2 or (inner and _param_count(model, name) == _param_count(model, inner[0])):
            del search.blocks[name]
            for other in inner:
                choose(other)
        else:
            for other in nestable:
                if other.startswith(name + ".") and other in search.blocks:
                    del search.blocks[other]

    for name in outermost(nestable):
        choose(name)


def search_blocks(model: nn.Module, example_inputs: object = None) -> BlockSearch:
    """The removable blocks of `model` (see the module docstring); `example_inputs` (what the
    model is called with) let it run the model once to check shapes and find residual blocks.

    >>> from prunekit.zoo import build_model
    >>> import torch
    >>> search = search_blocks(build_model("resnet20", (3, 8, 8), 10), torch.randn(2, 3, 8, 8))
    >>> list(search.blocks)[:3], search.probed
    (['layer1.0', 'layer1.1', 'layer1.2'], True)
    """
    search = BlockSearch()
    layers = _counted_blocks(model, search)
    _structural_blocks(model, search, layers)
    if example_inputs is None:
        for name, block in list(search.blocks.items()):
            if block.kind == "counted" and block.index not in block.counted.twins:
                search.refused[name] = ("no other layer of its list is built like it (a stage, not a repeated "
                                        "layer?); pass example_inputs to check that it keeps its input's shape")
                del search.blocks[name]
        _choose_nested(model, search, layers)
        return search
    runs = probe_modules(model, example_inputs)
    search.probed = True
    for name, block in list(search.blocks.items()):
        problem = _run_problem(block, runs[name])
        if problem:
            search.refused[name] = problem
            del search.blocks[name]
        elif runs[name].identity_when_zeroed:
            search.blocks[name] = Block(block.name, block.kind, block.stack, block.counted, block.encoder, True)
    owners = layers | {name for name, block in search.blocks.items() if block.kind == "transformer"}
    _found_blocks(model, search, runs, owners)
    order = {name: position for position, (name, _) in enumerate(model.named_modules())}
    search.blocks = dict(sorted(search.blocks.items(), key=lambda item: order[item[0]]))
    _choose_nested(model, search, owners)
    return search


def no_blocks_error(model: nn.Module, search: BlockSearch, hint: str = "") -> PrunekitError:
    """The error for a model without removable blocks, with the reasons of the look-alikes."""
    reasons = "".join(f"; '{name}' is not removable: {why}" for name, why in list(search.refused.items())[:3])
    run = "" if search.probed else "; pass example_inputs so prunekit can run the model and find residual blocks"
    return PrunekitError(
        f"granularity 'layer' needs removable blocks; {type(model).__name__} has none (prunekit removes "
        "identity-shortcut residual blocks f(x) + x, transformer layers and the layers of a list the "
        f"model's config counts){reasons}{run}{hint}")


def _not_removable(model: nn.Module, name: str, search: BlockSearch) -> PrunekitError:
    module = dict(model.named_modules()).get(name)
    if module is None or not name:
        return unknown_name("removable layer", str(name), search.blocks)
    if name in search.refused:
        why = search.refused[name]
    elif any(getattr(module, attr, None) is not None for attr in SHORTCUT_ATTRS):
        why = "its shortcut is not the identity (a projection changes the shape)"
    elif not search.probed:
        why = ("it is not a block prunekit recognises without running the model; pass example_inputs to "
               "find residual blocks by running it")
    else:
        why = "it is not a residual block f(x) + x that keeps its input's shape nor a transformer layer"
    return PrunekitError(f"'{name}' cannot be removed: {why}; removable blocks: {', '.join(search.blocks)}")


def _search_for(model: nn.Module, names: list[str], example_inputs: object) -> BlockSearch:
    search = search_blocks(model)  # by structure first: no forward pass when that suffices
    if example_inputs is None or all(name in search.blocks for name in names):
        return search
    return search_blocks(model, example_inputs)


def _twin_stays(model: nn.Module, chosen: list[str]) -> bool:
    """Whether a list keeps a layer built like one of the `chosen` blocks it holds (GPT-2 scaled
    by layer index offers only its last layer, but the others stay)."""
    for name in chosen:
        parent_name = name.rpartition(".")[0]
        shapes = layer_structure(model.get_submodule(name))
        for child, module in model.get_submodule(parent_name).named_children():
            sibling = f"{parent_name}.{child}" if parent_name else child
            if sibling not in chosen and layer_structure(module) == shapes:
                return True
    return False


def resolve_blocks(model: nn.Module, names, example_inputs: object = None, leaves_some: bool = True,
                   search: BlockSearch | None = None) -> list[Block]:
    """The blocks `names` refers to, after checking that every name is a removable block and
    (with `leaves_some`) that removing them all leaves a model: not every block, no layer list
    emptied. A `search` already made for `model` is used as it is.

    >>> from prunekit.zoo import build_model
    >>> [block.kind for block in resolve_blocks(build_model("resnet20", (3, 8, 8), 10), ["layer1.1"])]
    ['residual']
    """
    chosen = list(dict.fromkeys([names] if isinstance(names, str) else names))
    search = search or _search_for(model, chosen, example_inputs)
    if not search.blocks:
        raise no_blocks_error(model, search)
    for name in chosen:
        if name not in search.blocks:
            raise _not_removable(model, name, search)
    if not chosen:
        raise PrunekitError("no layer names given; pass names from find_layer_candidates(model)")
    if not leaves_some:
        return [search.blocks[name] for name in chosen]
    if len(chosen) == len(search.blocks) and not _twin_stays(model, chosen):
        raise PrunekitError(
            f"removing all {len(search.blocks)} removable blocks would leave only the stem and the head; "
            "keep at least one")
    blocks = [search.blocks[name] for name in chosen]
    for block in blocks:
        if block.stack is not None and sum(other.stack is block.stack for other in blocks) == len(block.stack):
            raise PrunekitError(
                f"removing every layer of the list holding '{block.name}' leaves an empty stack; keep at "
                "least one of its layers")
    return blocks
