"""The SparseGPT layer solver (Frantar & Alistarh 2023): prune a weight and rebuild what is left.

Pure tensor functions. A linear layer ``y = W x`` (``W``: out x in) is pruned so that its
outputs on calibration inputs ``X`` change as little as possible: minimise ``||W X - Ŵ X||²``
over ``Ŵ`` with the chosen entries zero. With ``H = 2 XᵀX / n`` (the Hessian of that error,
in x in) the optimal-brain-surgeon step removes weight ``w_ij`` at cost ``w_ij² / [H⁻¹]_jj``
and spreads the error it leaves over the row's remaining weights through ``H⁻¹``. SparseGPT does
this for the columns one at a time, left to right, and never revisits a column once treated, so
every row shares the same sequence of inverse Hessians: the ones of the columns still to come.
Those are all read from one upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = UᵀU``): row ``j`` of
``U`` divided by ``U_jj`` is the update the removal of column ``j`` sends to the later columns,
and ``U_jj²`` is ``[H⁻¹]_jj`` once the earlier columns are fixed.

* dampening: ``percdamp`` times the mean of ``diag(H)`` is added to the diagonal, so a Hessian
  from few or correlated inputs still inverts; inputs that were always zero (``H_jj = 0``) get
  ``H_jj = 1``, cost nothing to prune (score 0) and pass no update on.
* adaptive mask selection: the mask is chosen ``block_size`` columns at a time, from the
  weights as the earlier blocks' updates left them, by the score ``w² / U_jj²``.
  ``scope="row"`` removes the same share from every row in every block (each row ends exactly at
  the target); ``scope="layer"`` compares the whole block across rows, as the paper's own code
  does (rows then end up with different sparsities, the layer exactly at the target).
* N:M (``pattern=(n, m)``): every row keeps ``n`` of each ``m`` consecutive inputs, chosen when
  the solver reaches the first of them, from the weights as updated up to there.
* lazy batch updates: inside a block the updates go to that block only; the block's
  accumulated errors update all later columns at once (one matrix product per block).
"""

from __future__ import annotations

import torch

from prunekit.errors import PrunekitError

SCOPES = ("row", "layer")


def check_calibration_tokens(tokens: int, in_features: int, layer: str = "the layer", method: str = "SparseGPT") -> None:
    """Refuse a Hessian from fewer calibration tokens than `layer` has inputs.

    ``XᵀX`` of ``tokens`` input rows has rank at most ``tokens``: below the layer's input width
    it is singular, and the reconstruction would be fitted to dampening, not data.

    >>> check_calibration_tokens(20, 16)
    >>> check_calibration_tokens(10, 16, "fc1")
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: SparseGPT needs at least as many calibration tokens as a layer has inputs (16 for 'fc1'), so that XᵀX of its inputs is full rank; it saw 10 tokens: pass more (or longer) calibration samples, at least 16 tokens
    """
    if tokens < in_features:
        raise PrunekitError(
            f"{method} needs at least as many calibration tokens as a layer has inputs ({in_features} for "
            f"'{layer}'), so that XᵀX of its inputs is full rank; it saw {tokens} tokens: pass more (or longer) "
            f"calibration samples, at least {in_features} tokens"
        )


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` (``UᵀU = (H + λI)⁻¹``), with
    ``λ = percdamp * mean(diag H)`` after dead inputs (``H_jj = 0``) got ``H_jj = 1``.

    >>> hessian = torch.tensor([[4.0, 2.0], [2.0, 2.0]])
    >>> factor = inverse_hessian_factor(hessian, percdamp=0.0)
    >>> torch.allclose(factor.t() @ factor, torch.linalg.inv(hessian)), bool((factor.tril(-1) == 0).all())
    (True, True)
    """
    hessian = hessian.clone()
    diagonal = hessian.diagonal()
    diagonal[diagonal == 0] = 1.0
    diagonal += percdamp * diagonal.mean()
    # with P the reversal permutation and L the lower Cholesky factor of P H P, U = P L⁻¹ P is
    # upper triangular and UᵀU = H⁻¹: one factorisation and one triangular inverse
    lower, info = torch.linalg.cholesky_ex(hessian.flip(0, 1))
    if int(info) != 0:
        advice = ("use percdamp > 0 (0.01 is the paper's default)" if percdamp == 0 else
                  f"raise percdamp (now {percdamp})")
        raise PrunekitError(
            f"the Hessian of the layer's calibration inputs is not positive definite (rank-deficient: the inputs "
            f"span fewer directions than the layer's {hessian.shape[0]} inputs); {advice}, or calibrate on more "
            "tokens (at least as many as the layer has inputs)"
        )
    identity = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    return torch.linalg.solve_triangular(lower, identity, upper=False).flip(0, 1)


def _check(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, pattern, block_size: int,
           percdamp: float, scope: str) -> None:
    if weight.dim() != 2 or not weight.is_floating_point():
        raise PrunekitError(f"weight must be a 2-D float tensor (out x in), got shape {tuple(weight.shape)}")
    if tuple(hessian.shape) != (weight.shape[1],) * 2:
        raise PrunekitError(f"the Hessian must be in x in = {(weight.shape[1],) * 2} for a weight of shape "
                            f"{tuple(weight.shape)}; got {tuple(hessian.shape)}")
    if not (torch.isfinite(weight).all() and torch.isfinite(hessian).all()):
        raise PrunekitError("weight and Hessian must be finite (no NaN / Inf); check the model and calibration data")
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise PrunekitError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not (isinstance(block_size, int) and block_size >= 1):
        raise PrunekitError(f"block_size must be an int >= 1 (128 in the paper), got {block_size!r}")
    if not (isinstance(percdamp, (int, float)) and percdamp >= 0):
        raise PrunekitError(f"percdamp must be a number >= 0 (0.01 in the paper), got {percdamp!r}")
    if scope not in SCOPES:
        raise PrunekitError(f"scope must be one of {SCOPES}, got {scope!r}")
    if pattern is not None:
        keep, group = pattern
        if weight.shape[1] % group:
            raise PrunekitError(f"an {keep}:{group} pattern needs a layer whose input width is a multiple of "
                                f"{group}; this one has {weight.shape[1]} inputs: exclude it or choose another M")


def _block_prune_mask(scores: torch.Tensor, start: int, stop: int, sparsity: float, scope: str,
                      pruned: torch.Tensor) -> torch.Tensor:
    """Which entries of a block (columns ``start:stop`` of the layer) go: the lowest `scores`,
    so many that the columns ``0:stop`` reach ``round(sparsity * count)`` exactly, and every
    entry `pruned` already (those go first and count towards the target)."""
    rows = scores.shape[0]
    scores = scores.masked_fill(pruned, -torch.inf)
    prune = pruned.clone()
    if scope == "row":
        count = round(sparsity * stop) - round(sparsity * start)
        if count > 0:
            prune.scatter_(1, torch.topk(scores, count, dim=1, largest=False).indices, True)
    else:
        count = round(sparsity * rows * stop) - round(sparsity * rows * start)
        if count > 0:
            prune.view(-1)[torch.topk(scores.flatten(), count, largest=False).indices] = True
    return prune


def _solve_block(weights: torch.Tensor, factor: torch.Tensor, prune: torch.Tensor, pattern,
                 dead: torch.Tensor) -> torch.Tensor:
    """Column by column through one block (in place on `weights` and `prune`): zero the pruned
    entries and push each column's error onto the block's later columns. Returns the errors
    (one column per column of the block, already divided by ``U_jj``)."""
    errors = torch.zeros_like(weights)
    diagonal = factor.diagonal()
    for column in range(weights.shape[1]):
        if pattern is not None and column % pattern[1] == 0:
            keep, group = pattern
            scores = weights[:, column:column + group] ** 2 / diagonal[column:column + group] ** 2
            scores[:, dead[column:column + group]] = 0.0
            scores[prune[:, column:column + group]] = -torch.inf  # already pruned: they go first
            lowest = torch.topk(scores, group - keep, dim=1, largest=False).indices
            prune[:, column:column + group].scatter_(1, lowest, True)
        error = errors[:, column]
        torch.mul(weights[:, column], prune[:, column], out=error).div_(factor[column, column])
        weights[:, column:].addr_(error, factor[column, column:], alpha=-1.0)
        weights[:, column].masked_fill_(prune[:, column], 0.0)  # exactly zero, not a rounding residue
    return errors


def sparsegpt_layer(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.5, *,
                    pattern: tuple[int, int] | None = None, block_size: int = 128, percdamp: float = 0.01,
                    scope: str = "row", pruned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune `weight` (out x in) with SparseGPT given the Hessian ``2 XᵀX / n`` of its inputs.

    Returns ``(new_weight, keep_mask)``: the pruned entries are zero and the kept ones rebuilt
    so the layer's outputs on the calibration inputs change as little as the method can make
    them. `sparsity` is the share removed (each row exactly with ``scope="row"``; the layer
    exactly with ``"layer"``), or `pattern` ``(n, m)`` keeps ``n`` of every ``m`` consecutive
    inputs in each row (`sparsity` is then ignored). Entries marked in `pruned` (bool, shaped
    like `weight`: pruned before) stay zero and count towards the target, so a second call
    prunes further. See the module docstring for the rest.
    The arguments are not changed; the result has `weight`'s dtype.

    >>> weight = torch.tensor([[1.0, -3.0, 0.5, 2.0]])
    >>> new_weight, keep = sparsegpt_layer(weight, torch.eye(4), 0.5)
    >>> keep.tolist(), new_weight.tolist()      # H = I: magnitude pruning, kept weights untouched
    ([[False, True, False, True]], [[0.0, -3.0, 0.0, 2.0]])
    >>> sparsegpt_layer(weight, torch.eye(4), pattern=(1, 2))[1].tolist()
    [[False, True, False, True]]
    """
    _check(weight, hessian, sparsity, pattern, block_size, percdamp, scope)
    dtype = torch.promote_types(hessian.dtype, torch.float32)
    hessian = hessian.detach().to(dtype)
    dead = hessian.diagonal() == 0
    factor = inverse_hessian_factor(hessian, percdamp)
    weights = weight.detach().to(dtype).clone()
    prune = torch.zeros(weights.shape, dtype=torch.bool, device=weights.device)
    if pruned is not None:
        prune |= pruned.to(device=weights.device, dtype=torch.bool)
    columns = weights.shape[1]
    if pattern is not None:  # a block must hold whole groups of m
        block_size = max(pattern[1], block_size - block_size % pattern[1])
    for start in range(0, columns, block_size):
        stop = min(start + block_size, columns)
        block, block_factor = weights[:, start:stop], factor[start:stop, start:stop]
        if pattern is None and sparsity > 0:
            scores = block ** 2 / block_factor.diagonal() ** 2
            scores[:, dead[start:stop]] = 0.0  # inputs never seen: free to prune
            prune[:, start:stop] = _block_prune_mask(scores, start, stop, sparsity, scope, prune[:, start:stop])
        if pattern is None and not prune[:, start:stop].any():
            continue  # nothing pruned here: the block and everything after it stay as they are
        errors = _solve_block(block, block_factor, prune[:, start:stop], pattern, dead[start:stop])
        weights[:, stop:] -= errors @ factor[start:stop, stop:]
    return weights.to(weight.dtype), ~prune


__all__ = ["SCOPES", "check_calibration_tokens", "inverse_hessian_factor", "sparsegpt_layer"]
