"""Digits: 1x16x16 float32 in [0, 1], a fixed split, pixel-exact upsampling of sklearn's 8x8."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from archnet.data import dataset_info, load_arrays, load_dataset
from archnet.data.digits import split_indices
from archnet.errors import DataError


def test_shapes_dtypes_ranges():
    xtr, ytr = load_arrays("digits", split="train")
    xte, yte = load_arrays("digits", split="test")
    assert xtr.shape == (1437, 1, 16, 16) and xte.shape == (360, 1, 16, 16)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64
    for x in (xtr, xte):
        assert x.min() == 0.0 and x.max() == 1.0
    for y in (ytr, yte):
        assert set(np.unique(y)) == set(range(10))  # every class in both splits
    assert dataset_info("digits")["input_shape"] == [1, 16, 16]


def test_pixels_are_sklearn_pixels_over_16_replicated_2x2():
    raw = load_digits()
    idx = split_indices(len(raw.images), "test")
    x, y = load_arrays("digits", split="test")
    np.testing.assert_array_equal(y, raw.target[idx])
    expect = np.kron(raw.images[idx], np.ones((2, 2))) / 16.0
    np.testing.assert_array_equal(x[:, 0], expect.astype(np.float32))


def test_split_is_deterministic_disjoint_and_complete():
    n = len(load_digits().images)
    tr, te = split_indices(n, "train"), split_indices(n, "test")
    assert not set(tr) & set(te) and len(tr) + len(te) == n
    a, b = load_arrays("digits", split="train"), load_arrays("digits", split="train")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_load_dataset_kinds():
    ds = load_dataset("digits", split="test")
    assert isinstance(ds, TensorDataset)
    x, y = ds[0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    u = load_dataset("digits", split="test", labels=False)
    assert not isinstance(u, TensorDataset)
    assert torch.equal(u.images, ds.tensors[0])


def test_user_errors():
    with pytest.raises(DataError, match="--data does not apply"):
        load_arrays("digits", data_path="/tmp")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_arrays("digits", split="val")
    with pytest.raises(DataError, match="unknown data set 'cifar10'"):
        load_dataset("cifar10")
