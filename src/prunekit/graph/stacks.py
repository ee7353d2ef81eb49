"""Layer lists a model's config counts (``config.num_hidden_layers``, ``config.depths[i]``).

A Hugging Face model builds its layers from its config, so a layer removed from such a list must
lower the count, or ``from_pretrained`` rebuilds the old depth. Which config entry counts which
list is found by building the model again on the meta device (no memory, no weights) with the
entry lowered by one and seeing which list got shorter. The same fresh models say

* which layers can go: after removing layer ``i`` every later layer moves up one place, and a
  model built from the lowered config must have the same parameters there (T5's first block
  owns the relative position bias the later blocks use, so it cannot go; ResNet's first layer
  of a stage owns the projection shortcut);
* what changes in the layers that move: attributes a layer takes from its place only for
  bookkeeping (``layer_idx``, which indexes the key/value cache; drop-path rates, unused in eval)
  are set to what ``from_pretrained`` would give them; a layer whose removal would give a moving
  layer another attribute that changes what it computes (Swin's alternating ``shift_size``, GPT-2's
  ``scale_attn_by_inverse_layer_idx`` scaling) is not removable, so the pruned model computes what
  skipping the layer computes and reloads as it is.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.errors import PrunekitError

_SCALAR_COUNTS = ("num_hidden_layers", "encoder_layers", "decoder_layers", "num_decoder_layers")
_LIST_COUNTS = ("depths",)
_PER_LAYER_LISTS = ("layer_types",)  # config lists with one entry per layer of a scalar count
#: attributes that change with a layer's place but not what it computes in eval mode
INDEX_ONLY_ATTRIBUTES = frozenset({"layer_idx", "drop_prob", "drop_path_rate"})
_PLAIN = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Counter:
    """One config entry that counts a layer list: ``config.<key>`` or ``config.<key>[index]``."""

    key: str
    index: int | None = None

    def read(self, config) -> int:
        value = getattr(config, self.key)
        return value if self.index is None else value[self.index]

    def lowered(self, config, by: int):
        """A copy of `config` with this count lowered `by` (and per-layer lists trimmed later)."""
        config = copy.deepcopy(config)
        value = getattr(config, self.key)
        if self.index is None:
            setattr(config, self.key, value - by)
        else:
            setattr(config, self.key, [v - by * (i == self.index) for i, v in enumerate(value)])
        return config

    def __str__(self) -> str:
        return f"config.{self.key}" + ("" if self.index is None else f"[{self.index}]")


@dataclass
class CountedStack:
    """A layer list whose length a config entry counts; `refusals` maps the index of each layer
    that cannot be removed to why. `fresh` is False when the model could not be rebuilt to check
    (then only ``layer_idx`` is renumbered)."""

    name: str
    container: nn.Module
    counter: Counter
    refusals: dict[int, str] = field(default_factory=dict)
    fresh: bool = True
    twins: frozenset[int] = frozenset()  # layers built like another layer of the list (by the config)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_fresh(model: nn.Module, config) -> nn.Module | None:
    """``type(model)(config)`` on the meta device, or None when the model cannot be built so."""
    try:
        with _quiet(), torch.device("meta"):
            return type(model)(config)
    except Exception:  # noqa: BLE001 - not a config-built model: nothing to compare with
        return None


def _config(model: nn.Module):
    config = getattr(model, "config", None)
    return config if config is not None and hasattr(config, "to_dict") else None


def _counters(config) -> Iterator[Counter]:
    for key in _SCALAR_COUNTS:
        if isinstance(getattr(config, key, None), int):
            yield Counter(key)
    for key in _LIST_COUNTS:
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            yield from (Counter(key, index) for index in range(len(value)))


def _homogeneous_lists(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 0
        and len({type(child) for child in module}) == 1
    }  # fmt: skip


def layer_structure(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def _twins(layers: nn.Module) -> frozenset[int]:
    shapes = [layer_structure(layer) for layer in layers]
    return frozenset(i for i, shape in enumerate(shapes) if shapes.count(shape) > 1)


def _plain_attributes(module: nn.Module) -> dict[tuple[str, str], object]:
    found = {}
    for path, sub in module.named_modules():
        for attr, value in vars(sub).items():
            plain = isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value))
            if not attr.startswith("_") and attr != "training" and plain:
                found[(path, attr)] = (type(sub), value)
    return found


def moved_attributes(old: nn.Module, new: nn.Module) -> dict[tuple[str, str], tuple[object, object]]:
    """``(submodule path, attribute) -> (value at the old place, value at the new place)`` for
    plain attributes a freshly built layer has differently at its new place."""
    before, after = _plain_attributes(old), _plain_attributes(new)
    return {key: (before[key][1], after[key][1]) for key in before.keys() & after.keys()
            if before[key][0] is after[key][0] and before[key][1] != after[key][1]}


def _check_one_removal(stack: CountedStack, fresh_old: nn.Module, fresh_new: nn.Module) -> None:
    old_layers, new_layers = fresh_old.get_submodule(stack.name), fresh_new.get_submodule(stack.name)
    for index in range(len(old_layers)):
        kept = [j for j in range(len(old_layers)) if j != index]
        for place, j in enumerate(kept):
            old_shapes, new_shapes = layer_structure(old_layers[j]), layer_structure(new_layers[place])
            if old_shapes != new_shapes:
                differs = sorted(old_shapes.keys() ^ new_shapes.keys()) or sorted(
                    k for k in old_shapes if old_shapes[k] != new_shapes[k])
                stack.refusals[index] = (
                    f"layer {j} would move to place {place}, where a model built with {stack.counter} lowered "
                    f"has other parameters ({', '.join(differs[:3])}): this layer is built differently from "
                    "the ones after it (it owns weights or a shortcut the others do not)")
                break
            moved = sorted(key for key in moved_attributes(old_layers[j], new_layers[place])
                           if key[1] not in INDEX_ONLY_ATTRIBUTES)
            if moved:
                path, attr = moved[0]
                stack.refusals[index] = (
                    f"layer {j} would move to place {place}, where {stack.counter} gives a layer another "
                    f"{(path + '.' if path else '') + attr} (as from_pretrained would build it), so the pruned "
                    "model would not compute what skipping this layer computes; remove a later layer of this list")
                break


def counted_stacks(model: nn.Module) -> dict[str, CountedStack]:
    """The layer lists of `model` that a config entry counts, by dotted name (see module doc).

    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
    ...                             intermediate_size=8, vocab_size=10))
    >>> {name: str(stack.counter) for name, stack in counted_stacks(bert).items()}
    {'encoder.layer': 'config.num_hidden_layers'}
    """
    config = _config(model)
    if config is None:
        return {}
    lists, stacks = _homogeneous_lists(model), {}
    fresh_old = None
    for counter in _counters(config):
        count = counter.read(config)
        matching = [name for name, module in lists.items() if len(module) == count and name not in stacks]
        if not matching or count < 1:
            continue
        fresh_old = fresh_old or build_fresh(model, copy.deepcopy(config))
        fresh_new = build_fresh(model, counter.lowered(config, 1))
        if fresh_old is None or fresh_new is None:
            break
        fresh_lists = dict(fresh_new.named_modules())
        for name in matching:
            if isinstance(fresh_lists.get(name), type(lists[name])) and len(fresh_lists[name]) == count - 1:
                stacks[name] = CountedStack(name, lists[name], counter, twins=_twins(fresh_old.get_submodule(name)))
                _check_one_removal(stacks[name], fresh_old, fresh_new)
    if fresh_old is None and isinstance(getattr(config, "num_hidden_layers", None), int):
        for name, module in lists.items():  # cannot rebuild: trust the usual layer list names
            if name.rpartition(".")[2] in ("layer", "layers") and len(module) == config.num_hidden_layers:
                stacks[name] = CountedStack(name, module, Counter("num_hidden_layers"), fresh=False, twins=_twins(module))
    return stacks


def lowered_config(model: nn.Module, removals: dict[str, tuple[CountedStack, list[int]]]):
    """A copy of ``model.config`` with each stack's count lowered by its removed layers."""
    config = copy.deepcopy(_config(model))
    for stack, indices in removals.values():
        scalar = stack.counter.index is None
        count = stack.counter.read(config)
        config = stack.counter.lowered(config, len(indices))
        for key in _PER_LAYER_LISTS if scalar else ():
            value = getattr(config, key, None)
            if isinstance(value, list) and len(value) == count:
                setattr(config, key, [v for i, v in enumerate(value) if i not in indices])
    return config


def fresh_pair(model: nn.Module, new_config) -> tuple[nn.Module, nn.Module]:
    """Meta-device models built from the current and from `new_config` (errors if impossible)."""
    old, new = build_fresh(model, copy.deepcopy(_config(model))), build_fresh(model, new_config)
    if old is None or new is None:
        raise PrunekitError(
            f"{type(model).__name__} could not be rebuilt from its config with fewer layers, so removing "
            "layers from its config-counted layer lists cannot be checked; remove none of them")
    return old, new


def _config_owners(model: nn.Module, stack_name: str, key: str, value) -> list:
    """The distinct config objects on the path to the stack that hold `key` == `value`."""
    parts = stack_name.split(".") if stack_name else []
    owners = {}
    for depth in range(len(parts) + 1):
        config = _config(model.get_submodule(".".join(parts[:depth])))
        if config is not None and getattr(config, key, None) == value:
            owners[id(config)] = config
    return list(owners.values())


def _moved_layer_changes(model: nn.Module, stack: CountedStack, indices: list[int],
                         fresh_old: nn.Module, fresh_new: nn.Module) -> list[tuple[object, str, object]]:
    old_layers, new_layers = fresh_old.get_submodule(stack.name), fresh_new.get_submodule(stack.name)
    kept = [j for j in range(len(stack.container)) if j not in indices]
    changes = []
    for place, j in enumerate(kept):
        if layer_structure(old_layers[j]) != layer_structure(new_layers[place]):
            raise PrunekitError(
                f"removing layers {indices} of '{stack.name}' would move layer {j} to place {place}, where a "
                f"model built with {stack.counter} lowered has other parameters, so it would not reload; "
                "remove other layers of this list")
        for (path, attr), (old, new) in moved_attributes(old_layers[j], new_layers[place]).items():
            if attr not in INDEX_ONLY_ATTRIBUTES:
                raise PrunekitError(
                    f"removing layers {indices} of '{stack.name}' together would move layer {j} to place {place}, "
                    f"where {stack.counter} gives it another {(path + '.' if path else '') + attr}; remove other "
                    "layers of this list (or fewer at a time)")
            module = stack.container[j].get_submodule(path)
            if getattr(module, attr, None) == old:  # leave what was changed on purpose
                changes.append((module, attr, new))
    return changes


def counted_changes(model: nn.Module, removals: dict[str, tuple[CountedStack, list[int]]]
                    ) -> list[tuple[object, str, object]]:
    """The assignments ``(object, attribute, value)`` that removing layers ``indices`` of each
    counted stack takes besides deleting them: the config counts (and per-layer config lists) and
    the attributes the moving layers take from their new place. Raises, changing nothing, when a
    layer would land where the lowered config builds a different one.

    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
    ...                             intermediate_size=8, vocab_size=10))
    >>> stack = counted_stacks(bert)["encoder.layer"]
    >>> sorted((type(obj).__name__, attr, value) for obj, attr, value in counted_changes(bert, {"encoder.layer": (stack, [0])}))[:2]
    [('BertConfig', 'num_hidden_layers', 2), ('BertSelfAttention', 'layer_idx', 0)]
    """
    config = _config(model)
    new_config = lowered_config(model, removals)
    fresh = all(stack.fresh for stack, _ in removals.values())
    fresh_old, fresh_new = fresh_pair(model, new_config) if fresh else (None, None)
    changes = []
    for stack, indices in removals.values():
        key = stack.counter.key
        for owner in _config_owners(model, stack.name, key, getattr(config, key)):
            changes.append((owner, key, getattr(new_config, key)))
            for per_layer in _PER_LAYER_LISTS if stack.counter.index is None else ():
                if getattr(owner, per_layer, None) != getattr(new_config, per_layer, None):
                    changes.append((owner, per_layer, getattr(new_config, per_layer)))
        if fresh:
            changes += _moved_layer_changes(model, stack, indices, fresh_old, fresh_new)
    return changes
