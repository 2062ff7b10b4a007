"""Data sets for teachers (labelled) and for distillation (unlabeled images only).

Two data sets, both offline:

- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` IDX files (or ``data_path``), 60k/10k,
  1x28x28;
- ``digits``: scikit-learn's bundled 8x8 digits, upsampled to 1x16x16, 1437/360.

**Normalisation** (the same for both, recorded in every teacher checkpoint): images are float32
NCHW with ``x = pixel / pixel_max`` (255 for Fashion-MNIST, 16 for digits), so ``x`` lies in
[0, 1]; no mean or standard deviation is subtracted (the teacher's first batch-norm absorbs the
scale). For Fashion-MNIST, ``x * 255`` is the stored uint8 pixel exactly, so an unsigned 8-bit
input quantizer with scale 1/255 and zero point 0 is lossless.

Labels are only reachable through ``load_dataset(..., labels=True)`` and ``load_arrays``; the
callers that ask for them are teacher training (which learns from them) and ``archnet verify``
(which scores test-set accuracy with them). Distillation takes
``unlabeled(...)`` / ``load_dataset(..., labels=False)``: an ``UnlabeledImages`` data set that holds
one tensor (the images), yields one tensor per item, and for ``labels=False`` is built without ever
opening a labels file.

This module and ``idx``, ``fashion_mnist``, ``digits`` import no torch; the torch views live in
``archnet.data.datasets`` and are imported on first use.
"""

from __future__ import annotations

import os

import numpy as np

from archnet.errors import DataError

DATASETS = ("fashion-mnist", "digits")


def _module(name: str):
    if name == "fashion-mnist":
        from archnet.data import fashion_mnist
        return fashion_mnist
    if name == "digits":
        from archnet.data import digits
        return digits
    raise DataError(f"unknown data set {name!r} (known: {', '.join(DATASETS)})")


def dataset_info(name: str) -> dict:
    """What a model needs to know about a data set: classes, input shape, normalisation."""
    mod = _module(name)
    pixel_max = 255 if name == "fashion-mnist" else mod.PIXEL_MAX
    return {
        "name": name,
        "classes": list(mod.CLASSES),
        "num_classes": len(mod.CLASSES),
        "input_shape": [1, mod.IMAGE_SIZE, mod.IMAGE_SIZE],
        "normalisation": {
            "formula": f"x = pixel / {pixel_max}",
            "pixel_max": pixel_max,
            "mean": 0.0,
            "std": 1.0,
            "range": [0.0, 1.0],
            "layout": "NCHW float32",
        },
    }


def load_arrays(name: str, data_path: str | os.PathLike | None = None, split: str = "train",
                labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(float32 images (N, 1, H, W) in [0, 1], int64 labels (N,) or None when ``labels=False``)."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} (train, test)")
    mod = _module(name)
    raw, y = mod.load(split, data_path, labels=labels)
    pixel_max = dataset_info(name)["normalisation"]["pixel_max"]
    images = (raw.astype(np.float32) / np.float32(pixel_max))[:, None, :, :]
    return np.ascontiguousarray(images), y


def load_dataset(name: str, data_path: str | os.PathLike | None = None, split: str = "train",
                 labels: bool = True):
    """``TensorDataset(images, labels)`` when ``labels``, else ``UnlabeledImages(images)``.

    Images are float32 NCHW in [0, 1] (see the module's note on normalisation); labels int64.
    """
    import torch
    from torch.utils.data import TensorDataset

    from archnet.data.datasets import UnlabeledImages
    images, y = load_arrays(name, data_path, split, labels=labels)
    info = {k: v for k, v in dataset_info(name).items() if k != "classes"}
    info["split"] = split
    if not labels:
        return UnlabeledImages(torch.from_numpy(images), info=info)
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(y))


def unlabeled(data):
    """An ``UnlabeledImages`` view of ``data`` that keeps the images and nothing else."""
    from archnet.data.datasets import unlabeled as _unlabeled
    return _unlabeled(data)


def __getattr__(attr):
    if attr == "UnlabeledImages":
        from archnet.data.datasets import UnlabeledImages
        return UnlabeledImages
    raise AttributeError(f"module 'archnet.data' has no attribute {attr!r}")


__all__ = ["DATASETS", "dataset_info", "load_arrays", "load_dataset", "unlabeled", "UnlabeledImages"]
