"""Compare one-shot pruning methods on a pretrained transformer (``prunekit compare --model minilm``).

No baseline is trained and nothing is fine-tuned: every method x sparsity prunes a copy of the
bundled pretrained model with calibration text, and the copy is measured against the dense model
on held-out text that never overlaps the calibration text.

Quality is agreement with the dense model, since a sentence-embedding model has no labels here:
``accuracy`` is the mean cosine similarity of the pruned model's sentence embeddings to the dense
model's (so ``accuracy_dense`` is 1.0), ``nn_agreement`` the share of held-out paragraphs whose
nearest other paragraph is unchanged (``prunekit.hf.embedding_agreement``). Speed: the wall time
of the ``prune`` call, and latency of structured copies (units physically removed) against the
dense model at batch 1 and 32, sequence length 128. Unstructured zeros leave dense kernels as slow
as before, so those runs are not timed unless ``time_unstructured=True``.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from prunekit import hf
from prunekit.errors import PrunekitError, unknown_name
from prunekit.io import atomic_write_text
from prunekit.masking import bake
from prunekit.methods import MethodSpec
from prunekit.metrics import count_params
from prunekit.paired_timing import paired_timing
from prunekit.one_shot import ONE_SHOT_METHODS
from prunekit.pruner import prune
from prunekit.select_rows import pattern_sparsity
from prunekit.sparsegpt import check_calibration_tokens
from prunekit.sweep import Job, plan_jobs, stamp
from prunekit.targets import resolve_targets
from prunekit.transformer_methods import parse_transformer_spec

#: the pretrained transformers ``prunekit compare`` prunes without a dataset or training
TRANSFORMER_MODELS = MappingProxyType({
    "minilm": "sentence-transformers all-MiniLM-L6-v2 (bundled, offline): sentence embeddings, no dataset needed",
})
_LOADERS = MappingProxyType({"minilm": hf.load_minilm})

ACCURACY_METRIC = "mean cosine similarity of sentence embeddings to the dense model (held-out paragraphs)"
UNTIMED_NOTE = ("not timed: unstructured zeros leave dense kernels as slow as before "
                "(time_unstructured=True / --time-unstructured times them anyway)")


@dataclass(frozen=True)
class TransformerCompareConfig:
    """One comparison on a pretrained transformer: every method x sparsity x seed.

    `methods` are specs ``[granularity:]method[@sparsity]`` (prunekit.methods) or ``sparsegpt``;
    `scope` None is each method's own default (Wanda and SparseGPT: ``row``); `pattern` ``"N:M"``
    replaces the sparsities for (then only) unstructured methods; `reconstruct` refits what reads
    removed neurons / heads (``prune(..., reconstruct=True)``). A seed draws the calibration /
    held-out split (``hf.calibration_split``) unless `calibration_texts` / `eval_texts` are given,
    and seeds the pruning. Latency: each of `latency_batch_sizes` at `sequence_length` tokens.

    >>> TransformerCompareConfig(methods=("wanda", "neuron:l1"), sparsities=(0.5,)).latency_batch_sizes
    (1, 32)
    """

    model: str = "minilm"
    methods: tuple[str, ...] = ("wanda",)
    sparsities: tuple[float, ...] = (0.5,)
    granularity: str = "unstructured"
    scope: str | None = None
    pattern: str | None = None
    reconstruct: bool = False
    seeds: tuple[int, ...] = (0,)
    calibration_size: int = 128
    eval_size: int = 256
    calibration_texts: tuple[str, ...] | None = None
    eval_texts: tuple[str, ...] | None = None
    latency_batch_sizes: tuple[int, ...] = (1, 32)
    sequence_length: int = 128
    latency_rounds: int = 5
    latency_repeats: int = 5
    time_unstructured: bool = False
    progress: bool = True


def _positive_ints(name: str, values: Sequence[object]) -> None:
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise PrunekitError(f"{name} must be integers >= 1; got {values!r}")


def _check_texts(name: str, texts: Sequence[str] | None) -> None:
    if texts is None:
        return
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise PrunekitError(f"{name} must be a list of strings (one paragraph each); got {type(texts).__name__}")
    if not any(text.strip() for text in texts):
        raise PrunekitError(f"{name} is empty: give at least one non-empty paragraph")


def _check_config(config: TransformerCompareConfig) -> list[MethodSpec]:
    """Every check that needs no model: refused here, nothing is loaded or pruned."""
    if config.model not in TRANSFORMER_MODELS:
        raise unknown_name("transformer model", config.model, TRANSFORMER_MODELS)
    for sparsity in config.sparsities:
        if not 0.0 <= sparsity < 1.0:
            raise PrunekitError(f"every sparsity must lie in [0, 1); got {sparsity}")
    _positive_ints("calibration_size and eval_size", (config.calibration_size, config.eval_size))
    _positive_ints("latency_batch_sizes", config.latency_batch_sizes)
    _positive_ints("sequence_length, latency_rounds and latency_repeats",
                   (config.sequence_length, config.latency_rounds, config.latency_repeats))
    _check_texts("calibration_texts", config.calibration_texts)
    _check_texts("eval_texts", config.eval_texts)
    if config.reconstruct and "reconstruct" not in inspect.signature(prune).parameters:
        raise PrunekitError("this prunekit's prune() has no reconstruct option; run without reconstruct")
    specs = [parse_transformer_spec(text, config.granularity, config.reconstruct, config.model)
             for text in config.methods]
    if not specs:
        raise PrunekitError("no methods to compare: give e.g. methods=('wanda', 'sparsegpt')")
    if config.pattern is not None:
        implied = pattern_sparsity(config.pattern)
        for spec in specs:
            if spec.granularity != "unstructured":
                raise PrunekitError(f"pattern {config.pattern} keeps N of every M single weights; "
                                    f"'{spec.granularity}:{spec.method}' is structured: compare it separately")
            if any(abs(s - implied) > 1e-9 for s in (*config.sparsities, spec.sparsity) if s is not None):
                raise PrunekitError(f"pattern {config.pattern} fixes the sparsity at {implied:g}; leave out the "
                                    "sparsities (or give exactly that one)")
    for spec in specs:
        if not _sparsities(spec, config):
            raise PrunekitError(f"method '{spec.method}' has no sparsity to run: give sparsities (--sparsity) or "
                                f"write it as '{spec.method}@0.5'")
    return specs


def _sparsities(spec: MethodSpec, config: TransformerCompareConfig) -> tuple[float, ...]:
    if config.pattern is not None:
        return (pattern_sparsity(config.pattern),)
    return (spec.sparsity,) if spec.sparsity is not None else tuple(config.sparsities)


def _normalised(text: str) -> str:
    return " ".join(text.split())


def check_disjoint(calibration: Sequence[str], held_out: Sequence[str]) -> None:
    """Refuse evaluation text that also appears in the calibration text (whitespace-normalised).

    >>> check_disjoint(["a b"], ["c"])
    >>> check_disjoint(["a  b", "c"], ["a b"])
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: 1 of 1 evaluation texts also appear in the calibration texts (e.g. 'a b'); ...
    """
    seen = {_normalised(text) for text in calibration}
    overlap = [text for text in held_out if _normalised(text) in seen]
    if overlap:
        example = _normalised(overlap[0])
        example = example if len(example) <= 80 else example[:77] + "..."
        raise PrunekitError(f"{len(overlap)} of {len(held_out)} evaluation texts also appear in the calibration "
                            f"texts (e.g. {example!r}); a model pruned on its evaluation text scores too well. "
                            "Give evaluation paragraphs the calibration never sees")


def _texts(config: TransformerCompareConfig, seed: int) -> tuple[list[str], list[str], str]:
    """``(calibration, held_out, where they come from)`` for one seed, checked disjoint."""
    drawn = (None, None)
    if config.calibration_texts is None or config.eval_texts is None:
        drawn = hf.calibration_split(config.calibration_size, config.eval_size, seed)
    calibration = [t for t in config.calibration_texts if t.strip()] if config.calibration_texts else drawn[0]
    held_out = [t for t in config.eval_texts if t.strip()] if config.eval_texts else drawn[1]
    check_disjoint(calibration, held_out)
    user = [name for name, given in (("calibration", config.calibration_texts), ("evaluation", config.eval_texts))
            if given is not None]
    source = f"user {' and '.join(user)} texts" if user else "stdlib docstring paragraphs"
    return calibration, held_out, source


def _latency_inputs(tokenizer, held_out: list[str], config: TransformerCompareConfig) -> dict[int, dict]:
    """One batch per latency batch size, every row exactly `sequence_length` tokens."""
    inputs = {}
    for size in config.latency_batch_sizes:
        texts = (held_out * (size // len(held_out) + 1))[:size]
        inputs[size] = dict(tokenizer(texts, padding="max_length", truncation=True,
                                      max_length=config.sequence_length, return_tensors="pt"))
    return inputs


@contextmanager
def _progress_bars(show: bool):
    """Hide transformers' weight-loading bar when `show` is False; restores the setting after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()


def _prune_copy(dense: nn.Module, spec: MethodSpec, sparsity: float, config: TransformerCompareConfig,
                seed: int, batches: list[dict]):
    """A pruned, baked copy of `dense`, the PruneResult and the wall time of the prune call."""
    model = copy.deepcopy(dense)
    options = {"granularity": spec.granularity, "scope": config.scope, "data": batches,
               "num_batches": len(batches), "seed": seed}
    if spec.granularity != "unstructured":
        options["example_inputs"] = batches[0]  # structured removal traces the model once
    if config.reconstruct:
        options["reconstruct"] = True
    if config.pattern is not None:
        options["pattern"] = config.pattern
    started = time.perf_counter()
    result = prune(model, spec.method, None if config.pattern is not None else sparsity, **options)
    seconds = time.perf_counter() - started
    return bake(model), result, seconds


def _latency(dense: nn.Module, model: nn.Module, timed: bool, inputs: dict[int, dict],
             config: TransformerCompareConfig) -> dict:
    """``latency_ms`` / ``latency_dense_ms`` at the largest batch, ``latency_b{n}_ms`` at the others,
    each with its ``_spread`` / ``_noisy`` / ``_rounds`` (prunekit.paired_timing)."""
    largest = max(inputs)
    fields: dict = {"latency_batch_size": largest, "latency_sequence_length": config.sequence_length,
                    "latency_note": None if timed else UNTIMED_NOTE, "load_avg_1m": None}
    for size, batch in sorted(inputs.items()):
        suffix = "" if size == largest else f"_b{size}"
        if not timed:
            fields.update({f"latency{suffix}_{key}": None for key in ("ms", "spread", "noisy", "rounds")})
            fields[f"latency_dense{suffix}_ms"] = None
            continue
        # up to twice the rounds when the per-round ratios disagree; then marked noisy
        fields.update(paired_timing(dense, model, batch, config.latency_rounds, config.latency_repeats,
                                    max_rounds=2 * config.latency_rounds).fields(suffix))
    return fields


def _record(config: TransformerCompareConfig, spec: MethodSpec, sparsity: float, seed: int, measured: dict,
            model: nn.Module, result, seconds: float) -> dict:
    params, params_nonzero = count_params(model)
    return {
        "model": config.model, "dataset": measured["source"], "method": spec.method,
        "granularity": spec.granularity, "scope": result.scope, "pattern": config.pattern,
        "reconstruct": config.reconstruct, "sparsity_target": sparsity, "seed": seed,
        "sparsity_achieved": result.sparsity_achieved, "unit": result.unit,
        "units_targeted": result.units_targeted, "params": params, "params_nonzero": params_nonzero,
        "params_dense": measured["params_dense"], "accuracy": measured["cosine"], "accuracy_dense": 1.0,
        "accuracy_metric": ACCURACY_METRIC, "nn_agreement": measured["nn_agreement"],
        "prune_seconds": seconds, "calibration_texts": measured["calibration_texts"],
        "calibration_tokens": measured["calibration_tokens"], "eval_texts": measured["eval_texts"],
        **measured["latency"],
    }


def _calibration(config: TransformerCompareConfig, specs: list[MethodSpec], seed: int, dense: nn.Module,
                 tokenizer) -> tuple:
    """One seed's ``(calibration, held_out, source, batches)``; the minimum number of calibration
    tokens of SparseGPT and of refitting FFN output projections is checked here, for every seed
    before the first run."""
    calibration, held_out, source = _texts(config, seed)
    batches = hf.token_batches(tokenizer, calibration, max_length=config.sequence_length)
    refits_ffn = config.reconstruct and any(spec.granularity == "neuron" for spec in specs)
    if refits_ffn or any(spec.method in ONE_SHOT_METHODS for spec in specs):
        widest = max(resolve_targets(dense), key=lambda name: dense.get_parameter(name).shape[1])
        try:
            check_calibration_tokens(_tokens(batches), dense.get_parameter(widest).shape[1], widest,
                                     "least-squares reconstruction" if refits_ffn else "SparseGPT")
        except PrunekitError as error:
            raise PrunekitError(f"{error} (seed {seed}: {len(calibration)} calibration texts; raise "
                                "calibration_size / --calibration-size)") from None
    return calibration, held_out, source, batches


def _tokens(batches: list[dict]) -> int:
    return int(sum(int(batch["attention_mask"].sum()) for batch in batches))


def _seed_runs(config: TransformerCompareConfig, todo: list[tuple[Job, MethodSpec]], data: tuple,
               dense: nn.Module, tokenizer, on_run: Callable[[dict], None] | None) -> list[dict]:
    """The runs of `todo`, jobs of one seed whose calibration and held-out text are `data`."""
    calibration, held_out, source, batches = data
    reference = hf.embed(dense, tokenizer, held_out, normalize=True)
    inputs = _latency_inputs(tokenizer, held_out, config)
    shared = {"source": source, "params_dense": count_params(dense)[0], "calibration_texts": len(calibration),
              "calibration_tokens": _tokens(batches),
              "eval_texts": len(held_out)}
    runs = []
    for job, spec in todo:
        model, result, seconds = _prune_copy(dense, spec, job.sparsity, config, job.seed, batches)
        cosine, agreement = hf.embedding_agreement(reference, hf.embed(model, tokenizer, held_out, normalize=True))
        timed = spec.granularity != "unstructured" or config.time_unstructured
        measured = {**shared, "cosine": cosine, "nn_agreement": agreement,
                    "latency": _latency(dense, model, timed, inputs, config)}
        runs.append(stamp(_record(config, spec, job.sparsity, job.seed, measured, model, result, seconds), job))
        if on_run is not None:
            on_run(runs[-1])
    return runs


def _plan(config: TransformerCompareConfig) -> list[tuple[Job, MethodSpec]]:
    return plan_jobs(config.seeds, _check_config(config), lambda spec: _sparsities(spec, config),
                     lambda spec: f"{spec.granularity}:{spec.method}")


def planned_transformer_jobs(config: TransformerCompareConfig) -> list[Job]:
    """The jobs (prunekit.sweep) `run_transformer_compare` runs, in order; validated (user texts
    that overlap too), nothing loads.

    >>> config = TransformerCompareConfig(methods=("wanda", "neuron:l1"), sparsities=(0.5,))
    >>> [job.id for job in planned_transformer_jobs(config)]
    ['seed 0 unstructured:wanda @0.5', 'seed 0 neuron:l1 @0.5']
    """
    jobs = [job for job, _ in _plan(config)]
    if config.calibration_texts is not None or config.eval_texts is not None:
        for seed in config.seeds:
            _texts(config, seed)
    return jobs


def run_transformer_compare(config: TransformerCompareConfig, on_run: Callable[[dict], None] | None = None,
                            skip: Callable[[Job], bool] | None = None) -> list[dict]:
    """Prune copies of the pretrained model with every method x sparsity x seed; one dict per run
    (`on_run` hears each as it finishes). Everything is validated before the model loads. Jobs
    (prunekit.sweep) for which `skip(job)` is True are left out; each run names its job in
    ``run["job"]``.

    >>> config = TransformerCompareConfig(methods=("wanda",), sparsities=(0.5,), calibration_size=16, eval_size=8)
    >>> runs = run_transformer_compare(config)  # doctest: +SKIP
    >>> runs[0]["accuracy_metric"]  # doctest: +SKIP
    'mean cosine similarity of sentence embeddings to the dense model (held-out paragraphs)'
    """
    planned = _plan(config)
    for seed in config.seeds:  # overlapping or empty texts are refused before anything loads
        _texts(config, seed)
    todo = [(job, spec) for job, spec in planned if skip is None or not skip(job)]
    seeds = [seed for seed in config.seeds if any(job.seed == seed for job, _ in todo)]
    if not seeds:
        return []
    with _progress_bars(config.progress):
        dense, tokenizer = _LOADERS[config.model]()
    specs = [spec for _, spec in planned]
    prepared = {seed: _calibration(config, specs, seed, dense, tokenizer) for seed in seeds}
    runs = []
    for seed in seeds:
        runs += _seed_runs(config, [(job, spec) for job, spec in todo if job.seed == seed], prepared[seed], dense,
                           tokenizer, on_run)
    return runs


def transformer_settings(config: TransformerCompareConfig) -> dict:
    """The config as results.json stores it: user texts as their count and their SHA-256 (so a
    sweep resumed with other texts of the same length is refused).

    >>> transformer_settings(TransformerCompareConfig(eval_texts=("a",)))["eval_texts"]
    1
    """
    settings = asdict(config)
    for key in ("calibration_texts", "eval_texts"):
        texts = settings[key]
        settings[key] = None if texts is None else len(texts)
        settings[f"{key}_sha256"] = (None if texts is None else
                                     hashlib.sha256(json.dumps(list(texts)).encode("utf-8")).hexdigest())
    return settings


def write_transformer_results(out_dir: str | Path, config: TransformerCompareConfig, runs: list[dict]) -> Path:
    """Write ``out_dir/results.json`` atomically: ``{"config": ..., "runs": [...]}``; user texts
    are stored as their count.

    >>> import tempfile
    >>> path = write_transformer_results(tempfile.mkdtemp(), TransformerCompareConfig(eval_texts=("a",)), [])
    >>> json.loads(path.read_text())["config"]["eval_texts"]
    1
    """
    payload = {"config": transformer_settings(config), "accuracy_metric": ACCURACY_METRIC,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__, "runs": runs}
    return atomic_write_text(Path(out_dir) / "results.json", json.dumps(payload, indent=2))
