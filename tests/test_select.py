import torch

from prunekit.select import select_by_ratio, select_by_threshold


def test_layer_scope_prunes_exact_count_per_tensor_even_with_ties():
    scores = {"a": torch.zeros(10), "b": torch.arange(7.0)}
    masks = select_by_ratio(scores, 0.35, "layer")
    assert int((~masks["a"]).sum()) == round(0.35 * 10)
    assert int((~masks["b"]).sum()) == round(0.35 * 7)
    # lowest scores of b go first
    assert masks["b"].tolist() == [False, False, True, True, True, True, True]


def test_global_scope_ranks_across_tensors():
    scores = {"a": torch.tensor([[1.0, 9.0], [2.0, 8.0]]), "b": torch.tensor([3.0, 7.0, 0.5])}
    masks = select_by_ratio(scores, 3 / 7, "global")
    assert masks["a"].tolist() == [[False, True], [False, True]]
    assert masks["b"].tolist() == [True, True, False]


def test_threshold_keeps_scores_at_or_above():
    masks = select_by_threshold({"w": torch.tensor([0.1, 0.2, 0.3])}, 0.2)
    assert masks["w"].tolist() == [False, True, True]


def test_zero_sparsity_keeps_everything():
    masks = select_by_ratio({"w": torch.randn(4, 4)}, 0.0, "global")
    assert bool(masks["w"].all())
