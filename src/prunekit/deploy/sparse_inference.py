"""Real CPU speed from unstructured sparsity: swap sparse Linear layers for sparse kernels
wherever that is measured to be faster on this machine, and never return a slower model.

:func:`sparse_inference` works on a copy of the model (masks baked in). Layer by layer, in the
order they run, every ``nn.Linear`` whose weight is at least `min_sparsity` zeros is timed
against :class:`~prunekit.deploy.sparse_linear.SparseLinear` with each sparse kernel
(:func:`~prunekit.deploy.layer_timing.time_layers`), on the input it really gets from the layers
before it as converted so far (captured with a forward hook), at the row count of each example
input. A layer gets, per row count, the fastest kernel if that beats dense by
``TimingConfig.margin``, else dense. Then the whole converted model is timed against the dense
copy (:func:`prunekit.metrics.paired_latency`) on each example input and, unless it is faster
on all of them, the dense copy is returned. Every decision, with its timings, is in the result
as plain data.

Timings depend on the batch size and thread count: convert with example inputs shaped like the
ones you will serve, under the thread count you will serve with (it is left as you set it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.deploy.layer_timing import TimingConfig, time_layers
from prunekit.deploy.native_kernel import native_kernel_status
from prunekit.deploy.sparse_linear import SPARSE_KERNELS, SparseLinear
from prunekit.errors import PrunekitError
from prunekit.inputs import batch_size, call_model, model_outputs
from prunekit.masking import bake, copy_model
from prunekit.metrics import paired_latency
from prunekit.state import preserved_modes

__all__ = ["LayerDecision", "ModelTiming", "SparseInferenceResult", "TimingConfig", "sparse_inference"]


@dataclass
class LayerDecision:
    """What became of one ``nn.Linear``. ``kernels`` maps the row counts it was timed at to the
    kernel chosen there (empty: the layer stayed an ``nn.Linear``); ``timings_us`` holds the
    microseconds per call of ``"dense"`` and each sparse kernel at each row count."""

    name: str
    shape: tuple[int, int]  # (out_features, in_features)
    sparsity: float
    reason: str
    kernels: dict[int, str] = field(default_factory=dict)
    timings_us: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def kernel(self) -> str:
        """``"dense"``, one kernel's name, or ``"rows:kernel ..."`` when it depends on the rows."""
        chosen = set(self.kernels.values())
        if chosen <= {"dense"}:
            return "dense"
        if len(chosen) == 1:
            return chosen.pop()
        return " ".join(f"{rows}:{kernel}" for rows, kernel in self.kernels.items())


@dataclass(frozen=True)
class ModelTiming:
    """Latency (ms) of the dense copy and the converted model on one example input."""

    batch_size: int
    dense_ms: float
    converted_ms: float

    @property
    def speedup(self) -> float:
        """Dense over converted latency."""
        return self.dense_ms / self.converted_ms


@dataclass
class SparseInferenceResult:
    """The model to run and why it looks the way it does.

    ``model`` is a new module in eval mode (the caller's is never changed). ``timings`` has one
    entry per example input (empty when nothing was converted or ``kernel`` was forced);
    ``kept_dense`` is True when the converted model was not faster on every example input, or
    did not run, and the dense copy was returned instead. ``notes`` says what was left out of
    the choice (the compiled kernel, where it cannot be built here).
    """

    model: nn.Module
    layers: list[LayerDecision]
    timings: list[ModelTiming]
    kept_dense: bool
    max_abs_difference: float
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        """Dense over converted latency on the first example input (None when not timed)."""
        return self.timings[0].speedup if self.timings else None

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, as JSON-serialisable data.

        >>> result = sparse_inference(nn.Linear(4, 2), torch.ones(1, 4))
        >>> result.to_dict()["layers"][0]["kernel"], result.to_dict()["kept_dense"]
        ('dense', False)
        """
        layers = [{**asdict(layer), "kernel": layer.kernel} for layer in self.layers]
        timings = [{**asdict(timing), "speedup": timing.speedup} for timing in self.timings]
        return {"layers": layers, "timings": timings, "kept_dense": self.kept_dense,
                "max_abs_difference": self.max_abs_difference, "speedup": self.speedup,
                "notes": list(self.notes)}

    def __str__(self) -> str:
        lines = [f"{'layer':<20} {'shape':>9} {'sparsity':>8} {'kernel':>10}  reason (us per call)"]
        for layer in self.layers:
            shape = f"{layer.shape[0]}x{layer.shape[1]}"
            times = "; ".join(
                f"rows {rows}: " + " ".join(f"{k} {us:.1f}" for k, us in by_kernel.items())
                for rows, by_kernel in layer.timings_us.items())
            lines.append(f"{layer.name:<20} {shape:>9} {layer.sparsity:>8.1%} {layer.kernel:>10}  "
                         f"{layer.reason}" + (f" ({times})" if times else ""))
        for timing in self.timings:
            lines.append(f"batch {timing.batch_size}: dense {timing.dense_ms:.3f} ms, converted "
                         f"{timing.converted_ms:.3f} ms ({timing.speedup:.2f}x)")
        if self.kept_dense:
            lines.append("kept dense: the converted model was not faster on every example input")
        return "\n".join([*lines, *self.notes])


def sparse_inference(
    model: nn.Module,
    example_inputs: Any,
    min_sparsity: float = 0.5,
    *,
    also_on: Sequence[Any] = (),
    kernel: str = "auto",
    timing: TimingConfig | None = None,
) -> SparseInferenceResult:
    """A copy of `model` whose sparse ``nn.Linear`` layers run sparse kernels where that is faster.

    `model` (plain, masked or baked) is left unchanged; ``result.model`` is a new module.
    ``kernel="auto"`` times each layer dense and with each sparse kernel (``"csr"``, ``"bag"``,
    and prunekit's compiled ``"native"`` where it can be built) at the row counts it sees on
    `example_inputs` and on every input in `also_on` (other batch sizes the model must not be
    slower at: each layer picks a kernel per row count, see :class:`SparseLinear`), then times
    the whole model on each. A kernel's name converts every layer of at least `min_sparsity` with that kernel and
    times nothing (for tests, or where timing is not wanted). Only layers whose ``forward`` runs
    on the examples are considered (attention modules that read ``out_proj.weight`` themselves
    keep theirs). Outputs match the dense model up to float summation order; the largest
    difference on the examples is ``result.max_abs_difference``.

    >>> model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> with torch.no_grad():
    ...     model[0].weight[:, 2:] = 0
    >>> result = sparse_inference(model, torch.randn(4, 16), kernel="bag")
    >>> [(layer.name, layer.kernel) for layer in result.layers]
    [('0', 'bag'), ('2', 'dense')]
    >>> type(result.model[0]).__name__, type(model[0]).__name__
    ('SparseLinear', 'Linear')
    """
    timing = TimingConfig() if timing is None else timing
    examples = [example_inputs, *also_on]
    _check_arguments(model, min_sparsity, kernel, timing)
    dense = bake(copy_model(model)).eval()
    run_order = list(_capture_layer_inputs(dense, examples, _linears(dense), keep_inputs=False))
    converted, decided = copy_model(dense), {}
    failure = _convert_in_order(converted, run_order, examples, (min_sparsity, kernel, timing),
                                decided)
    failure = failure or _runs_with_views_or_without(converted, examples)
    decisions = [decided.get(name) or _not_run(name, layer) for name, layer in _linears(dense)]
    notes = _notes(kernel)
    if failure is not None:
        _revert(decisions, f"the converted model failed on the examples ({failure})")
        return SparseInferenceResult(dense, decisions, [], True, 0.0, notes)
    difference = max(_max_abs_difference(dense, converted, x) for x in examples)
    if kernel != "auto" or all(d.kernel == "dense" for d in decisions):
        return SparseInferenceResult(converted, decisions, [], False, difference, notes)
    timings = [ModelTiming(batch_size(x), *paired_latency(dense, converted, x, timing.model_rounds,
                                                          timing.model_repeats)) for x in examples]
    if all(t.converted_ms < t.dense_ms for t in timings):
        return SparseInferenceResult(converted, decisions, timings, False, difference, notes)
    _revert(decisions, "the converted model was not faster on every example input")
    return SparseInferenceResult(dense, decisions, timings, True, 0.0, notes)


def _notes(kernel: str) -> list[str]:
    status = native_kernel_status() if kernel == "auto" else None
    return [] if status is None else [f"the compiled kernel was not timed: {status}"]


def _convert_in_order(model: nn.Module, run_order: list[str], examples: list[Any],
                      settings: tuple[float, str, TimingConfig],
                      decided: dict[str, LayerDecision]) -> str | None:
    """Decide layer by layer in the order they run, each on the input it gets from the layers
    before it as converted so far (a sparse layer hands on a transposed view, which changes
    what the next layer costs). Fills `decided`; returns why the model failed, or None."""
    for name in run_order:
        try:
            inputs = _layer_inputs(model, name, examples)
        except PrunekitError as error:
            return str(error)
        if not inputs:  # the converted layers before it changed the path the model takes
            return f"'{name}' no longer runs once the layers before it are converted"
        decision, replacement = _decide(name, model.get_submodule(name), inputs, *settings)
        decided[name] = decision
        if replacement is not None:
            _swap(model, {name: replacement})
    return None


def _layer_inputs(model: nn.Module, name: str, examples: list[Any]) -> dict[int, torch.Tensor]:
    """The inputs of layer `name` in the partly converted `model`; the sparse layers' views are
    turned off if the model fails with them."""
    layer = [(name, model.get_submodule(name))]
    try:
        return _capture_layer_inputs(model, examples, layer).get(name, {})
    except PrunekitError:
        _set_views(model, False)
        return _capture_layer_inputs(model, examples, layer).get(name, {})


def _set_views(model: nn.Module, views: bool) -> None:
    for module in model.modules():
        if isinstance(module, SparseLinear):
            module.transposed_output = views


def _not_run(name: str, layer: nn.Linear) -> LayerDecision:
    weight = layer.weight.detach()
    sparsity = float((weight == 0).sum()) / max(weight.numel(), 1)
    return LayerDecision(name, (weight.shape[0], weight.shape[1]), sparsity,
                         "its forward did not run on the examples")


def _revert(decisions: list[LayerDecision], reason: str) -> None:
    for decision in decisions:
        if decision.kernel != "dense":
            decision.kernels = {rows: "dense" for rows in decision.kernels}
            decision.reason = f"{decision.reason}, but {reason}: kept dense"


def _check_arguments(model: nn.Module, min_sparsity: float, kernel: str, timing: TimingConfig) -> None:
    if not isinstance(model, nn.Module):
        raise PrunekitError(f"sparse_inference converts an nn.Module, got {type(model).__name__}")
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) \
            or not 0 <= min_sparsity <= 1:
        raise PrunekitError(f"min_sparsity must be a fraction in [0, 1], got {min_sparsity!r}")
    if kernel != "auto" and kernel not in SPARSE_KERNELS:
        raise PrunekitError(
            f"unknown kernel {kernel!r}; choose auto, {', '.join(SPARSE_KERNELS)}")
    if kernel == "native" and native_kernel_status() is not None:
        raise PrunekitError(
            f"kernel='native' asks for prunekit's compiled kernel, which is not available here: "
            f"{native_kernel_status()}; use kernel='auto' (it times the others) or 'bag'")
    timing.check()
    if not any(True for _ in _linears(model)):
        raise PrunekitError(
            "the model has no nn.Linear layer; sparse_inference runs sparse Linear layers "
            "(convolutions and other layers stay as they are)"
        )
    devices = {tensor.device.type for tensor in [*model.parameters(), *model.buffers()]}
    if devices - {"cpu"}:
        raise PrunekitError(
            f"sparse_inference chooses CPU kernels, but the model has tensors on "
            f"{', '.join(sorted(devices - {'cpu'}))}; move it with model.cpu() first"
        )


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Plain ``nn.Linear`` layers (subclasses such as attention's out_proj or LoRA layers may
    compute something else, so they are left alone), masked ones included."""
    found = []
    for name, module in model.named_modules():
        cls = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
        if cls is nn.Linear:
            found.append((name, module))
    return found


def _capture_layer_inputs(model: nn.Module, examples: list[Any], layers: list[tuple[str, nn.Module]],
                          keep_inputs: bool = True) -> dict[str, dict[int, torch.Tensor | None]]:
    """For each of `layers` that runs, in the order they first run: the first input its forward
    receives at each row count (rows = the input flattened to ``(rows, in_features)``) while
    `model` runs each of the `examples` (None for each unless `keep_inputs`)."""
    captured: dict[str, dict[int, torch.Tensor | None]] = {}

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].shape[-1] == module.in_features:
                rows = args[0].numel() // max(module.in_features, 1)
                kept = args[0].detach().clone() if keep_inputs else None
                captured.setdefault(name, {}).setdefault(rows, kept)
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(name)) for name, layer in layers]
    try:
        with torch.inference_mode():
            for index, example in enumerate(examples):
                _run_example(model, example, index)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _run_example(model: nn.Module, example: Any, index: int) -> None:
    which = "example_inputs" if index == 0 else f"also_on[{index - 1}]"
    try:
        call_model(model, example)
    except PrunekitError:
        raise
    except Exception as error:
        raise PrunekitError(
            f"the model failed on {which} ({type(error).__name__}: {error}); pass inputs that "
            "model(...) accepts, shaped like the ones you will run it on"
        ) from error


def _decide(name: str, layer: nn.Linear, inputs_by_rows: dict[int, torch.Tensor],
            min_sparsity: float, kernel: str, timing: TimingConfig
            ) -> tuple[LayerDecision, SparseLinear | None]:
    """Keep `layer` dense or build its SparseLinear, timed on its inputs if `kernel` is auto."""
    weight = layer.weight.detach()
    sparsity = float((weight == 0).sum()) / max(weight.numel(), 1)
    decision = LayerDecision(name, (weight.shape[0], weight.shape[1]), sparsity, "")
    if weight.dtype not in (torch.float32, torch.float64):
        decision.reason = f"{weight.dtype} weights (sparse kernels run float32 / float64)"
    elif sparsity < min_sparsity:
        decision.reason = f"sparsity below min_sparsity {min_sparsity:.0%}"
    elif kernel != "auto":
        decision.kernels, decision.reason = {1: kernel}, "kernel chosen by the caller"
    else:
        decision.kernels, decision.timings_us, decision.reason = _choose_kernels(
            layer, inputs_by_rows, timing)
    if decision.kernel == "dense":
        return decision, None
    return decision, SparseLinear.from_linear(layer, decision.kernels)


def _available_kernels() -> tuple[str, ...]:
    """The sparse kernels that run here: the compiled one only where it could be built."""
    if native_kernel_status() is None:
        return SPARSE_KERNELS
    return tuple(name for name in SPARSE_KERNELS if name != "native")


def _choose_kernels(layer: nn.Linear, inputs_by_rows: dict[int, torch.Tensor], timing: TimingConfig
                    ) -> tuple[dict[int, str], dict[int, dict[str, float]], str]:
    """The fastest kernel at each row count: a sparse one only if it beats dense by the margin."""
    available = _available_kernels()
    candidates = {name: SparseLinear.from_linear(layer, name) for name in available}
    kernels, timings, reasons = {}, {}, []
    for rows, layer_input in sorted(inputs_by_rows.items()):
        times = time_layers({"dense": layer, **candidates}, layer_input, timing)
        fastest = min(available, key=times.get)
        ratio = times["dense"] / times[fastest]
        kernels[rows] = fastest if ratio >= 1 / (1 - timing.margin) else "dense"
        timings[rows] = times
        reasons.append(f"rows {rows}: {fastest} {ratio:.2f}x dense")
    return kernels, timings, "; ".join(reasons)


def _swap(model: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    for name, replacement in replacements.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, replacement)
    return model.eval()


def _runs_with_views_or_without(model: nn.Module, examples: list[Any]) -> str | None:
    """Sparse layers hand on transposed views; a model that then fails (say a ``.view`` that
    would merge dimensions) gets contiguous outputs instead. Returns the error of a model that
    fails either way (it reads a replaced layer's ``.weight``, say), else None."""
    failure = None
    for views in (True, False):
        if not views:
            _set_views(model, False)
        try:
            with torch.inference_mode():
                for example in examples:
                    call_model(model, example)
            return None
        except Exception as error:  # the dense copy ran these inputs: the conversion failed
            failure = f"{type(error).__name__}: {error}"
    return failure


def _max_abs_difference(dense: nn.Module, converted: nn.Module, example_inputs: Any) -> float:
    with preserved_modes(dense), preserved_modes(converted), torch.inference_mode():
        expected = model_outputs(call_model(dense, example_inputs))
        actual = model_outputs(call_model(converted, example_inputs))
    floats = [(e, a) for e, a in zip(expected, actual) if e.is_floating_point()]
    return max((float((e - a).abs().max()) for e, a in floats if e.numel()), default=0.0)
