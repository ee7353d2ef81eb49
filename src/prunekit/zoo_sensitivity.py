"""Layer sensitivity of a zoo model's cached baseline on a bundled dataset (``prunekit sensitivity``).

The baseline is the one ``prunekit compare`` prunes (:func:`prunekit.training.get_baseline`,
same seed and epochs); accuracy is measured on the *validation* split, so the curves can guide
an allocation that is later judged on the test split. Data-driven criteria score on the
training split (removal loss on the validation split, as the harness does).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from prunekit.data import load_dataset, make_loader
from prunekit.granularity import get_granularity
from prunekit.sensitivity import DEFAULT_SPARSITIES, SensitivityResult, layer_sensitivity
from prunekit.training import default_train_config, evaluate, get_baseline

EVAL_BATCH_SIZE = 256


@dataclass(frozen=True)
class SensitivityConfig:
    """One sensitivity run: which baseline, which units, which method, which sparsities."""

    model: str
    dataset: str
    granularity: str = "unstructured"
    method: str | None = None
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    seed: int = 0
    train_epochs: int | None = None
    cache_dir: str | None = None
    progress: bool = True


def run_sensitivity(config: SensitivityConfig) -> SensitivityResult:
    """Prune each layer of the cached baseline alone at each sparsity and measure validation accuracy.

    The granularity and method are checked before any baseline is trained.

    >>> import tempfile
    >>> config = SensitivityConfig("lenet300", "digits", sparsities=(0.5,), train_epochs=1,
    ...                            cache_dir=tempfile.mkdtemp(), progress=False)
    >>> result = run_sensitivity(config)
    >>> result.split, list(result.layers), result.meta["model"]
    ('validation', ['fc1.weight', 'fc2.weight', 'classifier.weight'], 'lenet300')
    """
    granularity = get_granularity(config.granularity)
    method = config.method if config.method is not None else granularity.default_method
    needs = granularity.criterion(method).needs
    splits = load_dataset(config.dataset)
    train_config = default_train_config(config.model, config.dataset)
    model, meta = get_baseline(config.model, config.dataset, config.seed, epochs=config.train_epochs,
                               cache_dir=config.cache_dir, progress=config.progress)
    val_loader = make_loader(splits.val, EVAL_BATCH_SIZE, shuffle=False)
    train_loader = make_loader(splits.train, train_config.batch_size, shuffle=True, seed=config.seed)
    result = layer_sensitivity(
        model, lambda pruned: evaluate(pruned, val_loader), config.sparsities, method, config.granularity,
        data=val_loader if needs == "removal-loss" else train_loader, example_inputs=splits.test.tensors[0][:2],
        split="validation", progress=config.progress, seed=config.seed,
    )
    return replace(result, meta={"model": config.model, "dataset": config.dataset, "seed": config.seed,
                                 "baseline_epochs": meta["epochs"], "baseline_test_accuracy": meta["accuracy"]})


__all__ = ["SensitivityConfig", "run_sensitivity"]
