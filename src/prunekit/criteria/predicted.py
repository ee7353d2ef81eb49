"""Criteria that read a learned model's verdict on each unit (``prunekit.predictor``)."""

from __future__ import annotations

import torch

from prunekit.errors import PrunekitError
from prunekit.types import Evidence


def predicted(evidence: Evidence, generator: torch.Generator) -> torch.Tensor:
    """The keep-probability a trained mask predictor gave each weight: least likely kept go first.

    >>> predicted(Evidence((2,), predicted=torch.tensor([0.9, 0.1])), torch.Generator())
    tensor([0.9000, 0.1000])
    """
    if evidence.predicted is None:
        raise PrunekitError("method 'predictor' scores by a trained mask predictor's keep-probabilities; pass "
                            "predictor=MaskPredictor.load(path) and data=")
    return evidence.predicted.clone()
