"""prunekit: prune trained PyTorch models and measure what it bought.

>>> import torch, prunekit
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> round(prunekit.prune(model, method="magnitude", sparsity=0.5).sparsity_achieved, 2)
0.5
"""

from prunekit.allocation import allocate, prune_to_budget
from prunekit.budget import Allocation, Budget
from prunekit.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from prunekit.criteria import CRITERIA, get_criterion
from prunekit.deploy.onnx_export import OnnxExport, export_onnx
from prunekit.deploy.sparse_inference import SparseInferenceResult, sparse_inference
from prunekit.deploy.storage import StorageReport, compress_checkpoint, save_compressed
from prunekit.errors import PrunekitError
from prunekit.granularity import GRANULARITIES, get_granularity
from prunekit.masking import apply_masks, bake, get_masks
from prunekit.metrics import count_macs, count_params, measure_latency, summary
from prunekit.one_shot import SparseGPTConfig, sparsegpt_prune
from prunekit.predictor import MaskPredictor, PredictorConfig
from prunekit.pruner import Pruner, finalize, prune, remove_masked_units
from prunekit.request import PruneOptions
from prunekit.recovery import Distillation
from prunekit.regularizers import BNScale, GroupLasso, L0, L1
from prunekit.schedules import GradientThreshold, Iterative, Lottery, OneShot, Polynomial, Schedule
from prunekit.search import SparsitySearch, search_sparsity
from prunekit.select import SelectionRule, lamp_scores, select, select_by_ratio, select_by_threshold
from prunekit.sensitivity import SensitivityResult, layer_sensitivity, load_sensitivity
from prunekit.stats import collect, collect_gradient_stats
from prunekit.types import PruneResult, SparsityReport

__version__ = "0.1.0"

__all__ = [
    "CRITERIA",
    "GRANULARITIES",
    "Allocation",
    "ArchSpec",
    "BNScale",
    "Budget",
    "Distillation",
    "GradientThreshold",
    "GroupLasso",
    "Iterative",
    "L0",
    "L1",
    "Lottery",
    "MaskPredictor",
    "OneShot",
    "OnnxExport",
    "Polynomial",
    "PredictorConfig",
    "PruneOptions",
    "PruneResult",
    "Pruner",
    "PrunekitError",
    "Schedule",
    "SelectionRule",
    "SensitivityResult",
    "SparseGPTConfig",
    "SparseInferenceResult",
    "SparsityReport",
    "SparsitySearch",
    "StorageReport",
    "allocate",
    "apply_masks",
    "bake",
    "collect",
    "collect_gradient_stats",
    "compress_checkpoint",
    "count_macs",
    "count_params",
    "export_onnx",
    "finalize",
    "get_criterion",
    "get_granularity",
    "get_masks",
    "lamp_scores",
    "layer_sensitivity",
    "load_checkpoint",
    "load_sensitivity",
    "measure_latency",
    "prune",
    "prune_to_budget",
    "remove_masked_units",
    "save_checkpoint",
    "save_compressed",
    "search_sparsity",
    "select",
    "select_by_ratio",
    "select_by_threshold",
    "sparsegpt_prune",
    "sparse_inference",
    "summary",
]
