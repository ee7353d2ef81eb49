"""Every (third-party architecture, granularity) cell prunes correctly or refuses as pinned.

"Prunes correctly": the forward pass works, the output keeps its shape, the parameter count drops
(nonzero weights, for unstructured) and removing units gives what masking them gives. "Refuses": a
PrunekitError whose message says why, and the model bit-identical. No cell may hang.
"""

from __future__ import annotations

import copy
import signal
from contextlib import contextmanager

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("monai")

import prunekit  # noqa: E402
from coverage_matrix import BUILDERS, EXPECTED, PRUNES, render_table  # noqa: E402
from prunekit.inputs import as_call, model_outputs  # noqa: E402

SPARSITY = {"unstructured": 0.5, "neuron": 0.3, "channel": 0.3, "head": 0.5, "layer": 0.5}
_MODELS: dict = {}


@contextmanager
def _no_hang(seconds: int = 60):
    def fail(*_):
        raise AssertionError(f"the call did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _model(arch: str):
    if arch not in _MODELS:
        torch.manual_seed(0)
        model, inputs = BUILDERS[arch]()
        _MODELS[arch] = (model.eval(), inputs)
    model, inputs = _MODELS[arch]
    return copy.deepcopy(model), inputs


def _outputs(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for t in model_outputs(as_call(inputs)(model)) if t.is_floating_point()]


def _prune(model, inputs, granularity: str, remove: bool = True):
    # the granularity's default criterion, except for layers: theirs (removal-cost) needs a loss
    # on labelled data, and which blocks go does not change whether removing them is consistent
    method = "random" if granularity == "layer" else None
    return prunekit.prune(model, method, sparsity=SPARSITY[granularity], granularity=granularity,
                          example_inputs=inputs, remove=remove)  # fmt: skip


def _check_prunes(arch: str, granularity: str) -> None:
    dense, inputs = _model(arch)
    expected = _outputs(dense, inputs)
    pruned, _ = _model(arch)
    with _no_hang():
        result = _prune(pruned, inputs, granularity)
    got = _outputs(pruned, inputs)
    assert [t.shape for t in got] == [t.shape for t in expected]
    total_before, nonzero_before = prunekit.count_params(dense)
    total_after, nonzero_after = prunekit.count_params(pruned)
    if granularity == "unstructured":
        assert nonzero_after < nonzero_before and result.sparsity_achieved == pytest.approx(SPARSITY["unstructured"], abs=0.01)
        baked = prunekit.bake(copy.deepcopy(pruned))  # what the masks compute is what is saved
        reference = _outputs(baked, inputs)
    elif granularity == "layer":
        assert total_after < total_before, f"{arch}: no block was removed"
        reference = _skipping(arch, inputs, [step["group"] for step in result.shrink_record.steps])
    else:
        assert total_after < total_before, f"{arch} {granularity}: no parameter was removed"
        masked, _ = _model(arch)
        _prune(masked, inputs, granularity, remove=False)
        reference = _outputs(masked, inputs)
    for got_tensor, reference_tensor in zip(got, reference):
        scale = max(1.0, float(reference_tensor.abs().max()))
        assert torch.allclose(got_tensor, reference_tensor, atol=1e-4 * scale), f"{arch} {granularity}: removal != masking"


def _skipping(arch: str, inputs, blocks: list[str]) -> list[torch.Tensor]:
    """Outputs of the dense model with `blocks` bypassed by hooks (each returns its input): what
    removing them must compute. Post-norm blocks have no masked equivalent, so this is the reference."""
    dense, _ = _model(arch)

    def bypass(module, args, kwargs, output):
        hidden = args[0] if args else next(iter(kwargs.values()))
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    for name in blocks:
        dense.get_submodule(name).register_forward_hook(bypass, with_kwargs=True)
    return _outputs(dense, inputs)


def _check_refuses(arch: str, granularity: str, phrase: str) -> None:
    model, inputs = _model(arch)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with _no_hang(), pytest.raises(prunekit.PrunekitError, match=phrase):
        _prune(model, inputs, granularity)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize(("arch", "granularity"), sorted(EXPECTED), ids=lambda value: str(value))
def test_cell(arch: str, granularity: str) -> None:
    expected = EXPECTED[(arch, granularity)]
    if expected == PRUNES:
        _check_prunes(arch, granularity)
    else:
        _check_refuses(arch, granularity, expected)


def test_at_least_90_percent_of_cells_prune() -> None:
    working = sum(value == PRUNES for value in EXPECTED.values())
    assert working >= 0.9 * len(EXPECTED)


def test_readme_table_is_the_pinned_matrix() -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert render_table() in readme, "regenerate the README table: .venv/bin/python tests/coverage_matrix.py"
