"""Modeling code that lets ``from_pretrained`` rebuild a BERT-style model with fewer attention heads
or FFN neurons in some layers.

transformers 5.x builds every attention layer with ``config.num_attention_heads`` heads, so the
narrower weights of a head-pruned model do not fit a stock model. ``prunekit.hf.save_pruned``
copies this file into the saved directory as ``prunekit_pruned_heads.py``, records the head count
of every layer in ``config.prunekit_attention_heads`` (FFN widths that differ between layers in
``config.prunekit_intermediate_sizes``) and points ``config.auto_map`` here, so

    AutoModel.from_pretrained(directory, trust_remote_code=True)

builds the model, narrows each layer's query/key/value and output projections to the saved head
count (and its FFN projections to the saved width) and loads the weights as usual. The file depends only on torch and transformers (not on
prunekit), so the saved directory works wherever transformers does.
"""

from __future__ import annotations

from torch import nn
from transformers import BertConfig, BertModel

HEADS_KEY = "prunekit_attention_heads"
FFN_KEY = "prunekit_intermediate_sizes"


def narrow_attention(attention: nn.Module, heads: int) -> None:
    """Give one ``BertAttention`` `heads` heads: fresh, narrower projections (weights load later).

    >>> from transformers import BertConfig
    >>> from transformers.models.bert.modeling_bert import BertAttention
    >>> attention = BertAttention(BertConfig(hidden_size=32, num_attention_heads=4))
    >>> narrow_attention(attention, 3)
    >>> attention.self.query.weight.shape, attention.output.dense.weight.shape
    (torch.Size([24, 32]), torch.Size([32, 24]))
    """
    self_attention, output = attention.self, attention.output
    head_size = self_attention.attention_head_size
    inner, hidden = heads * head_size, self_attention.query.in_features
    for name in ("query", "key", "value"):
        setattr(self_attention, name, nn.Linear(hidden, inner))
    output.dense = nn.Linear(inner, output.dense.out_features)
    self_attention.num_attention_heads = heads
    self_attention.all_head_size = inner


def _per_layer(config: BertConfig, key: str, default: int, layers: int) -> list[int]:
    """``config.<key>`` (one size per layer), or `default` for every layer when the config has none."""
    sizes = getattr(config, key, None) or [default] * layers
    if len(sizes) != layers:
        raise ValueError(f"config.{key} lists {len(sizes)} layers but the model has {layers}")
    return sizes


class PrunedHeadsBertModel(BertModel):
    """``BertModel`` whose layer i has ``config.prunekit_attention_heads[i]`` attention heads and
    ``config.prunekit_intermediate_sizes[i]`` FFN neurons."""

    config_class = BertConfig

    def __init__(self, config: BertConfig, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        heads = _per_layer(config, HEADS_KEY, config.num_attention_heads, len(self.encoder.layer))
        widths = _per_layer(config, FFN_KEY, config.intermediate_size, len(self.encoder.layer))
        for layer, count, width in zip(self.encoder.layer, heads, widths):
            if count != config.num_attention_heads:
                narrow_attention(layer.attention, int(count))
            if width != config.intermediate_size:  # fresh, narrower FFN projections (weights load later)
                layer.intermediate.dense = nn.Linear(config.hidden_size, int(width))
                layer.output.dense = nn.Linear(int(width), config.hidden_size)
