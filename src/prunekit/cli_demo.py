"""``prunekit demo``: one short comparison that shows each pruning family at settings that represent it.

LeNet-5 on the bundled MNIST-5k subset, one seed, every method pruning a copy of the same cached
baseline at global scope (what the unstructured benchmark uses: a layer-by-layer 90% would strip
the 500-weight first convolution to 50 weights and lose many points that global scope does not).
``cli._cmd_demo`` prints :func:`demo_intro` and runs :func:`demo_config` like ``prunekit compare``.
"""

from __future__ import annotations

from pathlib import Path

from prunekit.harness import CompareConfig
from prunekit.training import baseline_path, default_train_config

DEMO_MODEL, DEMO_DATASET, DEMO_SEED = "lenet5", "mnist5k", 0
DEMO_FINETUNE_EPOCHS = 2

#: each family at the setting its benchmark shows it at, plus random weights as the floor
DEMO_METHODS = (
    "unstructured:magnitude@0.9",
    "unstructured:random@0.9",
    "neuron:taylor@0.5",
    "channel:l1@0.5",
    "hybrid:l1@0.5+magnitude@0.8",
)

#: about how long the dense baseline trains on this project's 2-core CPU (87 s measured: the
#: ``train_seconds`` of .prunekit-cache/lenet5-mnist5k-s0-e20.pt); said before the first run
BASELINE_SECONDS = 90


def demo_config(cache_dir: str | None, progress: bool) -> CompareConfig:
    """The comparison ``prunekit demo`` runs.

    >>> demo_config(None, progress=False).scope
    'global'
    """
    return CompareConfig(
        model=DEMO_MODEL, dataset=DEMO_DATASET, methods=DEMO_METHODS, sparsities=(), scope="global",
        seeds=(DEMO_SEED,), finetune_epochs=DEMO_FINETUNE_EPOCHS, cache_dir=cache_dir, progress=progress,
    )


def first_run(cache_dir: str | Path | None) -> bool:
    """Whether the demo's baseline still has to be trained (no cache file yet)."""
    epochs = default_train_config(DEMO_MODEL, DEMO_DATASET).epochs
    return not baseline_path(DEMO_MODEL, DEMO_DATASET, DEMO_SEED, epochs, cache_dir).is_file()


def demo_intro(cache_dir: str | Path | None) -> str:
    """What the demo is about to do; on the first run, that it trains the baseline first and how long.

    >>> import tempfile
    >>> "First run" in demo_intro(tempfile.mkdtemp())
    True
    """
    epochs = default_train_config(DEMO_MODEL, DEMO_DATASET).epochs
    lines = [
        "prunekit demo: LeNet-5 on the bundled MNIST-5k subset (3,500 train / 1,000 test).",
        "Each method prunes a copy of one dense baseline at global scope and fine-tunes it for "
        f"{DEMO_FINETUNE_EPOCHS} epochs:",
        "weights (90% zeroed, by magnitude and at random), neurons (50% of fc1 removed), channels (50% of the",
        "conv filters removed) and hybrid (50% of the channels removed, then 80% of the remaining weights zeroed).",
        "Params, MACs and latency are measured on the deployed model (masks baked, units removed).",
    ]
    if first_run(cache_dir):
        folder = baseline_path(DEMO_MODEL, DEMO_DATASET, DEMO_SEED, epochs, cache_dir).parent
        lines.append(f"First run: the dense baseline is trained first ({epochs} epochs, about {BASELINE_SECONDS} "
                     f"seconds on a 2-core CPU) and cached in {folder}/, so later runs skip it.")
    return "\n".join(lines) + "\n"
