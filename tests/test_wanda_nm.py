"""Wanda (|W| * ‖X_j‖₂ of the layer's input features, Sun et al. 2023), row scope and N:M patterns,
against hand-computed tensors, on plain layers, on Hugging Face's transposed Conv1D and on tiny
random-weight BERT and GPT-2 models."""

import copy

import pytest
import torch
import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

from prunekit import get_masks, prune
from prunekit.criteria import CRITERIA
from prunekit.errors import PrunekitError
from prunekit.granularity import get_granularity
from prunekit.stats import collect, collect_input_norms
from prunekit.stats.loop import for_each_batch

from invariants import same_state, small_cnn  # noqa: F401 (one_thread: autouse)

# Three observations of four input features; the columns' norms are 3, 1, 2 and 4 by hand:
# sqrt(1+4+4), sqrt(0+1+0), sqrt(4+0+0), sqrt(0+0+16).
ROWS = torch.tensor([[1.0, 0.0, 2.0, 0.0], [2.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 4.0]])
NORMS = torch.tensor([3.0, 1.0, 2.0, 4.0])
# split over two batches with a sequence dim, as a transformer's tokens arrive
BATCHES = [(ROWS[:2].reshape(1, 2, 4), None), (ROWS[2:].reshape(1, 1, 4), None)]
WEIGHT = torch.tensor([[1.0, -2.0, 3.0, 0.5], [-4.0, 1.0, 0.25, 2.0]])  # (out 2, in 4)


def _linear(weight: torch.Tensor) -> nn.Sequential:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
    return nn.Sequential(layer)


def _conv1d(weight: torch.Tensor) -> nn.Sequential:
    """A transformers Conv1D computing what ``_linear(weight)`` computes: its weight is ``weight.T``."""
    layer = Conv1D(weight.shape[0], weight.shape[1])
    with torch.no_grad():
        layer.weight.copy_(weight.t())
    return nn.Sequential(layer)


def _semi_structured_2_4(dense: torch.Tensor) -> bool:
    """The sparsity rule of ``torch.sparse.to_sparse_semi_structured`` for 2:4, checked by hand: a
    2-D weight ``(out, in)`` whose every run of 4 consecutive entries along a row has <= 2 nonzeros."""
    if dense.dim() != 2 or dense.shape[1] % 4:
        return False
    return bool(((dense.reshape(-1, 4) != 0).sum(dim=1) <= 2).all())


# ---------------------------------------------------------------- the statistics and the scores


def test_input_norms_are_the_l2_norms_of_each_input_feature_over_all_tokens():
    norms = collect_input_norms(_linear(WEIGHT), BATCHES, ["0.weight"])["0.weight"]
    assert torch.allclose(norms.norms, NORMS) and norms.observations == 3
    conv = collect("input-norms", _conv1d(WEIGHT), ["0.weight"], BATCHES)["0.weight"]  # weight (in, out)
    assert torch.allclose(conv.norms, NORMS) and conv.observations == 3


def test_wanda_scores_are_abs_weight_times_input_norm_along_the_input_dim():
    expected = torch.tensor([[3.0, 2.0, 6.0, 2.0], [12.0, 1.0, 0.5, 8.0]])  # |W| * [3, 1, 2, 4] by hand
    unstructured = get_granularity("unstructured")
    for build, reference in ((_linear, expected), (_conv1d, expected.t())):
        model = build(WEIGHT)
        groups = unstructured.find(model, None, ())
        observed = collect("input-norms", model, ["0.weight"], BATCHES)
        evidence = unstructured.evidence(model, groups, observed)["0.weight"]
        assert torch.allclose(CRITERIA["wanda"].score(evidence, torch.Generator()), reference)


def test_dict_batches_are_keyword_inputs_and_other_batches_are_refused():
    seen = []
    for_each_batch(nn.Linear(1, 1), [{"input": torch.ones(1, 1)}], 1, lambda inputs, targets: seen.append(targets))
    assert seen == [None]
    with pytest.raises(PrunekitError, match=r"\(inputs, targets\) pair or a dict"):
        for_each_batch(nn.Linear(1, 1), [(torch.ones(1, 1),)], 1, lambda inputs, targets: None)


# ---------------------------------------------------------------- row scope and N:M


def test_wanda_keeps_the_best_half_of_each_row_by_hand():
    # row scores [3, 2, 6, 2] and [12, 1, 0.5, 8]: each row keeps its two best
    expected = torch.tensor([[True, False, True, False], [True, False, False, True]])
    result = prune(linear := _linear(WEIGHT), "wanda", 0.5, data=BATCHES)
    assert result.scope == "row" and torch.equal(linear[0].weight != 0, expected)
    conv = _conv1d(WEIGHT)
    prune(conv, "wanda", 0.5, data=BATCHES)
    assert torch.equal(conv[0].weight != 0, expected.t())  # the layer's rows are the weight's columns
    magnitude = _linear(WEIGHT)  # |W| alone keeps -2 (score 2) over 1 (score 3) in row 0
    prune(magnitude, "magnitude", 0.5)
    assert torch.equal(magnitude[0].weight != 0, torch.tensor([[False, True, True, False], [True, False, False, True]]))


@pytest.mark.parametrize("build, row_dim", [(_linear, 0), (_conv1d, 1)])
def test_row_scope_takes_the_same_share_from_every_output_row(build, row_dim):
    torch.manual_seed(0)
    model = build(torch.randn(6, 10))
    result = prune(model, "magnitude", 0.3, scope="row")
    zeros_per_row = (model[0].weight == 0).sum(dim=1 - row_dim)
    assert result.scope == "row" and zeros_per_row.tolist() == [3] * 6


WIDE = torch.tensor([[1.0, 4.0, 3.0, 2.0, 9.0, 0.5, 0.5, 8.0], [-5.0, 6.0, -7.0, 1.0, 2.0, 2.0, 2.0, 3.0]])
KEEP_2_4 = [[0, 1, 1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0, 0, 1]]  # row 1's last run ties 2, 2, 2: the first stays
KEEP_4_8 = [[0, 1, 1, 0, 1, 0, 0, 1], [1, 1, 1, 0, 0, 0, 0, 1]]


@pytest.mark.parametrize("pattern, expected", [("2:4", KEEP_2_4), ("4:8", KEEP_4_8)])
def test_nm_keeps_the_n_best_of_every_m_consecutive_inputs(pattern, expected):
    linear, conv = _linear(WIDE), _conv1d(WIDE)
    result = prune(linear, "magnitude", pattern=pattern)
    prune(conv, "magnitude", pattern=pattern)
    assert result.sparsity_target == 0.5 and result.sparsity_achieved == 0.5
    assert result.pattern == pattern and f"pattern {pattern}" in str(result)
    assert (linear[0].weight != 0).int().tolist() == expected
    assert (conv[0].weight.t() != 0).int().tolist() == expected  # runs along the Conv1D's input dim 0


def test_two_four_masks_meet_the_semi_structured_rule():
    assert _semi_structured_2_4(torch.tensor([[1.0, 0.0, 0.0, 2.0, 0.0, 3.0, 4.0, 0.0]]))
    assert not _semi_structured_2_4(torch.tensor([[1.0, 2.0, 0.0, 3.0]]))  # three of four kept
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), Conv1D(4, 8))
    prune(model, "wanda", pattern="2:4", data=[(torch.randn(5, 16), None)])
    assert _semi_structured_2_4(model[0].weight) and _semi_structured_2_4(model[2].weight.t())


# ---------------------------------------------------------------- bad input


def test_a_width_the_pattern_does_not_divide_is_refused_with_the_model_unchanged():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    before = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match=r"'2\.weight' reads 6 input features.*exclude=\['2\.weight'\]"):
        prune(model, "magnitude", pattern="2:4")
    assert same_state(model, before) and get_masks(model) == {}
    assert prune(model, "magnitude", pattern="2:4", exclude=["2"]).layer_sparsity == {"0.weight": 0.5}


@pytest.mark.parametrize("arguments, message", [
    ({"sparsity": 0.6}, "sparsity=0.6 contradicts the 50%"),
    ({"threshold": 0.1}, "leave threshold unset"),
    ({"scope": "global"}, "leave scope unset"),
    ({"granularity": "neuron", "example_inputs": torch.ones(1, 8)}, "leave granularity at 'unstructured'"),
    ({"layer_sparsity": {"0.weight": 0.5}}, "layer_sparsity would give"),
])
def test_a_pattern_with_a_conflicting_goal_is_refused(arguments, message):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    before = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match=message):
        prune(model, "magnitude", pattern="2:4", **arguments)
    assert same_state(model, before) and get_masks(model) == {}


@pytest.mark.parametrize("pattern", ["4:2", "2-4", "0:4", 2])
def test_a_malformed_pattern_is_refused(pattern):
    with pytest.raises(PrunekitError, match="pattern must be 'N:M'"):
        prune(nn.Linear(8, 8), "magnitude", pattern=pattern)


def test_wanda_refuses_layers_whose_inputs_it_cannot_read_and_row_scope_needs_weights():
    model = small_cnn()
    before = copy.deepcopy(model)
    with pytest.raises(PrunekitError, match=r"is a Conv2d.*exclude="):
        prune(model, "wanda", 0.5, data=[(torch.randn(2, 1, 8, 8), None)])
    with pytest.raises(PrunekitError, match="scope 'row' needs each weight's output and input dims"):
        prune(model, "l1", 0.5, granularity="channel", scope="row", example_inputs=torch.randn(2, 1, 8, 8))
    with pytest.raises(PrunekitError, match="needs data"):
        prune(model, "wanda", 0.5)
    assert same_state(model, before) and get_masks(model) == {}


# ---------------------------------------------------------------- tiny transformers


def _bert() -> nn.Module:
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100)
    return transformers.BertModel(config).eval()


def _gpt2() -> nn.Module:
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2Model(config).eval()


def _token_batches(seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 100, (2, 8), generator=generator),
             "attention_mask": torch.ones(2, 8, dtype=torch.long)} for _ in range(2)]


def _rows(model: nn.Module, name: str) -> torch.Tensor:
    """The weight `name` as ``(out, in)``: GPT-2's Conv1D stores it transposed."""
    module = model.get_submodule(name.rpartition(".")[0])
    weight = module.weight  # as the forward pass sees it (masked)
    return weight.t() if isinstance(module, Conv1D) else weight


@pytest.mark.parametrize("build, blocks", [(_bert, "encoder.layer."), (_gpt2, "h.")])
@pytest.mark.parametrize("goal", [{"sparsity": 0.5}, {"pattern": "2:4"}])
def test_wanda_prunes_every_block_weight_of_a_tiny_transformer_to_its_target(build, blocks, goal):
    torch.manual_seed(0)
    dense, batches = build(), _token_batches()
    model = copy.deepcopy(dense)
    result = prune(model, "wanda", data=batches, **goal)
    targets = [name for name, _ in dense.named_parameters()
               if name.startswith(blocks) and name.endswith("weight") and _rows(dense, name).dim() == 2
               and "LayerNorm" not in name and ".ln_" not in name]
    assert sorted(result.targets) == sorted(targets) and len(targets) == (12 if blocks == "encoder.layer." else 8)
    assert set(result.layer_sparsity.values()) == {0.5}
    for name in targets:
        rows = _rows(model, name)
        assert ((rows == 0).sum(dim=1) == rows.shape[1] // 2).all(), name  # every output row loses half
        if "pattern" in goal:
            assert _semi_structured_2_4(rows), name
    untouched = [name for name, _ in dense.named_parameters() if name not in targets]
    assert all(torch.equal(model.get_parameter(name), dense.get_parameter(name)) for name in untouched)  # pooler too
    with torch.no_grad():
        change = (model(**batches[0]).last_hidden_state - dense(**batches[0]).last_hidden_state).abs().max()
    assert torch.isfinite(change) and change > 1e-3


def test_gpt2_wanda_two_four_keeps_the_top_two_by_hand_computed_scores():
    torch.manual_seed(1)
    dense, batches = _gpt2(), _token_batches(1)
    seen = []
    hook = dense.h[0].mlp.c_fc.register_forward_pre_hook(lambda module, args: seen.append(args[0].reshape(-1, 32)))
    with torch.no_grad():
        for batch in batches:
            dense(**batch)
    hook.remove()
    scores = dense.h[0].mlp.c_fc.weight.detach().abs() * torch.cat(seen).norm(dim=0)[:, None]  # (in 32, out 128)
    expected = torch.zeros_like(scores, dtype=torch.bool)
    for column in range(scores.shape[1]):
        for start in range(0, scores.shape[0], 4):
            best = scores[start:start + 4, column].topk(2).indices + start
            expected[best, column] = True
    model = copy.deepcopy(dense)
    prune(model, "wanda", pattern="2:4", data=batches)
    assert torch.equal(model.h[0].mlp.c_fc.weight != 0, expected)
