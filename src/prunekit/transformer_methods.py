"""Which method specs run on a pretrained transformer without labels or training.

``prunekit compare --model minilm`` prunes one-shot from calibration text: specs are the harness's
``[granularity:]method[@sparsity]`` (prunekit.methods) plus ``sparsegpt``, and with reconstruct the
structured criteria ``prune(..., reconstruct=True)`` takes. Methods that train (penalties,
movement, hybrid), need a labelled loss (gradients, removal cost) or the untrained model are refused.
"""

from __future__ import annotations

from types import MappingProxyType

from prunekit.errors import PrunekitError, unknown_name
from prunekit.granularity import get_granularity
from prunekit.harness_movement import MOVEMENT_METHODS
from prunekit.methods import SPEC_GRANULARITIES, MethodSpec, parse_method_spec
from prunekit.one_shot import ONE_SHOT_METHODS
from prunekit.reconstruct import RECONSTRUCT_GRANULARITIES, check_reconstruct_method
from prunekit.regularizers import PENALTY_METHODS

#: granularities that apply to a transformer encoder (it has no convolutions or LSTMs)
TRANSFORMER_GRANULARITIES = ("unstructured", "neuron", "head", "layer")
#: evidence the runs cannot give: there is no labelled loss, training loop or untrained model here
_UNAVAILABLE = MappingProxyType({
    "gradients": "gradients of a labelled loss, which a sentence-embedding model does not have here",
    "removal-loss": "a labelled loss to measure what removing a unit costs",
    "synflow": "the untrained model (it scores at initialisation)",
    "movement": "weight updates while fine-tuning",
})


def _split_spec(text: str, default_granularity: str) -> tuple[str, str, float | None]:
    granularity, _, rest = text.rpartition(":")
    granularity = granularity.strip() or default_granularity
    if granularity not in SPEC_GRANULARITIES:
        raise unknown_name("granularity", granularity, SPEC_GRANULARITIES)
    name, at, budget = rest.partition("@")
    try:
        sparsity = float(budget) if at else None
    except ValueError:
        raise PrunekitError(f"'{text}': the part after '@' must be a sparsity such as 0.5") from None
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise PrunekitError(f"'{text}': sparsity must lie in [0, 1)")
    return granularity, name.strip(), sparsity


def _reconstruct_spec(text: str, granularity: str, method: str, sparsity: float | None) -> MethodSpec:
    if granularity not in RECONSTRUCT_GRANULARITIES:
        raise PrunekitError(f"'{text}': reconstruct refits the projection that reads removed neurons or heads; "
                            f"write 'neuron:{method}' or 'head:{method}', or run '{text}' without reconstruct")
    check_reconstruct_method(method, granularity)
    return MethodSpec(granularity, method, sparsity)


def parse_transformer_spec(text: str, default_granularity: str = "unstructured", reconstruct: bool = False,
                           model: str = "minilm") -> MethodSpec:
    """One method spec of a comparison on a pretrained transformer (`model` names it in messages),
    refused here when it cannot run one-shot without labels. `reconstruct` accepts the structured
    criteria ``prune(..., reconstruct=True)`` takes (e.g. ``neuron:wanda``).

    >>> parse_transformer_spec("sparsegpt@0.5")
    MethodSpec(granularity='unstructured', method='sparsegpt', sparsity=0.5, weight_method=None, weight_sparsity=None)
    >>> parse_transformer_spec("neuron:wanda", reconstruct=True).granularity
    'neuron'
    >>> parse_transformer_spec("taylor")
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: 'taylor' needs gradients of a labelled loss, ...
    """
    granularity, method, sparsity = ("hybrid", "", None) if text.startswith("hybrid:") else \
        _split_spec(text, default_granularity)
    if granularity == "hybrid" or method in PENALTY_METHODS or method in MOVEMENT_METHODS:
        raise PrunekitError(f"'{text}' trains (a penalty, fine-tuning or a second stage); compare on "
                            f"{model} prunes one-shot without training: use e.g. wanda, sparsegpt, "
                            "magnitude, random, neuron:l1, head:activation-mean")
    if granularity not in TRANSFORMER_GRANULARITIES:
        raise PrunekitError(f"'{text}': {model} has no {granularity} units; granularities here: "
                            f"{', '.join(TRANSFORMER_GRANULARITIES)}")
    if method in ONE_SHOT_METHODS:
        if granularity != "unstructured" or reconstruct:
            raise PrunekitError(f"'{text}': {method} zeroes single weights and rebuilds the rest itself; write "
                                f"'{method}' (unstructured) and run it without reconstruct")
        return MethodSpec(granularity, method, sparsity)
    if reconstruct:
        return _reconstruct_spec(text, granularity, method, sparsity)
    spec = parse_method_spec(text, default_granularity)
    needs = get_granularity(spec.granularity).criterion(spec.method).needs
    if needs in _UNAVAILABLE:
        raise PrunekitError(f"'{text}' needs {_UNAVAILABLE[needs]}; use a method that reads weights or "
                            "calibration inputs (see 'prunekit methods')")
    return spec
