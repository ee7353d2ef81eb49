"""The coverage matrix: third-party architectures x applicable granularities, and what each cell does.

``EXPECTED`` pins every cell: ``"prunes"`` (forward works, output shape kept, parameters (or nonzero
weights, for unstructured) drop, removal equals masking) or a refusal, given as a phrase its error
message must contain. ``tests/test_coverage_matrix.py`` checks every cell; ``render_table()`` is the
README's table (regenerate it with ``.venv/bin/python tests/coverage_matrix.py``).

Applicable granularities: ``unstructured`` everywhere; ``neuron`` where the model has Linear /
Conv1D layers besides its output layer; ``head`` for attention models; ``channel`` for models
built from convolutions; ``layer`` for models built from stacks of same-shape blocks.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from third_party_models import BUILDERS  # noqa: E402

PRUNES = "prunes"

TRANSFORMER = ("unstructured", "neuron", "head", "layer")
CNN = ("unstructured", "channel", "layer")
SEGMENTATION = ("unstructured", "channel")

APPLICABLE = {
    "bert": TRANSFORMER, "distilbert": TRANSFORMER, "albert": TRANSFORMER, "vit": TRANSFORMER,
    "swin": TRANSFORMER, "gpt2": TRANSFORMER, "llama": TRANSFORMER, "llama-gqa": TRANSFORMER,
    "t5-encoder": TRANSFORMER, "resnet": CNN, "convnext": ("unstructured", "neuron", "channel", "layer"),
    "mobilenet-v2": CNN, "efficientnet": CNN, "monai-unet": SEGMENTATION,
    "monai-basic-unet": SEGMENTATION, "monai-densenet": SEGMENTATION, "monai-segresnet": CNN,
}  # fmt: skip

#: (architecture, granularity) -> "prunes" or a phrase of the refusal's message
EXPECTED = {(arch, granularity): PRUNES for arch, granularities in APPLICABLE.items() for granularity in granularities}
EXPECTED |= {
    ("convnext", "channel"): "normalises these units together",
    ("albert", "layer"): "its weights are shared across depth",
}

FAMILY = {
    "bert": "BERT", "distilbert": "DistilBERT", "albert": "ALBERT", "vit": "ViT", "swin": "Swin",
    "gpt2": "GPT-2", "llama": "Llama", "llama-gqa": "Llama (GQA)", "t5-encoder": "T5 encoder",
    "resnet": "ResNet", "convnext": "ConvNeXt", "mobilenet-v2": "MobileNetV2", "efficientnet": "EfficientNet",
    "monai-unet": "MONAI UNet", "monai-basic-unet": "MONAI BasicUNet", "monai-densenet": "MONAI DenseNet",
    "monai-segresnet": "MONAI SegResNet",
}  # fmt: skip
COLUMNS = ("unstructured", "neuron", "channel", "head", "layer")


def render_table() -> str:
    """The README table: one row per architecture, one column per granularity."""
    lines = ["| architecture | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for arch in BUILDERS:
        cells = []
        for granularity in COLUMNS:
            expected = EXPECTED.get((arch, granularity))
            cells.append("-" if expected is None else "yes" if expected == PRUNES else f"refused: {expected}")
        lines.append(f"| {FAMILY[arch]} | " + " | ".join(cells) + " |")
    working = sum(value == PRUNES for value in EXPECTED.values())
    lines.append("")
    lines.append(f"{working} of {len(EXPECTED)} applicable cells prune correctly; '-' = not applicable.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_table())
