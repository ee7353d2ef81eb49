"""Method specs for the harness: ``[granularity:]method[@sparsity]``, hybrid as two stages.

    magnitude                 unstructured magnitude at every sparsity of the comparison
    channel:l1                channel pruning by L1 norm at every sparsity
    neuron:taylor@0.5         neuron pruning pinned to 50% of the neurons
    hybrid:l1@0.5+magnitude   50% of channels/neurons by L1, then magnitude at every sparsity
    neuron:group-lasso        train with a penalty (prunekit.regularizers.PENALTY_METHODS), then prune
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.criteria import criteria_for
from prunekit.errors import PrunekitError, UnknownNameError, unknown_name
from prunekit.granularity import GRANULARITIES, get_granularity
from prunekit.hybrid import HYBRID_GRANULARITIES
from prunekit.harness_movement import MOVEMENT_METHODS, check_movement_spec
from prunekit.regularizers import PENALTY_METHODS

SPEC_GRANULARITIES = (*GRANULARITIES, "hybrid")
DEFAULT_HYBRID_UNIT_SPARSITY = 0.5


@dataclass(frozen=True)
class MethodSpec:
    """One method of a comparison; `sparsity` None means "each sparsity of the comparison"."""

    granularity: str
    method: str
    sparsity: float | None = None
    weight_method: str | None = None
    weight_sparsity: float | None = None

    @property
    def label(self) -> str:
        """The method as written in results (without the granularity)."""
        if self.granularity == "hybrid":
            return f"{self.method}@{self.sparsity:g}+{self.weight_method}"
        return self.method


def _split_budget(text: str) -> tuple[str, float | None]:
    name, _, budget = text.partition("@")
    if not budget:
        return name.strip(), None
    try:
        value = float(budget)
    except ValueError:
        raise PrunekitError(f"'{text}': the part after '@' must be a sparsity such as 0.5") from None
    if not 0.0 <= value < 1.0:
        raise PrunekitError(f"'{text}': sparsity must lie in [0, 1)")
    return name.strip(), value


def parse_method_spec(text: str, default_granularity: str = "unstructured") -> MethodSpec:
    """Parse and validate one method spec (unknown names fail here, before any training).

    >>> parse_method_spec("hybrid:l1@0.5+magnitude")
    MethodSpec(granularity='hybrid', method='l1', sparsity=0.5, weight_method='magnitude', weight_sparsity=None)
    >>> parse_method_spec("channel:fpgm@0.3").sparsity
    0.3
    """
    granularity, _, rest = text.rpartition(":")
    granularity = granularity.strip() or default_granularity
    if granularity not in SPEC_GRANULARITIES:
        raise unknown_name("granularity", granularity, SPEC_GRANULARITIES)
    if granularity != "hybrid":
        method, sparsity = _split_budget(rest)
        if method in MOVEMENT_METHODS:  # pruned while fine-tuning (prunekit.harness_movement)
            check_movement_spec(text, granularity)
            return MethodSpec(granularity, method, sparsity)
        if method in PENALTY_METHODS:
            if granularity not in PENALTY_METHODS[method].granularities:
                raise PrunekitError(f"'{text}': {method} prunes {' / '.join(PENALTY_METHODS[method].granularities)} "
                                    f"units; write e.g. '{PENALTY_METHODS[method].granularities[0]}:{method}'")
            return MethodSpec(granularity, method, sparsity)
        if method == "predictor":
            raise PrunekitError(f"'{text}': method 'predictor' needs a fitted MaskPredictor, which compare does not "
                                "take; use the Python API (prunekit.predictor; see benchmarks/predictor_mnist.py)")
        _check_criterion(text, granularity, method)
        return MethodSpec(granularity, method, sparsity)
    unit_part, plus, weight_part = rest.partition("+")
    if not plus:
        raise PrunekitError(f"hybrid spec '{text}' needs two stages: hybrid:<unit method>[@s]+<weight method>[@s]")
    unit_method, unit_sparsity = _split_budget(unit_part)
    weight_method, weight_sparsity = _split_budget(weight_part)
    get_granularity("unstructured").criterion(weight_method)
    usable = [name for name in HYBRID_GRANULARITIES if unit_method in _methods_of(name)]
    if not usable:
        get_granularity("neuron").criterion(unit_method)  # raises, naming the choices
    return MethodSpec("hybrid", unit_method, unit_sparsity if unit_sparsity is not None else DEFAULT_HYBRID_UNIT_SPARSITY,
                      weight_method, weight_sparsity)


def _methods_of(granularity: str) -> set[str]:
    return set(criteria_for(get_granularity(granularity).provides))


def _check_criterion(text: str, granularity: str, method: str) -> None:
    """Refuse a method `granularity` does not offer; when other granularities offer it (``l1``
    without a prefix means unstructured, which has no L1 norm of a unit), say how to write them."""
    try:
        get_granularity(granularity).criterion(method)
    except UnknownNameError as error:
        elsewhere = [name for name in GRANULARITIES if name != granularity and method in _methods_of(name)]
        if not elsewhere:
            raise
        written = " or ".join(f"'{name}:{method}'" for name in elsewhere)
        raise UnknownNameError(f"{error}. '{method}' is a {' / '.join(elsewhere)} method, not for {granularity} units: "
                               f"write {written} (or --granularity {elsewhere[0]} for specs without a prefix)") from None
