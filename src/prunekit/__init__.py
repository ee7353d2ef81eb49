"""prunekit: prune trained PyTorch models and measure what it bought.

>>> import torch, prunekit
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> round(prunekit.prune(model, method="magnitude", sparsity=0.5).sparsity_achieved, 2)
0.5
"""

from prunekit.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from prunekit.errors import PrunekitError
from prunekit.masking import apply_masks, bake, get_masks
from prunekit.metrics import count_macs, count_params, measure_latency, summary
from prunekit.pruner import compute_scores, prune
from prunekit.select import select_by_ratio, select_by_threshold
from prunekit.stats import collect_gradient_stats
from prunekit.types import PruneResult

#: ``finalize`` is the same operation as :func:`bake`: make masks permanent, return a plain module.
finalize = bake

__version__ = "0.1.0"

__all__ = [
    "ArchSpec",
    "PruneResult",
    "PrunekitError",
    "apply_masks",
    "bake",
    "collect_gradient_stats",
    "compute_scores",
    "count_macs",
    "count_params",
    "finalize",
    "get_masks",
    "load_checkpoint",
    "measure_latency",
    "prune",
    "save_checkpoint",
    "select_by_ratio",
    "select_by_threshold",
    "summary",
]
