"""Token ids that fit the model: clear errors for a tokenizer that does not match it.

Calibration text tokenized with another model's tokenizer (GPT-2's 50257 ids fed to a BERT with
30522 rows of word embeddings) otherwise fails deep inside the embedding with torch's
``IndexError: index out of range in self``. ``check_token_ids`` looks at one batch's inputs
before the model runs on them (one min and one max per batch; nothing for models without input
embeddings or inputs without integer token ids, such as a CNN's images), and ``check_tokenizer``
compares a tokenizer with the model before anything is tokenized.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from prunekit.errors import PrunekitError

#: special tokens whose ids a tokenizer and a model's config both may declare
SPECIAL_TOKENS = ("pad", "cls", "bos", "eos")


def embedding_rows(model: nn.Module) -> int | None:
    """How many token ids `model`'s input embedding has rows for; None for a model without
    ``get_input_embeddings()`` (or one whose embedding is not a table).

    >>> from transformers import BertConfig, BertModel
    >>> embedding_rows(BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
    ...                                     num_attention_heads=2, intermediate_size=8)))
    50
    >>> embedding_rows(nn.Linear(2, 2)) is None
    True
    """
    get = getattr(model, "get_input_embeddings", None)
    if not callable(get):
        return None
    try:
        embedding = get()
    except (NotImplementedError, AttributeError):  # transformers' base class when a model has none
        return None
    rows = getattr(embedding, "num_embeddings", None)
    if rows is None and isinstance(getattr(embedding, "weight", None), torch.Tensor):
        rows = embedding.weight.shape[0]
    return int(rows) if rows is not None else None


def _model_source(model: nn.Module) -> str:
    source = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
    return str(source) if source else "<the model's directory or hub name>"


def _mismatch_hint(model: nn.Module) -> str:
    return (f"the tokenizer does not match the model: tokenize with the model's own tokenizer, e.g. "
            f"AutoTokenizer.from_pretrained('{_model_source(model)}'). The model was not changed")


def _token_ids(inputs: object) -> torch.Tensor | None:
    """The input ids in one batch's inputs: a dict's ``input_ids``, an integer tensor, or the
    first of a tuple of positional arguments (where transformers' models take them)."""
    if isinstance(inputs, Mapping):
        return inputs.get("input_ids")
    if isinstance(inputs, (tuple, list)) and inputs:
        inputs = inputs[0]
    if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point() and inputs.dtype != torch.bool:
        return inputs
    return None


def _id_range(ids: torch.Tensor) -> tuple[int, int] | None:
    if ids.numel() == 0:
        return None
    low, high = torch.aminmax(ids)
    return int(low), int(high)


def _check_range(ids: object, rows: int, what: str, where: str, limit: str, hint: str) -> None:
    """Refuse `ids` that are not integers or fall outside ``[0, rows)``; `limit` says what `rows` is."""
    if not isinstance(ids, torch.Tensor):
        return
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise PrunekitError(f"{what} in {where} must be integer token ids (torch.long), got a {ids.dtype} tensor; "
                            "pass the tokenizer's output as it is (return_tensors='pt'). The model was not changed")
    found = _id_range(ids)
    if found is None or (found[0] >= 0 and found[1] < rows):
        return
    low, high = found
    seen = f"go up to {high}" if high >= rows else f"include {low}"
    raise PrunekitError(f"{what} in {where} {seen} (ids seen: {low}..{high}), but {limit} is {rows} "
                        f"(valid ids 0..{rows - 1}): {hint}")


def check_token_ids(model: nn.Module, inputs: object, where: str = "the inputs") -> None:
    """Refuse `inputs` (one batch's inputs for ``model(...)``) whose token ids the model has no
    embedding for: ``input_ids`` outside ``[0, rows of model.get_input_embeddings())``, non-integer
    ``input_ids``, or ``token_type_ids`` beyond ``config.type_vocab_size``. `where` names the batch
    in the message. Models without input embeddings and inputs without integer token ids pass.

    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
    ...                             num_attention_heads=2, intermediate_size=8))
    >>> check_token_ids(bert, {"input_ids": torch.tensor([[1, 49]])})
    >>> check_token_ids(bert, {"input_ids": torch.tensor([[1, 99]])}, "calibration batch 0")
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: input_ids in calibration batch 0 go up to 99 (ids seen: 1..99), ... is 50 ...
    >>> check_token_ids(nn.Linear(2, 2), torch.ones(3, 2))  # no embeddings: nothing to check
    """
    rows = embedding_rows(model)
    if rows is None:
        return
    hint = _mismatch_hint(model)
    _check_range(_token_ids(inputs), rows, "input_ids", where,
                 "the model's vocabulary size (rows of its input embedding)", hint)
    type_vocab = getattr(getattr(model, "config", None), "type_vocab_size", None)
    if isinstance(inputs, Mapping) and isinstance(type_vocab, int):
        _check_range(inputs.get("token_type_ids"), type_vocab, "token_type_ids", where,
                     "the model's number of token types (config.type_vocab_size)", hint)


def _declared_ids(config: object, name: str) -> set[int]:
    value = getattr(config, f"{name}_token_id", None)
    values = value if isinstance(value, (list, tuple)) else [value]  # eos may be a list (Llama 3)
    return {int(item) for item in values if isinstance(item, int)}


def _borrowed_pad(tokenizer: object, pad: int) -> bool:
    """A pad borrowed from another special token (``tokenizer.pad_token = tokenizer.eos_token``,
    the usual fix for models trained without one): padded positions are masked out anyway."""
    return any(getattr(tokenizer, f"{name}_token_id", None) == pad for name in ("eos", "bos", "unk"))


def check_tokenizer(model: nn.Module, tokenizer: object) -> None:
    """Refuse a `tokenizer` that does not match `model`: more tokens (``len(tokenizer)``) than the
    model has rows of input embeddings, or a pad / cls / bos / eos id other than the one the
    model's config declares (only ids both define are compared; a pad borrowed from the
    tokenizer's own eos / bos / unk token is accepted).

    >>> from types import SimpleNamespace
    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
    ...                             num_attention_heads=2, intermediate_size=8, pad_token_id=0))
    >>> class Tokenizer(SimpleNamespace):
    ...     def __len__(self):
    ...         return self.size
    >>> check_tokenizer(bert, Tokenizer(size=50, pad_token_id=0))
    >>> check_tokenizer(bert, Tokenizer(size=50, pad_token_id=3))
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: the tokenizer's pad token id is 3 but the model's config says pad_token_id=0; ...
    """
    rows = embedding_rows(model)
    hint = _mismatch_hint(model)
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    if rows is not None and size is not None and size > rows:
        raise PrunekitError(f"the tokenizer has {size} tokens but the model has {rows} rows of input embeddings, "
                            f"so ids {rows}..{size - 1} would index past its vocabulary; {hint}")
    config = getattr(model, "config", None)
    for name in SPECIAL_TOKENS:
        ours, declared = getattr(tokenizer, f"{name}_token_id", None), _declared_ids(config, name)
        if not isinstance(ours, int) or not declared or ours in declared:
            continue
        if name == "pad" and _borrowed_pad(tokenizer, ours):
            continue
        expected = sorted(declared)[0] if len(declared) == 1 else sorted(declared)
        raise PrunekitError(f"the tokenizer's {name} token id is {ours} but the model's config says "
                            f"{name}_token_id={expected}; {hint}")


__all__ = ["SPECIAL_TOKENS", "check_token_ids", "check_tokenizer", "embedding_rows"]
