"""A pruning request: what to prune, checked completely before anything touches the model."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from torch import nn

from prunekit.criteria import Criterion
from prunekit.errors import PrunekitError, unknown_name
from prunekit.graph.types import UnitGroup
from prunekit.granularity import Granularity, get_granularity
from prunekit.masking import named_effective_parameters
from prunekit.predictor import MaskPredictor, check_predictor_option
from prunekit.regularizers import Regularizer
from prunekit.select import SCOPES
from prunekit.stats import LOOP_ONLY, LossFn


@dataclass(frozen=True)
class PruneOptions:
    """The less common settings of a pruning request (``Pruner(..., **options)``).

    * `loss_fn(outputs, targets)`: the loss data-driven criteria differentiate (cross-entropy)
    * `exclude`: layer names (with everything inside), parameter names or module types to keep
    * `seed`: for random scores
    * `round_to`: structured: each layer keeps a multiple of this many units
    * `num_batches`: at most this many batches of `data` are used for statistics
    * `regularizer`: a ``prunekit.regularizers`` penalty (``L1``, ``GroupLasso``, ``BNScale``)
      that ``Pruner.penalty()`` returns for the training loss, so training drives what will be
      pruned towards zero
    * `remove`: structured: remove the pruned units physically at each pruning step instead of
      masking them (the model's parameters change: rebuild the optimiser afterwards)
    * `layer_sparsity`: ``{group name: fraction of its units to remove}`` (layer scope; groups
      it does not name get `sparsity`, or keep everything without one), e.g. the
      ``layer_sparsity`` of a ``prunekit.allocate`` result; group names are parameter names for
      unstructured pruning and layer names for structured granularities
    * `predictor`: a fitted ``prunekit.predictor.MaskPredictor`` (method ``"predictor"``): its
      keep-probabilities are the scores
    * `pattern`: ``"N:M"`` (e.g. ``"2:4"``): unstructured, keep the N best of every M consecutive
      weights along each layer's inputs; the sparsity is 1 - N/M (``prunekit.select_rows``)
    """

    loss_fn: LossFn | None = None
    exclude: tuple = ()
    seed: int = 0
    round_to: int | None = None
    num_batches: int = 8
    remove: bool = False
    regularizer: Regularizer | None = None
    layer_sparsity: Mapping[str, float] | None = None
    predictor: MaskPredictor | None = None
    pattern: str | None = None

    @classmethod
    def from_kwargs(cls, options: dict) -> PruneOptions:
        """Options from keyword arguments; an unknown name is an error that lists the known ones.

        >>> PruneOptions.from_kwargs({"seed": 3}).seed
        3
        """
        known = [field.name for field in fields(cls)]
        unknown = [name for name in options if name not in known]
        if unknown:
            raise unknown_name("Pruner option", unknown[0], known)
        exclude = options.get("exclude", ())
        exclude = (exclude,) if isinstance(exclude, (str, type)) else tuple(exclude)
        layer_sparsity = options.get("layer_sparsity")
        if isinstance(layer_sparsity, Mapping):  # a copy: the caller's dict may change later
            options = {**options, "layer_sparsity": dict(layer_sparsity)}
        return cls(**{**options, "exclude": exclude})


@dataclass(frozen=True)
class PruneRequest:
    """Everything one pruning request asks for, apart from the model and data."""

    method: str = "magnitude"
    granularity: str = "unstructured"
    scope: str = "layer"
    sparsity: float | None = None
    threshold: float | None = None
    options: PruneOptions = PruneOptions()

    def describe(self) -> dict:
        """Plain JSON-ready settings (what ``Pruner.state_dict`` stores and compares on resume).

        >>> PruneRequest(sparsity=0.5).describe()["exclude"]
        []
        """
        options = self.options
        return {
            "method": self.method, "granularity": self.granularity, "scope": self.scope,
            "sparsity": self.sparsity, "threshold": self.threshold,
            "exclude": [item if isinstance(item, str) else f"{item.__module__}.{item.__qualname__}"
                        for item in options.exclude],
            "seed": options.seed, "round_to": options.round_to, "num_batches": options.num_batches,
            "remove": options.remove,
            "regularizer": options.regularizer.to_dict() if options.regularizer is not None else None,
            "layer_sparsity": dict(options.layer_sparsity) if options.layer_sparsity is not None else None,
            **({"predictor": options.predictor.describe()} if options.predictor is not None else {}),
            **({"pattern": options.pattern} if options.pattern is not None else {}),
        }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_goal(request: PruneRequest, granularity: Granularity, criterion: Criterion) -> None:
    # a criterion whose scores mean the same everywhere (L0 gates: <= 0 is shut) has a threshold
    # that means something for units too
    if request.threshold is not None and not (granularity.supports_threshold or criterion.comparable):
        raise PrunekitError(
            f"granularity '{granularity.name}' selects units by ratio only; pass sparsity= "
            "(the fraction of units to remove) instead of threshold="
        )
    sparsity, threshold = request.sparsity, request.threshold
    if request.options.layer_sparsity is not None:
        _check_layer_goal(request)
    elif (sparsity is None) == (threshold is None):
        raise PrunekitError(
            "give exactly one of sparsity= (fraction of weights to remove) or threshold= "
            f"(remove scores below it); got sparsity={sparsity!r}, threshold={threshold!r}"
        )
    if sparsity is not None and not (isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool)
                                     and 0.0 <= sparsity < 1.0):
        raise PrunekitError(f"sparsity must be a number in [0, 1), got {sparsity!r}; 0.9 removes 90%")
    if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise PrunekitError(f"threshold must be a finite number, got {threshold!r}")
    if threshold is not None and sparsity is None and request.options.round_to not in (None, 1):
        raise PrunekitError(f"round_to={request.options.round_to} rounds how many units a sparsity keeps; a threshold "
                            "keeps whatever scores above it: leave round_to unset with threshold=")


def _is_fraction(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0


def _check_layer_goal(request: PruneRequest) -> None:
    """`layer_sparsity` is a map of fractions in [0, 1), with layer scope and no threshold."""
    layer_sparsity = request.options.layer_sparsity
    if not isinstance(layer_sparsity, Mapping) or not all(isinstance(name, str) for name in layer_sparsity):
        raise PrunekitError(f"layer_sparsity must map layer names to fractions, e.g. {{'fc1.weight': 0.9}}; "
                            f"got {layer_sparsity!r}")
    bad = {name: value for name, value in layer_sparsity.items() if not _is_fraction(value)}
    if bad:
        raise PrunekitError(f"every layer_sparsity value must be a number in [0, 1) (0.9 removes 90%); got {bad}")
    if request.threshold is not None:
        raise PrunekitError("give layer_sparsity= or threshold=, not both: layer_sparsity already says how much "
                            "each layer loses")
    if request.scope != "layer":
        raise PrunekitError(f"layer_sparsity sets each layer's own target, which is scope 'layer'; got scope "
                            f"'{request.scope}': leave scope unset")


def check_layer_names(layer_sparsity: Mapping[str, float] | None, groups: Iterable[UnitGroup]) -> None:
    """An error naming the prunable groups when `layer_sparsity` names something else.

    >>> check_layer_names({"0.weight": 0.5}, get_granularity("unstructured").find(nn.Linear(2, 2), None, ()))
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: layer_sparsity names '0.weight', which is no prunable group here; the groups are: weight
    """
    if layer_sparsity is None:
        return
    names = [group.name for group in groups]
    unknown = [name for name in layer_sparsity if name not in names]
    if unknown:
        raise PrunekitError(f"layer_sparsity names '{unknown[0]}', which is no prunable group here; the groups "
                            f"are: {', '.join(names)}")


def _check_options(options: PruneOptions, granularity: Granularity) -> None:
    if options.round_to is not None and not granularity.supports_round_to:
        raise PrunekitError(
            f"round_to rounds unit counts inside a layer; it does not apply to granularity '{granularity.name}'"
        )
    if options.round_to is not None and not (_is_int(options.round_to) and options.round_to >= 1):
        raise PrunekitError(f"round_to must be an int >= 1 (e.g. 8) or None, got {options.round_to!r}")
    if not _is_int(options.seed):
        raise PrunekitError(f"seed must be an int, got {options.seed!r}")
    if not (_is_int(options.num_batches) and options.num_batches >= 1):
        raise PrunekitError(f"num_batches must be an int >= 1, got {options.num_batches!r}")
    if options.regularizer is not None and not isinstance(options.regularizer, Regularizer):
        raise PrunekitError(f"regularizer must be a prunekit.regularizers penalty such as L1(1e-4), GroupLasso(1e-4) "
                            f"or BNScale(1e-4); got {options.regularizer!r}")
    if options.loss_fn is not None and not callable(options.loss_fn):
        raise PrunekitError(f"loss_fn must be a function (outputs, targets) -> loss, got {options.loss_fn!r}")


def require_example_inputs(granularity: Granularity, example_inputs: object, what: str) -> None:
    """An error when `granularity` traces the model and there are no example inputs.

    >>> require_example_inputs(get_granularity("head"), None, "granularity 'head'")
    """
    if example_inputs is None and granularity.needs_example_inputs:
        raise PrunekitError(
            f"{what} traces the model to find coupled layers; pass example_inputs=<a small batch of "
            "real inputs>"
        )


def validate_request(request: PruneRequest, data: Iterable | None, example_inputs: object,
                     gradients_from_loop: bool = False) -> tuple[Granularity, Criterion]:
    """Check a request without touching any model; returns its granularity and criterion.
    With `gradients_from_loop` the weight gradients come from the user's training loop (a
    ``GradientThreshold`` schedule) instead of `data`.

    >>> granularity, criterion = validate_request(PruneRequest("magnitude", sparsity=0.5), None, None)
    >>> granularity.name, criterion.name
    ('unstructured', 'magnitude')
    """
    granularity = get_granularity(request.granularity)
    if gradients_from_loop and granularity.name != "unstructured":
        raise PrunekitError(_LOOP_GRADIENTS + f" (got granularity '{granularity.name}')")
    criterion = granularity.criterion(request.method)
    check_predictor_option(request.method, criterion.reads, request.options.predictor)
    _check_goal(request, granularity, criterion)
    _check_options(request.options, granularity)
    require_example_inputs(granularity, example_inputs, f"granularity '{granularity.name}'")
    if request.scope not in SCOPES:
        raise unknown_name("scope", request.scope, SCOPES)
    if gradients_from_loop:
        _check_loop_gradients(request, granularity, criterion)
    elif criterion.needs == "synflow":
        if example_inputs is None:
            raise PrunekitError(f"method '{request.method}' needs no data but feeds the model ones shaped like "
                                "its inputs: pass example_inputs=<a small batch of inputs>")
    elif criterion.needs is not None and criterion.needs not in LOOP_ONLY and data is None:
        raise PrunekitError(
            f"method '{request.method}' needs data (it scores by {criterion.needs}): pass "
            "data=<iterable of (inputs, targets) batches>, e.g. a DataLoader over training data"
        )
    return granularity, criterion


_LOOP_GRADIENTS = ("GradientThreshold prunes single weights by the |gradient| summed in the training loop: use "
                   "granularity='unstructured' with method 'gradient' or 'taylor'")


def _check_loop_gradients(request: PruneRequest, granularity: Granularity, criterion: Criterion) -> None:
    if criterion.needs != "gradients":
        raise PrunekitError(_LOOP_GRADIENTS + f" (got method '{request.method}')")


def model_signature(model: nn.Module) -> dict[str, list[int]]:
    """``{parameter name: shape}`` as the forward pass sees them (masked or not).

    >>> model_signature(nn.Linear(3, 2))
    {'weight': [2, 3], 'bias': [2]}
    """
    return {name: list(tensor.shape) for name, tensor in named_effective_parameters(model)}


__all__ = ["PruneOptions", "PruneRequest", "check_layer_names", "model_signature", "require_example_inputs",
           "validate_request"]
