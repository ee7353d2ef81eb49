"""Structured one-shot pruning of a transformer's blocks with least-squares reconstruction.

FFN neurons or attention heads are chosen block by block from calibration statistics, and the
projection that reads them (BERT's ``output.dense`` / ``attention.output.dense``, GPT-2's
``c_proj``, Llama's ``down_proj`` / ``o_proj``: the group's *consumer*) is refitted so that,
on the calibration tokens, it computes what it computed before from the inputs that are left:

    W_K' = W_K + W_R · H_RK · (H_KK + λI)⁻¹        (H = XᵀX of the consumer's inputs)

K are the kept input columns, R the removed ones; this is the least-squares solution of
``X_K W_K'ᵀ ≈ X Wᵀ`` (the columns that go are explained by the ones that stay), damped by
λ = `percdamp` × mean diag(H_KK), so nothing changes when nothing goes. Blocks are calibrated in
order (``prunekit.sequential``): each sees the inputs the already pruned blocks before it
produce, and only one block's Hessians are in memory at a time.

    validate  ->  groups (the granularity's, traced on the first batch)  ->  per block: consumer
    Hessians -> unit scores (the criterion, e.g. structured ``wanda``: ‖unit output‖₂ · ‖weights
    reading it‖₂) -> keep the best (1 - sparsity) -> refit the consumer  ->  write the refitted
    weights  ->  remove the units (or mask them)  ->  PruneResult

Nothing is written to the model before every block has been solved: a failure leaves it as it was.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn

from prunekit.criteria import NEEDS, Criterion, get_criterion
from prunekit.distributed import refuse_wrapper
from prunekit.errors import PrunekitError
from prunekit.graph.types import Member, UnitGroup
from prunekit.granularity import Granularity, get_granularity
from prunekit.layers import handler_for
from prunekit.masking import apply_masks, get_masks, original_parameter, split_name
from prunekit.pipeline import build_result, measure_before, remove_units
from prunekit.request import PruneOptions, PruneRequest
from prunekit.select import SelectionRule, select
from prunekit.sequential import calibrate_sequentially, find_block_stacks
from prunekit.sparsegpt import check_calibration_tokens
from prunekit.stats.hessians import InputHessian
from prunekit.stats.loop import split_batch
from prunekit.targets import ExcludeItem
from prunekit.tokens import check_token_ids
from prunekit.types import PruneResult, Signal

#: the granularities whose units a following projection reads, so that projection can be refitted
RECONSTRUCT_GRANULARITIES = ("neuron", "head")
DEFAULT_METHOD = "wanda"


def refit_columns(weight: torch.Tensor, hessian: torch.Tensor, keep_columns: torch.Tensor,
                  percdamp: float = 0.01) -> torch.Tensor:
    """`weight` (out x in) refitted to do without the input columns ``~keep_columns``: the
    least-squares solution on inputs whose Gram matrix is `hessian` (in x in, any positive
    multiple of XᵀX), damped by `percdamp` × the mean of the kept diagonal. Removed columns are 0.

    >>> x = torch.tensor([[1.0, 1.0], [2.0, 2.0], [1.0, 1.0]])  # column 1 copies column 0
    >>> refit_columns(torch.tensor([[1.0, 3.0]]), x.t() @ x, torch.tensor([True, False]), 0.0)
    tensor([[4., 0.]])
    """
    kept, gone = keep_columns.nonzero().flatten(), (~keep_columns).nonzero().flatten()
    refitted = torch.zeros_like(weight)
    if len(kept) == 0:
        return refitted
    work = weight.double()
    gram = hessian.double()
    kept_gram = gram[kept][:, kept]
    damp = percdamp * float(kept_gram.diagonal().mean())
    kept_gram = kept_gram + (damp if damp > 0 else 1e-12) * torch.eye(len(kept), dtype=torch.float64)
    solved = work[:, kept]
    if len(gone):
        cross = work[:, gone] @ gram[gone][:, kept]  # (out x kept): what the removed columns contributed
        factor, info = torch.linalg.cholesky_ex(kept_gram)
        if int(info):
            raise PrunekitError("the kept inputs' Hessian is not positive definite even after dampening; raise "
                                "percdamp (e.g. 0.1) or use more calibration data")
        solved = solved + torch.cholesky_solve(cross.t(), factor).t()
    refitted[:, kept] = solved.to(weight.dtype)
    return refitted


def _consumer(model: nn.Module, group: UnitGroup) -> Member:
    """The member of `group` that is a Linear / Conv1D weight reading the units along its inputs."""
    found = []
    for member in group.members:
        module_name, param_name = split_name(member.param)
        module = model.get_submodule(module_name)
        handler = handler_for(module)
        if param_name == "weight" and handler is not None and handler.input_width(module) is not None:
            if handler.weight_layout(module, "weight")[1] == member.dim:
                found.append(member)
    if len(found) != 1:
        raise PrunekitError(
            f"'{group.name}': least-squares reconstruction refits the one Linear layer that reads the pruned units; "
            f"found {len(found)} ({', '.join(m.param for m in found) or 'none'}). Leave it out with "
            f"exclude=['{group.name}'] or prune without reconstruct")
    return found[0]


def _in_blocks(group: UnitGroup, consumer: Member, stacks: Mapping[str, nn.Module]) -> None:
    inside = any(consumer.param.startswith(f"{name}.") for name in stacks)
    if not inside:
        raise PrunekitError(f"'{group.name}' is outside the model's blocks ({', '.join(stacks)}), which is what "
                            f"sequential calibration walks; leave it out with exclude=['{group.name}']")


def _check(method: str, sparsity: object, data: object, num_batches: object, percdamp: object,
           granularity: str) -> tuple[Granularity, Criterion]:
    if granularity not in RECONSTRUCT_GRANULARITIES:
        check_reconstruct_method(method, granularity)  # says which granularities
    if data is None:
        raise PrunekitError("reconstruct=True needs calibration data: pass data=<batches of inputs>, e.g. "
                            "prunekit.hf.token_batches(tokenizer, texts)")
    if not (isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool) and 0.0 <= sparsity < 1.0):
        raise PrunekitError(f"sparsity must be a number in [0, 1) (0.5 removes half the units of every block), "
                            f"got {sparsity!r}")
    if not (isinstance(num_batches, int) and not isinstance(num_batches, bool) and num_batches >= 1):
        raise PrunekitError(f"num_batches must be an int >= 1, got {num_batches!r}")
    if not (isinstance(percdamp, (int, float)) and not isinstance(percdamp, bool) and percdamp >= 0):
        raise PrunekitError(f"percdamp must be a number >= 0 (0.01 by default), got {percdamp!r}")
    return check_reconstruct_method(method, granularity)


def check_reconstruct_method(method: str, granularity: str) -> tuple[Granularity, Criterion]:
    """The granularity and criterion of ``prune(..., method, granularity=..., reconstruct=True)``,
    or an error: criteria may read what a block's weights and consumer Hessians give (weights,
    ``signal.input_norm``), not evidence that needs its own pass over the data (gradients, ...).

    >>> check_reconstruct_method("wanda", "head")[1].name
    'wanda'
    """
    if granularity not in RECONSTRUCT_GRANULARITIES:
        raise PrunekitError(f"reconstruct=True refits the projection that reads pruned neurons or heads: use "
                            f"granularity 'neuron' or 'head' (got '{granularity}'; for single weights use "
                            "method='sparsegpt', which rebuilds the kept weights)")
    unit_granularity = get_granularity(granularity)
    offered = {read for read in unit_granularity.provides if NEEDS.get(read) is None} | {"signal.input_norm"}
    return unit_granularity, get_criterion(method, offered, f"{granularity} method with reconstruct=True")


def _unit_input_norms(hessian: InputHessian, unit_index: torch.Tensor, num_units: int) -> torch.Tensor:
    """‖unit's output‖₂ over the calibration tokens, from the consumer's Hessian (2XᵀX/n)."""
    squares = hessian.matrix.diagonal().double().clamp(min=0) * hessian.tokens / 2
    owned = unit_index >= 0
    totals = torch.zeros(num_units, dtype=torch.float64).index_add_(0, unit_index[owned], squares[owned])
    return totals.sqrt().float()


def _first_inputs(data: Sequence) -> object:
    if not data:
        raise PrunekitError("data yielded no batches; pass calibration batches (tokenizer outputs or (inputs, "
                            "targets) pairs)")
    return split_batch(data[0])[0]


def reconstruct_prune(model: nn.Module, method: str | None, sparsity: float, data: Iterable, *,
                      granularity: str = "neuron", exclude: Iterable[ExcludeItem] = (), num_batches: int = 8,
                      percdamp: float = 0.01, remove: bool = True, example_inputs: object = None,
                      round_to: int | None = None, seed: int = 0) -> PruneResult:
    """Remove `sparsity` of the FFN neurons (``granularity="neuron"``) or attention heads
    (``"head"``) of every block of a Hugging Face transformer, chosen by `method` (default
    ``"wanda"``: ‖unit output‖₂ on the calibration data × ‖weights reading it‖₂), refitting the
    projection that reads them by least squares (module doc). With ``remove=False`` the units are
    masked instead (``prunekit.remove_masked_units`` removes them later). `example_inputs`
    (default: the first calibration batch) trace the model to find the units.

    >>> from transformers import BertConfig, BertModel
    >>> torch.manual_seed(0) and None
    >>> bert = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    ...                             intermediate_size=32, vocab_size=50)).eval()
    >>> data = [{"input_ids": torch.randint(0, 50, (4, 16))}]
    >>> result = reconstruct_prune(bert, "wanda", 0.5, data)
    >>> result.units_after, bert.encoder.layer[0].intermediate.dense.out_features
    (32, 16)
    """
    method = DEFAULT_METHOD if method is None else method
    unit_granularity, criterion = _check(method, sparsity, data, num_batches, percdamp, granularity)
    exclude = (exclude,) if isinstance(exclude, (str, type)) else tuple(exclude)
    refuse_wrapper(model)
    if get_masks(model):
        raise PrunekitError("the model has masks attached; reconstruction refits weights a mask would hide: call "
                            "prunekit.bake(model) first (or prune on the unmasked model)")
    data = list(itertools.islice(data, num_batches))
    for index, batch in enumerate(data):  # a tokenizer that does not fit the model: said before tracing
        check_token_ids(model, split_batch(batch)[0], f"calibration batch {index} (counting from 0)")
    example_inputs = _first_inputs(data) if example_inputs is None else example_inputs
    groups = unit_granularity.find(model, example_inputs, exclude)
    stacks = find_block_stacks(model)
    consumers = {}
    for group in groups:
        consumers[group.name] = _consumer(model, group)
        _in_blocks(group, consumers[group.name], stacks)
    by_consumer = {consumers[group.name].param: group for group in groups}
    before = measure_before(model, unit_granularity, groups)
    keep: dict[str, torch.Tensor] = {}
    evidence = unit_granularity.evidence(model, groups, {})  # weights only: read before anything changes
    generator = torch.Generator().manual_seed(seed)

    def solve(name: str, weight: torch.Tensor, hessian: InputHessian) -> tuple[torch.Tensor, torch.Tensor]:
        group, member = by_consumer[name], consumers[by_consumer[name].name]
        check_calibration_tokens(hessian.tokens, weight.shape[1], name, "least-squares reconstruction")
        norms = _unit_input_norms(hessian, member.unit_index, group.num_units)
        scores = criterion.score(replace(evidence[group.name], signal=Signal(input_norm=norms)), generator)
        rule = SelectionRule(sparsity=float(sparsity), min_keep=unit_granularity.min_keep, round_to=round_to)
        keep[group.name] = select({group.name: scores.float().reshape(-1)}, rule)[group.name]
        columns = (member.unit_index < 0) | keep[group.name][member.unit_index.clamp(min=0)]
        refitted = refit_columns(weight, hessian.matrix, columns, percdamp)
        return refitted, columns.expand_as(weight).clone()

    solved = calibrate_sequentially(model, data, list(by_consumer), solve, num_batches=num_batches)
    stored = {name: original_parameter(model, name).detach().clone() for name in solved}
    record = None
    try:
        with torch.no_grad():
            for name, (weight, _) in solved.items():
                original_parameter(model, name).copy_(weight)
        if remove:  # rehearsed before anything is cut (remove_units); masks are validated first
            record = remove_units(model, unit_granularity, groups, keep, example_inputs)
        else:
            apply_masks(model, unit_granularity.to_masks(model, groups, keep), None)
    except BaseException:
        with torch.no_grad():  # the refitted weights go back: a failed call leaves the model as it was
            for name, weight in stored.items():
                original_parameter(model, name).copy_(weight)
        raise
    options = PruneOptions(exclude=exclude, seed=seed, round_to=round_to, num_batches=num_batches, remove=remove)
    request = PruneRequest(method, granularity, "layer", float(sparsity), None, options)
    present = keep if record is not None else unit_granularity.present(model, groups)
    result = build_result(model, request, unit_granularity, groups, before, present, record, float(sparsity))
    result.reconstructed = True
    return result


def prune_reconstructing(model: nn.Module, method: str | None, sparsity: float, data: Iterable, *,
                         scope: str | None = None, **settings) -> PruneResult:
    """What ``prunekit.prune(..., reconstruct=True)`` does. `settings` are prune()'s other
    arguments: those of :func:`reconstruct_prune` pass on, the rest must be left unset (an error
    names the first one that is not).

    >>> prune_reconstructing(nn.Linear(2, 2), "wanda", 0.5, None, granularity="neuron", pattern="2:4")
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: reconstruct=True removes the same share of units from every block; 'pattern' does not apply to it: leave it unset
    """
    unused = [key for key in ("threshold", "layer_sparsity", "predictor", "pattern", "loss_fn")
              if settings.pop(key, None) is not None]
    if unused:
        raise PrunekitError(f"reconstruct=True removes the same share of units from every block; '{unused[0]}' does "
                            "not apply to it: leave it unset")
    if scope not in (None, "layer"):
        raise PrunekitError(f"reconstruct=True prunes each block on the inputs the pruned blocks before it produce, "
                            f"so units are compared within a block: scope 'layer' (got '{scope}')")
    return reconstruct_prune(model, method, sparsity, data, **settings)


__all__ = ["RECONSTRUCT_GRANULARITIES", "check_reconstruct_method", "prune_reconstructing", "reconstruct_prune", "refit_columns"]
