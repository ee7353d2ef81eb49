"""One-shot pruning that rebuilds the weights it keeps: SparseGPT, block by block.

SparseGPT is not a score-then-select criterion: which weight goes depends on the updates the
weights before it in the row already received, and the kept weights change. So it has its own
entry, :func:`sparsegpt_prune`, which ``prunekit.prune(model, "sparsegpt", ...)`` calls:

    validate  ->  sequential calibration (prunekit.sequential; the model is not touched)
              ->  per layer: input Hessian -> SparseGPT solve (prunekit.sparsegpt)
              ->  write the new weights, attach the keep-masks  ->  PruneResult

It ends like every unstructured method: the masks are parametrizations owned by nobody (as
``prune`` leaves them), so ``get_masks``, ``bake``, the metrics and a later Pruner all work; the
rebuilt values are the stored weights under the masks. Only the Linear / Conv1D layers inside
the model's blocks are pruned (embeddings, pooler and task heads stay dense, as in the paper).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from prunekit.distributed import refuse_wrapper
from prunekit.errors import PrunekitError
from prunekit.granularity import get_granularity
from prunekit.layers import handler_for
from prunekit.masking import (apply_masks, get_masks, original_parameter, refuse_foreign_masks, split_name,
                              validate_masks)
from prunekit.pipeline import build_result, measure_before
from prunekit.request import PruneOptions, PruneRequest
from prunekit.select_rows import parse_pattern, pattern_sparsity
from prunekit.sequential import calibrate_sequentially, find_block_stacks, matmul_weights
from prunekit.sparsegpt import SCOPES, check_calibration_tokens, sparsegpt_layer
from prunekit.stats.hessians import InputHessian
from prunekit.targets import ExcludeItem
from prunekit.types import PruneResult

#: methods that rebuild the kept weights and so have an entry of their own here, with a description
ONE_SHOT_METHODS = MappingProxyType({
    "sparsegpt": "second-order, column by column, kept weights rebuilt from the inputs' Hessian (SparseGPT); "
                 "Hugging Face transformers, blocks calibrated in order",
})


@dataclass(frozen=True)
class SparseGPTConfig:
    """The SparseGPT solver's settings (``prunekit.sparsegpt``): columns per mask-selection and
    lazy-update block, dampening as a share of the mean Hessian diagonal, where sparsity is
    counted (``"row"``: every output row exactly; ``"layer"``: each column block across rows, as
    the paper's code does) and the dtype the Hessians are summed in.

    >>> SparseGPTConfig(scope="layer").block_size
    128
    """

    block_size: int = 128
    percdamp: float = 0.01
    scope: str = "row"
    hessian_dtype: torch.dtype = torch.float32


def _check(sparsity: float | None, pattern: str | None, data: Iterable | None, config: SparseGPTConfig,
           num_batches: int) -> float:
    """The sparsity to reach, after checking every argument."""
    if data is None:
        raise PrunekitError("sparsegpt needs calibration data: pass data=<batches of inputs>, e.g. tokenizer outputs "
                            "of a few hundred texts (at least as many tokens as the widest layer has inputs)")
    if pattern is not None:
        target = pattern_sparsity(pattern)
        if sparsity is not None and abs(sparsity - target) > 1e-9:
            raise PrunekitError(f"pattern '{pattern}' removes {target:g} of the weights; leave sparsity unset (or "
                                f"pass {target:g}), got sparsity={sparsity!r}")
        sparsity = target
    if not (isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool) and 0.0 <= sparsity < 1.0):
        raise PrunekitError(f"sparsity must be a number in [0, 1) (0.5 removes half the weights), got {sparsity!r}")
    if not (isinstance(num_batches, int) and num_batches >= 1):
        raise PrunekitError(f"num_batches must be an int >= 1, got {num_batches!r}")
    if not isinstance(config, SparseGPTConfig):
        raise PrunekitError(f"config must be a prunekit.one_shot.SparseGPTConfig, got {config!r}")
    if config.scope not in SCOPES:
        raise PrunekitError(f"sparsegpt counts sparsity per 'row' or per 'layer'; got scope {config.scope!r}")
    if config.hessian_dtype not in (torch.float32, torch.float64):
        raise PrunekitError(f"hessian_dtype must be torch.float32 or torch.float64, got {config.hessian_dtype!r}")
    if not (isinstance(config.block_size, int) and config.block_size >= 1):
        raise PrunekitError(f"block_size must be an int >= 1 (128 in the paper), got {config.block_size!r}")
    if not (isinstance(config.percdamp, (int, float)) and config.percdamp >= 0):
        raise PrunekitError(f"percdamp must be a number >= 0 (0.01 in the paper), got {config.percdamp!r}")
    return float(sparsity)


def _input_width(model: nn.Module, name: str) -> int:
    module = model.get_submodule(split_name(name)[0])
    return handler_for(module).input_width(module)


def _check_widths(model: nn.Module, targets: Iterable[str], pattern: str | None) -> None:
    if pattern is None:
        return
    group = parse_pattern(pattern)[1]
    for name in targets:
        width = _input_width(model, name)
        if width % group:
            raise PrunekitError(f"pattern '{pattern}' needs layers whose input width is a multiple of {group}; "
                                f"'{name}' has {width} inputs: exclude it or choose another pattern")


def _write(model: nn.Module, solved: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Store the rebuilt weights and attach their keep-masks (masks checked first)."""
    masks = {name: keep for name, (_, keep) in solved.items()}
    validate_masks(model, masks)
    with torch.no_grad():
        for name, (weight, _) in solved.items():
            stored = original_parameter(model, name)
            stored.copy_(weight.to(stored.dtype))
    apply_masks(model, masks, None)


def sparsegpt_prune(model: nn.Module, sparsity: float | None = None, data: Iterable | None = None, *,
                    pattern: str | None = None, exclude: Iterable[ExcludeItem] = (), num_batches: int = 8,
                    config: SparseGPTConfig | None = None) -> PruneResult:
    """Prune the Linear / Conv1D layers in the blocks of a Hugging Face transformer with
    SparseGPT (Frantar & Alistarh 2023), calibrating block by block on up to `num_batches`
    batches of `data` (tokenizer outputs, or ``(inputs, targets)`` pairs).

    `sparsity` is the share of each layer's weights removed (each row exactly with the default
    ``config.scope="row"``), or `pattern` ``"N:M"`` keeps N of every M consecutive weights along
    each layer's inputs (``"2:4"``: 50%). Weights already masked stay pruned and count. The
    model changes only once everything has been computed: a failure leaves it as it was.

    >>> from transformers import BertConfig, BertModel
    >>> torch.manual_seed(0) and None
    >>> bert = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    ...                             intermediate_size=32, vocab_size=50)).eval()
    >>> data = [{"input_ids": torch.randint(0, 50, (4, 16))}]
    >>> result = sparsegpt_prune(bert, 0.5, data)
    >>> result.sparsity_achieved, bool((bert.encoder.layer[0].output.dense.weight == 0).sum(1).eq(16).all())
    (0.5, True)
    """
    config = SparseGPTConfig() if config is None else config
    sparsity = _check(sparsity, pattern, data, config, num_batches)
    exclude = (exclude,) if isinstance(exclude, (str, type)) else tuple(exclude)
    n_m = parse_pattern(pattern) if pattern is not None else None
    refuse_wrapper(model)
    refuse_foreign_masks(model, None)
    granularity = get_granularity("unstructured")
    groups = granularity.find(model, None, exclude)  # checks `exclude` and finite weights
    targets = [name for names in matmul_weights(model, find_block_stacks(model), [g.name for g in groups])
               for name in names]
    if not targets:
        raise PrunekitError("no Linear / Conv1D weight inside the model's blocks is left to prune (all excluded?)")
    _check_widths(model, targets, pattern)
    groups = [group for group in groups if group.name in set(targets)]
    masked = set(get_masks(model))
    widths = {name: _input_width(model, name) for name in targets}
    widest = max(widths, key=widths.__getitem__)  # every layer of a block sees the block's tokens
    before = measure_before(model, granularity, groups)

    def solve(name: str, weight: torch.Tensor, hessian: InputHessian) -> tuple[torch.Tensor, torch.Tensor]:
        check_calibration_tokens(hessian.tokens, max(widths[widest], weight.shape[1]),
                                 widest if widths[widest] >= weight.shape[1] else name)
        return sparsegpt_layer(weight, hessian.matrix, sparsity, pattern=n_m, block_size=config.block_size,
                               percdamp=config.percdamp, scope=config.scope,
                               pruned=(weight == 0) if name in masked else None)

    solved = calibrate_sequentially(model, data, targets, solve, num_batches=num_batches,
                                    hessian_dtype=config.hessian_dtype)
    _write(model, solved)
    request = PruneRequest("sparsegpt", "unstructured", config.scope, sparsity, None,
                           PruneOptions(exclude=exclude, num_batches=num_batches, pattern=pattern))
    return build_result(model, request, granularity, groups, before, granularity.present(model, groups), None,
                        sparsity)


def prune_one_shot(model: nn.Module, method: str, sparsity: float | None, data: Iterable | None, *,
                   scope: str | None = None, pattern: str | None = None, exclude: Iterable[ExcludeItem] = (),
                   num_batches: int = 8, **others) -> PruneResult:
    """What ``prunekit.prune`` does for a method of ``ONE_SHOT_METHODS``. `others` are prune()'s
    remaining arguments: settings of the score-then-select pipeline that mean nothing here must
    be left unset (an error names the first one that is not).

    >>> prune_one_shot(nn.Linear(2, 2), "sparsegpt", None, None, threshold=0.1)
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: method 'sparsegpt' reaches a sparsity or N:M pattern by rebuilding each layer from calibration data; 'threshold' does not apply to it: leave it unset
    """
    if others.get("granularity", "unstructured") != "unstructured":
        raise PrunekitError(f"method '{method}' prunes single weights: use granularity='unstructured' "
                            f"(got '{others['granularity']}')")
    unused = [key for key in ("threshold", "layer_sparsity", "round_to", "predictor", "loss_fn")
              if others.get(key) is not None]
    if unused:
        raise PrunekitError(f"method '{method}' reaches a sparsity or N:M pattern by rebuilding each layer from "
                            f"calibration data; '{unused[0]}' does not apply to it: leave it unset")
    if scope not in (None, *SCOPES):
        raise PrunekitError(f"method '{method}' prunes each layer on its own: scope 'row' (default) or 'layer', "
                            f"got '{scope}'")
    config = SparseGPTConfig() if scope is None else SparseGPTConfig(scope=scope)
    return sparsegpt_prune(model, sparsity, data, pattern=pattern, exclude=exclude, num_batches=num_batches,
                           config=config)


__all__ = ["ONE_SHOT_METHODS", "SparseGPTConfig", "prune_one_shot", "sparsegpt_prune"]
