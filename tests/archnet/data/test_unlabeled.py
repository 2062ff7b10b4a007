"""Distillation's data: images only, and for labels=False the labels file is never opened."""

import gc

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from archnet.data import UnlabeledImages, load_dataset, unlabeled
from archnet.data.idx import write_idx
from archnet.errors import DataError


def _tensors_reachable(obj):
    """Tensors held by ``obj`` directly or one container down."""
    found = []
    for ref in gc.get_referents(obj):
        items = ref.values() if isinstance(ref, dict) else ref if isinstance(ref, (list, tuple)) else [ref]
        found += [t for t in items if isinstance(t, torch.Tensor)]
    for name in getattr(type(obj), "__slots__", ()):
        value = getattr(obj, name, None)
        if isinstance(value, torch.Tensor) and not any(value is t for t in found):
            found.append(value)
    return found


def test_unlabeled_view_of_a_labelled_dataset_holds_only_images():
    labelled = load_dataset("digits", split="test")
    images, labels = labelled.tensors
    u = unlabeled(labelled)
    assert isinstance(u, UnlabeledImages)
    held = _tensors_reachable(u)
    assert len(held) == 1 and held[0] is images
    assert not any(t is labels for t in held)
    item = u[3]
    assert isinstance(item, torch.Tensor) and item.shape == (1, 16, 16)
    assert torch.equal(item, images[3])
    assert len(u) == len(labelled)
    # a DataLoader yields bare image batches, never (images, labels)
    batch = next(iter(DataLoader(u, batch_size=8, shuffle=False)))
    assert isinstance(batch, torch.Tensor) and batch.shape == (8, 1, 16, 16)
    assert unlabeled(u) is u


def test_labels_false_never_opens_a_labels_file(tmp_path):
    """A folder with image files only: labels=False works, labels=True names the missing file."""
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (4, 28, 28), dtype=np.uint8))
    u = load_dataset("fashion-mnist", tmp_path, "train", labels=False)
    assert isinstance(u, UnlabeledImages) and len(u) == 6 and u.image_shape == (1, 28, 28)
    assert u.info["split"] == "train" and u.info["normalisation"]["pixel_max"] == 255
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", tmp_path, "train", labels=True)


def test_info_cannot_smuggle_arrays():
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(DataError, match="labels do not travel"):
        UnlabeledImages(x, info={"labels": torch.arange(4)})
    with pytest.raises(DataError, match="labels do not travel"):
        UnlabeledImages(x, info={"labels": np.arange(4)})
    with pytest.raises(DataError):
        UnlabeledImages(x, info={"labels": list(range(100))})


def test_rejects_what_is_not_an_image_batch():
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        unlabeled(torch.zeros(4, 8, 8))
    with pytest.raises(DataError, match="float"):
        unlabeled(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(DataError, match="not tuple"):
        unlabeled((torch.zeros(4, 1, 8, 8), torch.zeros(4)))
    u = unlabeled(TensorDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1])))
    assert len(u) == 2
