"""Shared pieces of the framework-integration tests: a tiny classifier, its data, two schedules,
the targets a hand-stepped Pruner reaches, and the check that pruned weights stay at zero."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch
from torch import nn
from torch.utils.data import TensorDataset

import prunekit
from prunekit.schedules import Iterative, Polynomial

STEPS = 8  # optimizer steps in one epoch: 64 examples, batches of 8
SCHEDULES = [Polynomial(begin_step=0, end_step=4, frequency=2), Iterative(levels=2, every=3)]


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def tiny_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(64, 6, generator=generator), torch.randint(0, 3, (64,), generator=generator))


def reference_targets(schedule) -> list[float | None]:
    """The target after each of STEPS hand-called pruner.step()s on an untrained copy."""
    pruner = prunekit.Pruner(tiny_net(), "magnitude", 0.75, schedule=schedule)
    targets = []
    for _ in range(STEPS):
        pruner.step()
        targets.append(pruner.sparsity.target)
    return targets


def assert_held_at_zero(net: nn.Module, masks_at_end_of_ramp: dict) -> None:
    """The masks did not change after the last pruning step and the pruned weights are still zero."""
    final = prunekit.get_masks(net)
    assert final.keys() == masks_at_end_of_ramp.keys()
    for name, keep in final.items():
        assert torch.equal(keep, masks_at_end_of_ramp[name]), name
        module_name, _, tensor_name = name.rpartition(".")
        assert not getattr(net.get_submodule(module_name), tensor_name)[~keep].any(), name




def load_example(name: str) -> ModuleType:
    """examples/<name>.py as a module (the examples are scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
