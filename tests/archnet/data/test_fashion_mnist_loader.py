"""Fashion-MNIST from IDX files: a synthetic folder always; the Debian package when installed."""

import numpy as np
import pytest

from archnet.data import fashion_mnist, load_arrays
from archnet.data.idx import write_idx
from archnet.errors import DataError


def _folder(tmp_path, n_train=10, n_test=5, gz=True, labels_max=9):
    rng = np.random.default_rng(1)
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", rng.integers(0, labels_max + 1, n_train, dtype=np.uint8))
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_test, dtype=np.uint8))
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_loads_a_folder_and_normalises_by_255(tmp_path, gz):
    d = _folder(tmp_path, gz=gz)
    x, y = load_arrays("fashion-mnist", d, "train")
    raw = fashion_mnist.load_images("train", d)
    assert x.shape == (10, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], raw.astype(np.float32) / 255)
    np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8)[:, 0], raw)  # lossless u8
    assert load_arrays("fashion-mnist", d, "test")[0].shape == (5, 1, 28, 28)
    assert fashion_mnist.is_available(d)


def test_count_mismatch_and_bad_labels(tmp_path):
    d = _folder(tmp_path)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        load_arrays("fashion-mnist", d, "test")
    write_idx(d / "train-labels-idx1-ubyte.gz", np.full(10, 10, np.uint8))
    with pytest.raises(DataError, match=r"label 10 outside 0..9"):
        load_arrays("fashion-mnist", d, "train")


def test_wrong_image_size_names_the_file(tmp_path):
    d = _folder(tmp_path)
    p = write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((10, 32, 32), np.uint8))
    with pytest.raises(DataError, match="28x28, file holds 32x32") as info:
        load_arrays("fashion-mnist", d, "train")
    assert str(p) in str(info.value)


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEFAULT_DIR", tmp_path / "not-installed")
    with pytest.raises(DataError) as info:
        load_arrays("fashion-mnist")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data PATH" in msg
    with pytest.raises(DataError, match="no such folder"):
        load_arrays("fashion-mnist", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="file missing.*apt-get install dataset-fashion-mnist"):
        load_arrays("fashion-mnist", tmp_path / "empty")
    assert not fashion_mnist.is_available(tmp_path / "empty")


@pytest.mark.skipif(not fashion_mnist.is_available(),
                    reason="Debian package dataset-fashion-mnist not installed "
                           "(apt-get install dataset-fashion-mnist)")
def test_debian_package():
    ytr = fashion_mnist.load_labels("train")
    xte, yte = load_arrays("fashion-mnist", split="test")
    assert fashion_mnist.load_images("train").shape == (60000, 28, 28)
    assert xte.shape == (10000, 1, 28, 28) and xte.dtype == np.float32
    assert xte.min() == 0.0 and xte.max() == 1.0
    assert np.bincount(ytr).tolist() == [6000] * 10  # balanced, as published
    assert np.bincount(yte).tolist() == [1000] * 10
