"""Fashion-MNIST (Xiao et al. 2017) from its IDX files: 60k train / 10k test, 28x28 grayscale.

The files come from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``) or from
any folder given as ``--data PATH`` holding the same four names, gzip-compressed or not.
Nothing is downloaded. NumPy only: no torch import.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from archnet.data.idx import read_idx
from archnet.errors import DataError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_SIZE = 28
INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` or give `--data PATH`"


def data_dir(data_path: str | os.PathLike | None = None) -> Path:
    """The folder holding the IDX files: ``data_path`` when given, else the Debian one."""
    if data_path is None:
        if not DEFAULT_DIR.is_dir():
            raise DataError(f"Fashion-MNIST not found at {DEFAULT_DIR}: {INSTALL_HINT} "
                            f"(a folder with the four IDX files)")
        return DEFAULT_DIR
    p = Path(data_path)
    if not p.is_dir():
        raise DataError(f"{p}: no such folder for Fashion-MNIST (--data takes a folder holding "
                        f"{FILES['train'][0]}[.gz] and the three other IDX files)")
    return p


def is_available(data_path: str | os.PathLike | None = None) -> bool:
    try:
        d = data_dir(data_path)
        return all(_find(d, name, required=False) for pair in FILES.values() for name in pair)
    except DataError:
        return False


def _find(folder: Path, stem: str, required: bool = True) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    if required:
        raise DataError(f"{folder / stem}[.gz]: Fashion-MNIST file missing; {INSTALL_HINT}")
    return None


def _check_split(split: str) -> None:
    if split not in FILES:
        raise DataError(f"unknown split {split!r} for Fashion-MNIST (train, test)")


def load_images(split: str = "train", data_path: str | os.PathLike | None = None) -> np.ndarray:
    """uint8 images of shape (N, 28, 28), pixel values 0..255, as stored."""
    _check_split(split)
    path = _find(data_dir(data_path), FILES[split][0])
    images = read_idx(path, ndim=3, dtype=np.uint8)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{path}: Fashion-MNIST images are {IMAGE_SIZE}x{IMAGE_SIZE}, "
                        f"file holds {images.shape[1]}x{images.shape[2]}")
    if images.shape[0] == 0:
        raise DataError(f"{path}: no images")
    return images


def load_labels(split: str = "train", data_path: str | os.PathLike | None = None) -> np.ndarray:
    """int64 labels of shape (N,), values 0..9 (``CLASSES``)."""
    _check_split(split)
    path = _find(data_dir(data_path), FILES[split][1])
    labels = read_idx(path, ndim=1, dtype=np.uint8)
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise DataError(f"{path}: label {int(labels.max())} outside 0..{len(CLASSES) - 1}")
    return labels.astype(np.int64)


def load(split: str = "train", data_path: str | os.PathLike | None = None,
         labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 images (N, 28, 28), int64 labels (N,) or None). ``labels=False`` never opens the
    labels file."""
    images = load_images(split, data_path)
    if not labels:
        return images, None
    y = load_labels(split, data_path)
    if len(y) != len(images):
        raise DataError(f"{data_dir(data_path)}: Fashion-MNIST {split} has {len(images)} images "
                        f"but {len(y)} labels")
    return images, y
