"""Torch views of the data sets; ``UnlabeledImages`` is the only kind distillation accepts.

``UnlabeledImages`` holds exactly one tensor, the images (N, C, H, W), and a small dict of
facts about them (data set name, split, input shape, normalisation), checked to contain no array.
``ds[i]`` is one image tensor (C, H, W), never a tuple, so a ``DataLoader`` over it yields plain
image batches. ``unlabeled(x)`` builds one from a labelled ``TensorDataset`` by taking its first
tensor and dropping the reference to everything else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from archnet.errors import DataError

_INFO_TYPES = (str, int, float, bool, type(None))


def _check_info(info: dict) -> dict:
    def ok(v):
        if isinstance(v, _INFO_TYPES):
            return True
        if isinstance(v, (list, tuple)):
            return len(v) <= 8 and all(ok(e) for e in v)
        if isinstance(v, dict):
            return all(isinstance(k, str) and ok(e) for k, e in v.items())
        return False
    for key, value in info.items():
        if not ok(value):
            raise DataError(f"UnlabeledImages info {key!r} must be a small plain value, "
                            f"not {type(value).__name__} (labels do not travel with images)")
    return dict(info)


class UnlabeledImages(Dataset):
    """Images only: float NCHW. Indexing returns a tensor; there are no labels to return."""

    __slots__ = ("_images", "_info")

    def __init__(self, images: torch.Tensor, info: dict | None = None):
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if not isinstance(images, torch.Tensor):
            raise DataError(f"UnlabeledImages takes an image tensor, not {type(images).__name__}")
        if images.dim() != 4:
            raise DataError(f"UnlabeledImages takes images (N, C, H, W), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise DataError(f"UnlabeledImages takes float images, got {images.dtype}")
        self._images = images
        self._info = _check_info(info or {})

    @property
    def images(self) -> torch.Tensor:
        return self._images

    @property
    def info(self) -> dict:
        return dict(self._info)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._images.shape[1:])

    def __len__(self) -> int:
        return self._images.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        return self._images[index]

    def __repr__(self) -> str:
        return (f"UnlabeledImages({len(self)} x {tuple(self.image_shape)}, "
                f"{self._info.get('name', '?')}/{self._info.get('split', '?')})")


def unlabeled(data) -> UnlabeledImages:
    """Images only, from an ``UnlabeledImages`` (returned as is), a ``TensorDataset`` whose first
    tensor is the images, or an image tensor/array (N, C, H, W)."""
    if isinstance(data, UnlabeledImages):
        return data
    if isinstance(data, TensorDataset):
        return UnlabeledImages(data.tensors[0])
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return UnlabeledImages(data)
    raise DataError(f"unlabeled() takes an UnlabeledImages, a TensorDataset or an image tensor, "
                    f"not {type(data).__name__}")


def _npy(path: Path, what: str, holds: str) -> np.ndarray:
    """One array of a ``.npy`` file a user hands us, read without running code (no pickles);
    any fault is a one-line ``DataError`` naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: no such {what} file")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy reports empty, cut and pickled files in many ways
        raise DataError(f"{path}: not a NumPy {what} array ({type(exc).__name__}: {exc})") \
            from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: an .npz archive; give one .npy array of {holds}")
    return arr


def npy_labels(path, n: int) -> torch.Tensor:
    """The classes of ``n`` images from a ``.npy`` (one integer >= 0 per image)."""
    path = Path(path)
    y = _npy(path, "label", "labels (N,)")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be one integer per image, a 1-d integer array")
    if len(y) != n:
        raise DataError(f"{path}: {len(y)} labels for {n} images")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: labels must be class indices (>= 0)")
    return torch.from_numpy(y.astype(np.int64))


def distillation_images(dataset: str, data_path: str | None,
                        max_images: int | None) -> torch.Tensor:
    """Unlabeled training images: a named data set (``data_path`` = its folder), or a ``.npy``
    file of images (N, C, H, W), uint8 pixels or floats in [0, 1]; ``max_images``: the first N."""
    from archnet.data import load_dataset
    if data_path is not None and str(data_path).endswith(".npy"):
        path = Path(data_path)
        arr = _npy(path, "image", "images (N, C, H, W)")
        if arr.ndim != 4:
            raise DataError(f"{path}: images must be (N, C, H, W), got shape {arr.shape}")
        if arr.size == 0:
            raise DataError(f"{path}: holds no images (shape {arr.shape})")
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
                raise DataError(f"{path}: float images must lie in [0, 1]")
            arr = arr.astype(np.float32)
        else:
            raise DataError(f"{path}: images must be uint8 or float, got {arr.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        images = load_dataset(dataset, data_path, "train", labels=False).images
    if max_images is not None:
        images = images[:max_images]
    if len(images) == 0:
        raise DataError(f"{data_path or dataset}: no images to distil on")
    return images
