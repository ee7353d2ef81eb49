"""Prune while training under DistributedDataParallel: one process per CPU core or per GPU.

    .venv/bin/torchrun --nproc_per_node 2 examples/ddp_prune.py     # gloo, on CPU
    torchrun --nproc_per_node NGPU examples/ddp_prune.py             # nccl, one GPU per process

Every rank trains on its own shard of the bundled digits (``DistributedSampler``) and scores
weights on its own calibration shard; prunekit sums the gradient statistics over the ranks, so
every rank prunes the same weights, and checks that the masks agree at every pruning step.
The Pruner is built on the plain model *before* it is wrapped in DistributedDataParallel.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler

import prunekit
from prunekit.data import load_dataset, make_loader
from prunekit.schedules import Polynomial
from prunekit.training import evaluate
from prunekit.zoo import build_model

EPOCHS = 8
SPARSITY = 0.9


def main() -> None:
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    splits = load_dataset("digits")
    sampler = DistributedSampler(splits.train, shuffle=True, seed=0)  # a different shard on every rank
    loader = DataLoader(splits.train, batch_size=32, sampler=sampler)
    calibration = DataLoader(splits.train, batch_size=64, sampler=DistributedSampler(splits.train, shuffle=False))
    steps = EPOCHS * len(loader)

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = build_model("lenet300", splits.input_shape, splits.num_classes).to(device)
    pruner = prunekit.Pruner(
        model, "taylor", SPARSITY, scope="global", data=calibration, num_batches=4,
        schedule=Polynomial(begin_step=steps // 4, end_step=3 * steps // 4, frequency=max(steps // 16, 1)),
    )
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # after the Pruner: its masks are already attached
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)

    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        for inputs, targets in loader:
            loss = F.cross_entropy(ddp(inputs.to(device)), targets.to(device)) + pruner.penalty()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            pruner.step()  # every rank steps: the statistics are summed over ranks

    report = pruner.sparsity
    pruner.finalize()  # a plain model with the zeros baked in (wrap it again to keep training)
    if dist.get_rank() == 0:
        accuracy = evaluate(model, make_loader(splits.test, batch_size=256, shuffle=False))
        print(f"{dist.get_world_size()} ranks: sparsity {report.achieved:.2f} (target {report.target}), "
              f"test accuracy {accuracy:.2%}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
