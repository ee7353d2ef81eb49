"""Sequential calibration: prune a transformer's blocks one after the other, each on the inputs
the already pruned blocks before it produce.

    capture   run the model on the calibration batches until its first block is called; keep
              that call's arguments (hidden states, attention mask, position ids / embeddings)
    per block collect the input Hessians of its Linear / Conv1D layers on the current inputs,
              solve each layer (``solve``: SparseGPT, ...), run the *pruned* block again and
              hand its outputs to the next block as its inputs

Blocks are the layer lists a Hugging Face model's config counts (``encoder.layer`` of BERT,
``transformer.h`` of GPT-2, ``model.layers`` of Llama; ``prunekit.graph.stacks`` finds them),
so only one block's statistics are in memory at a time and the memory needed does not grow with
depth. Nothing is written to the model: the pruned blocks run through
``torch.func.functional_call`` with their new weights, and the caller gets every new weight and
keep-mask at the end (``prunekit.one_shot`` attaches them), so a failure leaves the model as it
was. Layers outside the blocks (embeddings, pooler, task heads) are not touched.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from prunekit.errors import PrunekitError
from prunekit.graph.stacks import counted_stacks
from prunekit.inputs import call_model, to_device
from prunekit.layers import handler_for
from prunekit.masking import split_name
from prunekit.state import preserved_state
from prunekit.stats.hessians import HessianCollector, InputHessian
from prunekit.stats.loop import split_batch
from prunekit.tokens import check_token_ids

#: ``solve(layer name, weight (out x in), input Hessian) -> (new weight (out x in), keep-mask)``
LayerSolver = Callable[[str, torch.Tensor, InputHessian], tuple[torch.Tensor, torch.Tensor]]


class _Captured(Exception):
    """Raised by the capture hook to stop the model once its first block has been called."""


@dataclass
class BlockCall:
    """One calibration batch's call of a block: its arguments, with the hidden states first
    (``args[0]``, or ``kwargs["hidden_states"]``), and which of their rows are real tokens
    (`token_mask`, from the batch's ``attention_mask``; None: all)."""

    args: tuple
    kwargs: dict
    token_mask: torch.Tensor | None = None

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor) -> BlockCall:
        if self.args:
            return BlockCall((hidden, *self.args[1:]), self.kwargs, self.token_mask)
        return BlockCall(self.args, {**self.kwargs, "hidden_states": hidden}, self.token_mask)


def find_block_stacks(model: nn.Module) -> dict[str, nn.Module]:
    """The block lists of `model` in module order, by dotted name (outermost lists only).

    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                             intermediate_size=8, vocab_size=10))
    >>> list(find_block_stacks(bert))
    ['encoder.layer']
    """
    stacks = {name: stack.container for name, stack in counted_stacks(model).items()}
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    names = sorted(stacks, key=order.__getitem__)
    outer = [name for name in names if not any(name.startswith(other + ".") for other in names)]
    if not outer:
        raise PrunekitError(
            f"sequential calibration prunes the repeated blocks of a Hugging Face transformer (the layer list its "
            f"config counts: encoder.layer of BERT, transformer.h of GPT-2, model.layers of Llama); "
            f"{type(model).__name__} has none. The model was not changed; use a score-based method "
            "(magnitude, wanda) for other models"
        )
    return {name: stacks[name] for name in outer}


def matmul_weights(model: nn.Module, stacks: Mapping[str, nn.Module], targets: Iterable[str]) -> list[list[str]]:
    """The weights of `targets` inside each block of `stacks`, one list per block in order;
    a target inside a block that is no Linear / Conv1D weight is refused.

    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
    ...                             intermediate_size=8, vocab_size=10))
    >>> matmul_weights(bert, {"encoder.layer": bert.encoder.layer}, ["pooler.dense.weight",
    ...                "encoder.layer.0.output.dense.weight", "encoder.layer.0.attention.self.query.weight"])
    [['encoder.layer.0.attention.self.query.weight', 'encoder.layer.0.output.dense.weight']]
    """
    wanted = set(targets)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    per_block = []
    for stack_name, blocks in stacks.items():
        for index in range(len(blocks)):
            prefix = f"{stack_name}.{index}."
            names = sorted((name for name in wanted if name.startswith(prefix)), key=lambda n: order[split_name(n)[0]])
            for name in names:
                module = model.get_submodule(split_name(name)[0])
                handler = handler_for(module)
                if split_name(name)[1] != "weight" or handler is None or handler.input_width(module) is None:
                    raise PrunekitError(
                        f"'{name}' inside block '{prefix[:-1]}' is not the weight of a Linear / Conv1D layer, which is "
                        "what sequential calibration reconstructs; leave it out with exclude=[...]")
            per_block.append(names)
    return per_block


@contextlib.contextmanager
def _without_cache(model: nn.Module) -> Iterator[None]:
    """``config.use_cache = False`` while inside (a key/value cache would grow with every block call)."""
    config = getattr(model, "config", None)
    had = config is not None and hasattr(config, "use_cache")
    before = config.use_cache if had else None
    if had:
        config.use_cache = False
    try:
        yield
    finally:
        if had:
            config.use_cache = before


def _token_mask(inputs: object, hidden: torch.Tensor) -> torch.Tensor | None:
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and tuple(mask.shape) == tuple(hidden.shape[:2]):
        return mask.to(torch.bool)
    return None


def _same(first: object, other: object) -> bool:
    """Whether two block arguments are the same (tensors by value, containers item by item)."""
    if isinstance(first, torch.Tensor) or isinstance(other, torch.Tensor):
        return (isinstance(first, torch.Tensor) and isinstance(other, torch.Tensor)
                and first.shape == other.shape and bool(torch.equal(first, other)))
    if isinstance(first, (tuple, list)) and isinstance(other, (tuple, list)):
        return len(first) == len(other) and all(_same(a, b) for a, b in zip(first, other))
    if isinstance(first, Mapping) and isinstance(other, Mapping):
        return first.keys() == other.keys() and all(_same(first[key], other[key]) for key in first)
    return first is other or type(first) is type(other) and isinstance(first, (bool, int, float, str)) and first == other


def _check_shared_arguments(stack_name: str, blocks: nn.Module, calls: Sequence[BlockCall]) -> None:
    """Every block must be called once, with the first block's arguments apart from the hidden
    states: the driver replays those for every block."""
    if len(calls) != len(blocks):
        raise PrunekitError(f"the blocks of '{stack_name}' ran {len(calls)} times for {len(blocks)} blocks on one batch; "
                            "sequential calibration needs each block called once per forward pass")
    rest = [(call.args[1:], {key: value for key, value in call.kwargs.items() if key != "hidden_states"})
            for call in calls]
    for index, arguments in enumerate(rest[1:], start=1):
        if not _same(rest[0], arguments):
            raise PrunekitError(
                f"block {index} of '{stack_name}' is called with other arguments than block 0 (besides the hidden "
                "states; e.g. a position bias the first block computes): sequential calibration gives every block "
                "the first block's arguments, so it cannot calibrate this model. The model was not changed")


def capture_block_inputs(model: nn.Module, stack_name: str, blocks: nn.Module, data: Iterable, num_batches: int,
                         weights: Mapping[str, torch.Tensor]) -> list[BlockCall]:
    """The arguments the first of `blocks` is called with on each of up to `num_batches` batches
    of `data` (``(inputs, targets)`` pairs or dicts of keyword inputs), the model running with
    `weights` (``{parameter name: value}``) in place of its own. The first batch runs through
    the whole model to check that every block gets the first one's arguments; later batches
    stop at the first block.

    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                             intermediate_size=8, vocab_size=10)).eval()
    >>> batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5)}
    >>> calls = capture_block_inputs(bert, "encoder.layer", bert.encoder.layer, [batch, batch], 8, {})
    >>> len(calls), tuple(calls[0].hidden.shape), int(calls[1].token_mask.sum())
    (2, (2, 5, 8), 10)
    """
    calls: list[BlockCall] = []
    every_block: list[BlockCall] = []

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        every_block.append(BlockCall(tuple(args), dict(kwargs)))

    def stop(module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append(BlockCall(tuple(args), dict(kwargs)))
        raise _Captured

    parameter = next(model.parameters())
    run = lambda *args, **kwargs: functional_call(model, dict(weights), args, kwargs)  # noqa: E731
    handles = [block.register_forward_pre_hook(record, with_kwargs=True) for block in blocks]
    try:
        for index, batch in enumerate(itertools.islice(data, num_batches)):
            inputs = split_batch(batch)[0]
            check_token_ids(model, inputs, f"calibration batch {index} (counting from 0)")
            inputs = to_device(inputs, parameter.device)
            if not calls:  # the first batch: every block, all the way through
                call_model(run, inputs)
                _check_shared_arguments(stack_name, blocks, every_block)
                calls.append(every_block[0])
                for handle in handles:
                    handle.remove()
                handles = [blocks[0].register_forward_pre_hook(stop, with_kwargs=True)]
            else:
                try:
                    call_model(run, inputs)
                except _Captured:
                    pass
                else:
                    raise PrunekitError(f"a calibration batch ran through the model without reaching '{stack_name}'; "
                                        "every batch must pass through the blocks")
            calls[-1].token_mask = _token_mask(inputs, calls[-1].hidden)
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        raise PrunekitError("data yielded no batches; pass an iterable of calibration batches (tokenizer outputs "
                            "or (inputs, targets) pairs)")
    return calls


def _oriented(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """`weight` as (out x in) and back (the transposition is its own inverse)."""
    out_dim, _ = handler_for(module).weight_layout(module, "weight")
    return weight if out_dim == 0 else weight.t()


def _solve_block(block: nn.Module, block_name: str, names: Sequence[str], calls: Sequence[BlockCall],
                 solve: LayerSolver, hessian_dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Collect the input Hessians of the block's `names` on `calls`, then solve each layer."""
    local = {name: split_name(name[len(block_name) + 1:])[0] for name in names}
    with HessianCollector(block, local.values(), hessian_dtype) as collector:
        for call in calls:
            collector.token_mask = call.token_mask
            block(*call.args, **call.kwargs)
    solved = {}
    for name, module_name in local.items():
        hessian = collector.hessians.pop(module_name)  # freed as soon as its layer is solved
        if hessian.tokens == 0:
            raise PrunekitError(f"layer '{name}' saw no input on the calibration data (its block never called it); "
                                "leave it out with exclude=[...]")
        module = block.get_submodule(module_name)
        weight, keep = solve(name, _oriented(module, module.weight.detach()), hessian)
        solved[name] = (_oriented(module, weight), _oriented(module, keep))
    return solved


def _substitutes(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` keyed as ``functional_call`` needs them: a masked weight's stored ``original``
    (its mask then still applies on top)."""
    keyed = {}
    for name, value in weights.items():
        module_name, param_name = split_name(name)
        if parametrize.is_parametrized(model.get_submodule(module_name), param_name):
            name = f"{module_name}.parametrizations.{param_name}.original".lstrip(".")
        keyed[name] = value
    return keyed


def _first_tensor(output: object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def calibrate_sequentially(model: nn.Module, data: Iterable, targets: Iterable[str], solve: LayerSolver, *,
                           num_batches: int = 8, hessian_dtype: torch.dtype = torch.float32
                           ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Solve every weight of `targets` inside the model's blocks, block by block (module doc).

    Returns ``{weight name: (new weight, keep-mask)}`` shaped like the stored weights; the model
    itself is left exactly as it was (weights, modes, RNG). `solve` is called once per layer,
    in block order, with the weight as (out x in) and its input Hessian.

    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                             intermediate_size=8, vocab_size=10))
    >>> seen = []
    >>> def keep_all(name, weight, hessian):
    ...     seen.append(name)
    ...     return weight, torch.ones_like(weight, dtype=torch.bool)
    >>> data = [{"input_ids": torch.randint(0, 10, (2, 5))}]
    >>> solved = calibrate_sequentially(bert, data, ["encoder.layer.1.output.dense.weight",
    ...                                              "encoder.layer.0.attention.self.query.weight"], keep_all)
    >>> seen
    ['encoder.layer.0.attention.self.query.weight', 'encoder.layer.1.output.dense.weight']
    """
    stacks = find_block_stacks(model)
    per_block = iter(matmul_weights(model, stacks, targets))
    solved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with preserved_state(model), torch.no_grad(), _without_cache(model):
        model.eval()
        for stack_name, blocks in stacks.items():
            pruned = {name: weight * keep for name, (weight, keep) in solved.items()}
            calls = capture_block_inputs(model, stack_name, blocks, data, num_batches, _substitutes(model, pruned))
            for index, block in enumerate(blocks):
                block_name = f"{stack_name}.{index}"
                solved_here = _solve_block(block, block_name, next(per_block), calls, solve, hessian_dtype)
                solved.update(solved_here)
                if index + 1 < len(blocks):
                    weights = {name[len(block_name) + 1:]: weight * keep for name, (weight, keep) in solved_here.items()}
                    weights = _substitutes(block, weights)
                    calls = [call.with_hidden(_first_tensor(functional_call(block, weights, call.args, call.kwargs)))
                             for call in calls]
    return solved


__all__ = ["BlockCall", "LayerSolver", "calibrate_sequentially", "capture_block_inputs", "find_block_stacks",
           "matmul_weights"]
