"""Which parameters a pruning call may touch, and the user's `exclude` list.

In a model built from a Hugging Face config with a layer list the config counts (BERT's
``encoder.layer``, GPT-2's ``h``, Llama's ``layers``; ``prunekit.graph.stacks``) only the weights
inside those blocks are targets: embeddings, the pooler and task / LM heads are left dense, as the
one-shot LLM pruning papers do (Wanda, SparseGPT) and because a head tied to the embeddings would
prune both. Other models: every weight a layer handler calls prunable.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from prunekit.errors import PrunekitError, unknown_name
from prunekit.layers import prunable_weights
from prunekit.masking import named_effective_parameters, split_name

ExcludeItem = str | type[nn.Module]


def _check_exclude_items(exclude: list) -> None:
    for item in exclude:
        if not isinstance(item, (str, type)):
            raise PrunekitError(
                f"exclude item {item!r} is neither a layer name nor a module type; "
                "pass names such as 'classifier' or types such as torch.nn.Linear"
            )


def excluded_module_names(model: nn.Module, exclude: Iterable[ExcludeItem] = ()) -> set[str]:
    """Dotted names of the modules `exclude` covers: named modules with everything inside them,
    and every module of a listed type. A name that matches no module is an error.

    >>> model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    >>> sorted(excluded_module_names(model, ["1"])), sorted(excluded_module_names(model, [nn.ReLU]))
    (['1', '1.0', '1.1'], ['1.0'])
    """
    exclude = [exclude] if isinstance(exclude, (str, type)) else list(exclude)
    _check_exclude_items(exclude)
    names = [name for name, _ in model.named_modules()]
    excluded: set[str] = set()
    for item in exclude:
        if isinstance(item, type):
            excluded.update(name for name, module in model.named_modules() if isinstance(module, item))
            continue
        hits = [name for name in names if name == item or name.startswith(item + ".")]
        if not hits:
            raise unknown_name("layer to exclude", item, [name for name in names if name])
        excluded.update(hits)
    return excluded


def _matches(item: ExcludeItem, module_name: str, module: nn.Module, fqn: str) -> bool:
    if isinstance(item, type):
        return isinstance(module, item)
    return item in (module_name, fqn) or fqn.startswith(item + ".")


def block_stacks(model: nn.Module) -> list[str]:
    """Names of the block lists a Hugging Face config counts (none for other models).

    >>> block_stacks(nn.Sequential(nn.Linear(2, 2)))
    []
    """
    from prunekit.graph.stacks import counted_stacks  # graph imports this module

    return list(counted_stacks(model))


def resolve_targets(model: nn.Module, exclude: Iterable[ExcludeItem] = ()) -> list[str]:
    """Dotted names of the prunable weights of `model`, minus those matched by `exclude`.

    `exclude` items are module names (``"classifier"``), name prefixes (``"layer1"``), parameter
    names (``"fc1.weight"``) or module types (``nn.Conv2d``). An item that matches no prunable
    weight is an error, so a typo never silently prunes a layer meant to be kept. In a Hugging Face
    model only weights inside its counted blocks are targets (module docstring); excluding a layer
    outside them (``"pooler"``) is allowed and changes nothing.

    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> resolve_targets(model, exclude=["2"])
    ['0.weight']
    """
    exclude = list(exclude)
    _check_exclude_items(exclude)
    present = {name for name, _ in named_effective_parameters(model)}
    candidates: list[tuple[str, nn.Module, str]] = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for param_name in prunable_weights(module):
            if prefix + param_name in present:
                candidates.append((module_name, module, prefix + param_name))
    used = [False] * len(exclude)
    targets = []
    stacks = block_stacks(model)
    for module_name, module, fqn in candidates:
        hits = [_matches(item, module_name, module, fqn) for item in exclude]
        used = [was or hit for was, hit in zip(used, hits)]
        if not any(hits) and (not stacks or any(fqn.startswith(stack + ".") for stack in stacks)):
            targets.append(fqn)
    unmatched = [item for item, hit in zip(exclude, used) if not hit]
    if unmatched:
        layer_names = sorted({split_name(fqn)[0] for _, _, fqn in candidates})
        raise PrunekitError(
            f"exclude entries {unmatched!r} match no prunable layer; prunable layers are: "
            f"{', '.join(layer_names)}"
        )
    if not targets:
        inside = f" (only weights inside the blocks {', '.join(stacks)} are targets here)" if stacks else ""
        raise PrunekitError(f"nothing left to prune: every prunable weight is excluded or absent{inside}")
    return targets
