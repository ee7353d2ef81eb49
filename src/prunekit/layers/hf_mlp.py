"""The feed-forward width of Hugging Face transformer blocks, and the config entry that records it.

A block's FFN is found by the name of the layer that widens the hidden state (its output width
is the FFN width) and the config attribute every block is built with:

==================  ===================  ======================================
first FFN layer     config attribute     models
==================  ===================  ======================================
intermediate.dense  intermediate_size    BERT, RoBERTa, ELECTRA, ViT, ...
mlp.up_proj         intermediate_size    Llama, Mistral, Qwen2, ...
mlp.c_fc            n_inner              GPT-2 (None in the config: 4 x n_embd)
ffn.lin1            hidden_dim           DistilBERT
==================  ===================  ======================================

After FFN neurons are removed physically, ``sync_ffn_config`` writes the new width into the
model's config when every block has the same one, so a plain ``save_pretrained`` /
``from_pretrained`` round trip rebuilds the pruned model. Blocks of different widths cannot be
described by one config value: ``prunekit.hf.save_pruned`` records them per layer.
"""

from __future__ import annotations

from torch import nn

from prunekit.layers import handler_for

#: (name suffix of a block's first FFN layer, the config attribute holding its output width)
FFN_LAYOUTS = (
    ("intermediate.dense", "intermediate_size"),
    ("mlp.up_proj", "intermediate_size"),
    ("mlp.c_fc", "n_inner"),
    ("ffn.lin1", "hidden_dim"),
)


def ffn_widths(model: nn.Module) -> tuple[str | None, list[int]]:
    """``(config attribute, FFN width of each block in module order)``; ``(None, [])`` when the
    model has no FFN layout of the table above.

    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                             intermediate_size=12, vocab_size=10))
    >>> ffn_widths(bert)
    ('intermediate_size', [12, 12])
    """
    for suffix, attribute in FFN_LAYOUTS:
        widths = []
        for name, module in model.named_modules():
            handler = handler_for(module)
            if (name == suffix or name.endswith("." + suffix)) and handler is not None:
                out_dim, _ = handler.weight_layout(module, "weight")
                widths.append(int(module.weight.shape[out_dim]))
        if widths:
            return attribute, widths
    return None, []


def sync_ffn_config(model: nn.Module) -> bool:
    """Write the blocks' FFN width into ``model.config`` when they all share one; returns
    whether the config now describes every block.

    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
    ...                             intermediate_size=12, vocab_size=10))
    >>> bert.encoder.layer[0].intermediate.dense = nn.Linear(8, 6)
    >>> bert.encoder.layer[0].output.dense = nn.Linear(6, 8)
    >>> sync_ffn_config(bert), bert.config.intermediate_size
    (True, 6)
    """
    return sync_ffn_widths(model) is None


def sync_ffn_widths(model: nn.Module) -> list[int] | None:
    """``sync_ffn_config``, reading the widths once: None when the config now describes every
    block, else the per-block FFN widths it cannot hold (they differ; the config is left as it was).

    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                             intermediate_size=12, vocab_size=10))
    >>> bert.encoder.layer[0].intermediate.dense = nn.Linear(8, 6)
    >>> bert.encoder.layer[0].output.dense = nn.Linear(6, 8)
    >>> sync_ffn_widths(bert), bert.config.intermediate_size
    ([6, 12], 12)
    """
    config = getattr(model, "config", None)
    attribute, widths = ffn_widths(model)
    if config is None or attribute is None or not hasattr(config, attribute):
        return None
    if len(set(widths)) != 1:
        return widths
    setattr(config, attribute, widths[0])
    return None


__all__ = ["FFN_LAYOUTS", "ffn_widths", "sync_ffn_config", "sync_ffn_widths"]
