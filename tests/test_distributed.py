"""prunekit under torch.distributed: two real processes (gloo on CPU), each with its own shard.

The reference is one process given the union of both shards: the statistics every collector
returns on each rank, and the masks every pruning step of a Pruner inside a
DistributedDataParallel training loop computes, must equal what that process computes
(from the same weights and masks). Masks and sparsity must be the same on both ranks at every
pruning step, and a disagreement must raise on every rank, before the model changes, instead of
training two models.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)
from prunekit import Pruner, PrunekitError, apply_masks, get_masks, prune
from prunekit.distributed import all_reduce_mean, all_reduce_sum, masks_agree
from prunekit.graph.heads import find_head_groups
from prunekit.masking import named_effective_parameters, original_parameter
from prunekit.schedules import Iterative, OneShot, Polynomial
from prunekit.stats import ActivationPoint, collect
from prunekit.zoo import build_model

WORLD = 2
EXAMPLE = torch.zeros(2, 6)
#: name -> (method, granularity, scope, sparsity, schedule); each runs in a DDP loop on both ranks
RUNS = {
    "unstructured taylor, polynomial": ("taylor", "unstructured", "global", 0.6,
                                        Polynomial(begin_step=1, end_step=5, frequency=2)),
    "neuron taylor, one-shot": ("taylor", "neuron", "layer", 0.4, OneShot(at_step=3)),
    "unstructured gradient, iterative": ("gradient", "unstructured", "layer", 0.5, Iterative(levels=2, every=3)),
    "unstructured random": ("random", "unstructured", "layer", 0.5, OneShot(at_step=2)),
}


def _seeded(build):
    """`build()` with torch seeded: every rank builds the same weights, as DDP requires (the
    global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def _mlp() -> nn.Sequential:
    return _seeded(lambda: nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)))


def _shard(rank: int) -> list:
    """Each rank's own calibration data; the ranks get different numbers and sizes of batches,
    so only a properly weighted reduction equals the union."""
    generator = torch.Generator().manual_seed(100 + rank)
    sizes = [8, 8, 8] if rank == 0 else [5, 5]
    return [(torch.randn(size, 6, generator=generator), torch.randint(0, 3, (size,), generator=generator))
            for size in sizes]


def _union() -> list:
    return _shard(0) + _shard(1)


def _training_batches(rank: int) -> list:
    generator = torch.Generator().manual_seed(200 + rank)
    return [(torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator))
            for _ in range(7)]


def _attention_batches(rank: int) -> list:
    generator = torch.Generator().manual_seed(300 + rank)
    shapes = [(2, 3), (1, 4)] if rank == 0 else [(1, 5)]  # different token counts per rank
    return [(torch.randn(batch, tokens, 8, generator=generator), None) for batch, tokens in shapes]


def _residual_batches(rank: int) -> list:
    generator = torch.Generator().manual_seed(400 + rank)
    return [(torch.randn(4, 1, 8, 8, generator=generator), torch.randint(0, 10, (4,), generator=generator))
            for _ in range(2 - rank)]


def _statistics(shard: list, attention_batches: list, residual_batches: list) -> dict:
    """What every collector returns on these batches (collectors reduce over ranks themselves)."""
    model = _mlp()
    attention = _seeded(lambda: nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True).eval())
    resnet = _seeded(lambda: build_model("resnet20", (1, 8, 8), 10).eval())
    return {
        "weight-gradients": collect("weight-gradients", model, ["0.weight", "2.weight"], shard, num_batches=8),
        "activation-gradients": collect("activation-gradients", model, [ActivationPoint("0", -1)], shard,
                                        num_batches=8),
        "head-outputs": collect("head-outputs", attention, find_head_groups(attention), attention_batches),
        "removal-loss": collect("removal-loss", resnet, ["layer1.1", "layer3.2"], residual_batches),
    }


def _weights(model: nn.Module) -> dict:
    return {name: original_parameter(model, name).detach().clone() for name, _ in named_effective_parameters(model)}


def _train_and_prune(rank: int, method, granularity, scope, sparsity, schedule) -> dict:
    """A DDP training loop with a Pruner stepped after every optimiser step; records each
    pruning step's starting point (weights, masks) and outcome (masks, sparsity)."""
    model = _mlp()
    shard = _shard(rank)
    pruner = Pruner(model, method, sparsity, granularity=granularity, scope=scope, schedule=schedule, data=shard,
                    example_inputs=EXAMPLE, num_batches=len(shard))
    ddp = nn.parallel.DistributedDataParallel(model)  # after the Pruner: its masks are in place
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    passes = []
    for step, (inputs, targets) in enumerate(_training_batches(rank)):
        F.cross_entropy(ddp(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
        start = (_weights(model), get_masks(model))
        result = pruner.step()
        if result is not None:
            passes.append({"step": step, "target": result.sparsity_target, "weights": start[0],
                           "masks_before": start[1], "masks": get_masks(model), "sparsity": pruner.sparsity})
    return {"passes": passes, "effective": {name: tensor.detach().clone()
                                            for name, tensor in named_effective_parameters(model)}}


def _helpers(rank: int) -> dict:
    """The reduction helpers on hand-made values (rank 0 holds 0, rank 1 holds 1)."""
    value = float(rank)
    return {
        "sum": all_reduce_sum({"sums": [torch.full((2,), value), torch.tensor([rank], dtype=torch.int32)],
                               "count": rank + 1, "pair": (value, torch.ones(1, dtype=torch.float16))}),
        "mean": all_reduce_mean({"grad_abs": torch.full((3,), value)}, weight=rank + 1),
        "same masks agree": masks_agree({"w": torch.ones(3, dtype=torch.bool)}),
        "different masks agree": masks_agree({"w": torch.tensor([True, bool(rank), True])}),
    }


def _errors(rank: int) -> dict:
    """The messages of what must fail on every rank (instead of hanging or diverging)."""
    messages = {}
    model = _mlp()
    pruner = Pruner(model, "random", 0.5, seed=rank)  # different scores on each rank
    try:
        pruner.step()
    except PrunekitError as error:
        messages["random with a different seed per rank"] = (str(error), get_masks(model))
    try:
        Pruner(nn.parallel.DistributedDataParallel(_mlp()), "magnitude", 0.5)
    except PrunekitError as error:
        messages["DDP wrapper"] = (str(error), None)
    try:
        all_reduce_sum({f"only on rank {rank}": torch.ones(2)})
    except PrunekitError as error:
        messages["different structure"] = (str(error), None)
    return messages


def _worker(rank: int, folder) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))  # a collective one rank never reaches fails, not hangs
    try:
        record = {
            "statistics": _statistics(_shard(rank), _attention_batches(rank), _residual_batches(rank)),
            "runs": {name: _train_and_prune(rank, *spec) for name, spec in RUNS.items()},
            "helpers": _helpers(rank),
            "errors": _errors(rank),
        }
        torch.save(record, folder / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _assert_close(actual, expected, where: str) -> None:
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), where
        for key in expected:
            _assert_close(actual[key], expected[key], f"{where}/{key}")
    else:
        torch.testing.assert_close(torch.as_tensor(actual), torch.as_tensor(expected), rtol=1e-5, atol=1e-7,
                                   msg=lambda message: f"{where}: {message}")


def _full(masks: dict, shapes: dict) -> dict:
    """Masks for every parameter (all-True where none is attached), to compare runs that attach
    all-True masks early (under torch.distributed) with runs that do not."""
    return {name: masks[name].cpu() if name in masks else torch.ones(shape, dtype=torch.bool)
            for name, shape in shapes.items()}


def _reference_masks(spec: tuple, one_pass: dict) -> dict:
    """The masks one process computes for this pruning step on the union of both shards."""
    method, granularity, scope, _, _ = spec
    model = _mlp()
    with torch.no_grad():
        for name, values in one_pass["weights"].items():
            original_parameter(model, name).copy_(values)
    apply_masks(model, {name: mask for name, mask in one_pass["masks_before"].items() if not bool(mask.all())})
    union = _union()
    prune(model, method, one_pass["target"], granularity=granularity, scope=scope, data=union,
          example_inputs=EXAMPLE, num_batches=len(union), remove=False)
    return get_masks(model)


def test_two_ranks_prune_exactly_like_one_process_on_the_union(tmp_path):
    mp.spawn(_worker, args=(tmp_path,), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]

    reference = _statistics(_union(), _attention_batches(0) + _attention_batches(1),
                            _residual_batches(0) + _residual_batches(1))
    for record in ranks:
        _assert_close(record["statistics"], reference, "statistics")

    shapes = {name: tensor.shape for name, tensor in named_effective_parameters(_mlp())}
    for name, spec in RUNS.items():
        first, second = (record["runs"][name] for record in ranks)
        steps = [one_pass["step"] for one_pass in first["passes"]]
        assert steps == [one_pass["step"] for one_pass in second["passes"]], name
        assert len(steps) == (3 if "polynomial" in name else 2 if "iterative" in name else 1), (name, steps)
        for pass_0, pass_1 in zip(first["passes"], second["passes"]):
            where = f"{name}, step {pass_0['step']}"
            assert pass_0["sparsity"] == pass_1["sparsity"], where
            masks_0, masks_1 = _full(pass_0["masks"], shapes), _full(pass_1["masks"], shapes)
            expected = _full(_reference_masks(spec, pass_0), shapes)
            for param in shapes:
                assert torch.equal(masks_0[param], masks_1[param]), f"{where}: ranks differ on {param}"
                assert torch.equal(masks_0[param], expected[param]), f"{where}: {param} differs from one process"
        assert first["passes"][-1]["sparsity"].achieved > 0.3, name
        for param, values in first["effective"].items():  # DDP kept the weights equal, pruned ones at zero
            assert torch.equal(values, second["effective"][param]), f"{name}: weights of {param} differ"
            assert not bool(values[~_full(first["passes"][-1]["masks"], shapes)[param]].any()), name

    for record in ranks:
        helpers = record["helpers"]
        assert torch.equal(helpers["sum"]["sums"][0], torch.ones(2))
        assert helpers["sum"]["sums"][1].dtype == torch.int32 and helpers["sum"]["sums"][1].tolist() == [1]
        assert helpers["sum"]["count"] == 3 and isinstance(helpers["sum"]["count"], int)
        assert helpers["sum"]["pair"][0] == 1.0 and helpers["sum"]["pair"][1].dtype == torch.float16
        assert float(helpers["sum"]["pair"][1]) == 2.0
        torch.testing.assert_close(helpers["mean"]["grad_abs"], torch.full((3,), 2 / 3))  # (0 * 1 + 1 * 2) / 3
        assert helpers["same masks agree"] and not helpers["different masks agree"]
        errors = record["errors"]
        message, masks = errors["random with a different seed per rank"]
        assert "differ between the 2 torch.distributed ranks" in message and "'0.weight'" in message, message
        assert all(bool(mask.all()) for mask in masks.values()), "a refused pass changed the masks"
        assert "prune the model inside it" in errors["DDP wrapper"][0]
        assert "differ from another rank's" in errors["different structure"][0]


def test_a_data_parallel_wrapper_is_refused_with_the_supported_pattern():
    model = _mlp()
    with pytest.raises(PrunekitError, match=r"pruner = Pruner\(model, \.\.\.\); wrapped = DataParallel\(model\)"):
        Pruner(nn.DataParallel(model), "magnitude", 0.5)
    assert get_masks(model) == {}


def test_helpers_do_nothing_in_one_process():
    tree = {"sums": [torch.ones(2)], "count": 3}
    assert all_reduce_sum(tree) is tree
