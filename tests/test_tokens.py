"""Token ids that do not fit the model (a tokenizer that does not match it) are refused with a
clear error before anything changes, in every data path; a matching tokenizer and float-input
models are left alone."""

import copy

import pytest
import torch
import transformers
from torch import nn

from prunekit import prune
from prunekit.errors import PrunekitError
from prunekit.sequential import capture_block_inputs
from prunekit.stats.loop import for_each_batch
from prunekit.tokens import check_token_ids, check_tokenizer, embedding_rows

from invariants import one_thread, same_state, small_cnn  # noqa: F401 (one_thread: autouse)

VOCAB = 50
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _bert(**config) -> nn.Module:
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, pad_token_id=0) | config
    return transformers.BertModel(transformers.BertConfig(**settings)).eval()


def _batch(high: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 8), generator=generator)
    ids[1, 3] = high  # one token of another tokenizer's vocabulary
    return {"input_ids": ids, "attention_mask": torch.ones(2, 8, dtype=torch.long)}


GOOD = _batch(VOCAB - 1)
BAD = _batch(99)


@pytest.mark.parametrize("method, arguments, data, where", [
    ("wanda", {}, [BAD, GOOD], "calibration batch 0"),
    ("wanda", {}, [GOOD, BAD], "calibration batch 1"),
    ("sparsegpt", {}, [BAD, GOOD], "calibration batch 0"),
    ("sparsegpt", {}, [GOOD, BAD], "calibration batch 1"),
    ("activation-mean", {"granularity": "neuron", "example_inputs": GOOD}, [BAD], "calibration batch 0"),
    ("activation-mean", {"granularity": "neuron", "example_inputs": BAD}, [GOOD], "example_inputs"),
    ("random", {"granularity": "layer", "example_inputs": BAD}, None, "example_inputs"),
])
def test_ids_beyond_the_vocabulary_are_refused_with_the_model_unchanged(method, arguments, data, where):
    model = _bert()
    dense = copy.deepcopy(model)
    with pytest.raises(PrunekitError) as refused:
        prune(model, method, 0.5, data=data, **arguments)
    message = str(refused.value)
    assert f"input_ids in {where}" in message and "go up to 99" in message
    assert "vocabulary size (rows of its input embedding) is 50" in message
    assert "the tokenizer does not match the model" in message and "AutoTokenizer.from_pretrained(" in message
    assert same_state(model, dense)
    assert all(not hasattr(module, "parametrizations") for module in model.modules())


def test_a_matching_batch_still_prunes():
    model = _bert()
    result = prune(model, "wanda", 0.5, data=[GOOD, GOOD])
    assert set(result.layer_sparsity.values()) == {0.5}


@pytest.mark.parametrize("inputs, message", [
    ({"input_ids": torch.tensor([[1, -1, 2]])}, "include -1 (ids seen: -1..2)"),
    (torch.tensor([[1, 50]]), "go up to 50"),  # a bare tensor of ids
    ((torch.tensor([[1, 50]]), torch.ones(1, 2)), "go up to 50"),  # positional arguments
    ({"input_ids": torch.tensor([[1.0, 2.0]])}, "must be integer token ids (torch.long), got a torch.float32"),
    ({"input_ids": torch.tensor([[1, 2]]), "token_type_ids": torch.tensor([[0, 2]])},
     "token_type_ids in batch 3 go up to 2 (ids seen: 0..2), but the model's number of token types "
     "(config.type_vocab_size) is 2 (valid ids 0..1)"),
])
def test_check_token_ids_names_what_was_seen_and_what_fits(inputs, message):
    with pytest.raises(PrunekitError, match="tokenizer does not match|integer token ids") as refused:
        check_token_ids(_bert(), inputs, "batch 3")
    assert message in str(refused.value)


def test_sequential_capture_refuses_before_running_the_model():
    model = _bert()
    ran = []
    model.embeddings.register_forward_pre_hook(lambda *_: ran.append(True))
    with pytest.raises(PrunekitError, match="input_ids in calibration batch 1 .* go up to 99"):
        capture_block_inputs(model, "encoder.layer", model.encoder.layer, [GOOD, BAD, GOOD], 8, {})
    assert len(ran) == 1  # only the good first batch ran


def test_models_without_token_ids_are_not_checked():
    cnn = small_cnn()
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 9, 99])  # class labels are not token ids
    assert embedding_rows(cnn) is None
    check_token_ids(cnn, images)
    outputs = []
    assert for_each_batch(cnn, [(images, labels)], 1, lambda inputs, targets: outputs.append(cnn(inputs))) == 1
    assert torch.equal(outputs[0], cnn.eval()(images))
    check_token_ids(_bert(), {"inputs_embeds": torch.rand(1, 3, 16)})  # no ids: nothing to check
    embedding_bag = nn.Sequential(nn.Embedding(10, 4))  # no get_input_embeddings(): its vocabulary is unknown
    check_token_ids(embedding_bag, torch.tensor([[1, 2]]))


# ---------------------------------------------------------------- check_tokenizer


def _tokenizer(tmp_path, tokens: list[str]) -> transformers.BertTokenizer:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n")
    return transformers.BertTokenizer.from_pretrained(tmp_path)  # reads vocab.txt (transformers 4 and 5)


def _words(count: int) -> list[str]:
    return [f"word{index}" for index in range(count)]


def test_the_bundled_minilm_tokenizer_matches_its_model():
    from prunekit.hf import load_minilm

    model, tokenizer = load_minilm()
    check_tokenizer(model, tokenizer)
    check_token_ids(model, dict(tokenizer(["a matching tokenizer"], return_tensors="pt")))


def test_a_tokenizer_built_from_the_models_vocabulary_passes(tmp_path):
    tokenizer = _tokenizer(tmp_path, SPECIALS + _words(VOCAB - len(SPECIALS)))
    assert len(tokenizer) == VOCAB and tokenizer.pad_token_id == 0
    check_tokenizer(_bert(), tokenizer)


def test_a_larger_vocabulary_is_refused(tmp_path):
    tokenizer = _tokenizer(tmp_path, SPECIALS + _words(70))
    with pytest.raises(PrunekitError, match="the tokenizer has 75 tokens but the model has 50 rows of input "
                                            "embeddings, so ids 50..74 would index past its vocabulary"):
        check_tokenizer(_bert(), tokenizer)
    from prunekit.hf import token_batches

    with pytest.raises(PrunekitError, match="the tokenizer has 75 tokens"):  # token_batches asks the same
        token_batches(tokenizer, ["word1 word2"], model=_bert())
    assert len(token_batches(tokenizer, ["word1 word2"])) == 1  # without the model there is nothing to compare


def test_another_pad_id_is_refused_naming_both_values(tmp_path):
    tokenizer = _tokenizer(tmp_path, ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"] + _words(VOCAB - 5))
    with pytest.raises(PrunekitError, match=r"the tokenizer's pad token id is 3 but the model's config says "
                                            r"pad_token_id=0; the tokenizer does not match the model"):
        check_tokenizer(_bert(), tokenizer)


class _StubTokenizer:
    """Just what check_tokenizer reads: a length and special-token ids."""

    def __init__(self, size: int, **ids: int | None) -> None:
        self.size = size
        for name in ("pad", "cls", "bos", "eos", "unk"):
            setattr(self, f"{name}_token_id", ids.get(name))

    def __len__(self) -> int:
        return self.size


@pytest.mark.parametrize("config, tokenizer, refused", [
    ({"bos_token_id": 1, "eos_token_id": 2}, _StubTokenizer(VOCAB, bos=1, eos=2), None),
    ({"bos_token_id": 1, "eos_token_id": 2}, _StubTokenizer(VOCAB, bos=1, eos=7), "eos token id is 7 but the "
                                                                                  "model's config says eos_token_id=2"),
    ({"eos_token_id": [2, 5]}, _StubTokenizer(VOCAB, eos=5), None),  # a list of eos ids (Llama 3)
    ({"eos_token_id": [2, 5]}, _StubTokenizer(VOCAB, eos=7), r"eos_token_id=\[2, 5\]"),
    ({}, _StubTokenizer(VOCAB, pad=9, eos=9), None),  # pad borrowed from eos: padding is masked out
    ({}, _StubTokenizer(VOCAB, pad=9), "pad token id is 9"),
    ({"bos_token_id": None}, _StubTokenizer(VOCAB, bos=4), None),  # only ids both sides define
    ({}, _StubTokenizer(VOCAB - 10, pad=0), None),  # fewer tokens than rows (padded embeddings) is fine
])
def test_special_token_ids_are_compared_where_both_define_them(config, tokenizer, refused):
    model = _bert(**config)
    if refused is None:
        check_tokenizer(model, tokenizer)
    else:
        with pytest.raises(PrunekitError, match=refused):
            check_tokenizer(model, tokenizer)
