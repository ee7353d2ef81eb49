"""Tiny Hugging Face transformers with random weights (BERT, GPT-2, Llama with grouped-query
attention) and token batches with padding: what the one-shot transformer tests prune."""

import torch
import transformers

VOCAB = 100


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=VOCAB)
    return transformers.BertModel(config).eval()


def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB)).eval()


def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=64, vocab_size=VOCAB)
    return transformers.LlamaModel(config).eval()


BUILDERS = {"bert": bert, "gpt2": gpt2, "llama": llama}
#: the first Linear / Conv1D of the second block, and the weight layout ((in, out) for Conv1D)
SECOND_BLOCK_FIRST = {"bert": "encoder.layer.1.attention.self.query", "gpt2": "h.1.attn.c_attn",
                      "llama": "layers.1.self_attn.q_proj"}


def batches(count=3, size=4, length=24, seed=0):
    """Token batches whose second sequence ends in padding (masked out of every Hessian)."""
    generator = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(count):
        mask = torch.ones(size, length, dtype=torch.long)
        mask[1, length // 2:] = 0
        data.append({"input_ids": torch.randint(0, VOCAB, (size, length), generator=generator), "attention_mask": mask})
    return data
