"""scikit-learn's bundled handwritten digits (1797 images, 8x8, values 0..16) for fast runs.

Each 8x8 image is upsampled to 16x16 by pixel replication (every pixel becomes a 2x2 block:
exact, no interpolation), large enough for a ResNet with a 7x7 stem and two stride-2 stages.
The train/test split is fixed and stratification-free but deterministic and independent of any
random generator: sample ``i`` is a test sample when ``i % 5 == 0`` (360 test, 1437 train).
NumPy and scikit-learn only: no torch import.
"""

from __future__ import annotations

import numpy as np

from archnet.errors import DataError

CLASSES = tuple(str(i) for i in range(10))
PIXEL_MAX = 16
NATIVE_SIZE = 8
UPSAMPLE = 2
IMAGE_SIZE = NATIVE_SIZE * UPSAMPLE
TEST_EVERY = 5


def _raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        raise DataError("the digits data set needs scikit-learn (pip install scikit-learn)") from None
    bunch = load_digits()
    images = np.asarray(bunch.images)
    if images.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE) or images.min() < 0 or images.max() > PIXEL_MAX:
        raise DataError(f"scikit-learn digits: unexpected images {images.shape} "
                        f"range {images.min()}..{images.max()}")
    return images.astype(np.uint8), np.asarray(bunch.target, dtype=np.int64)


def split_indices(n: int, split: str) -> np.ndarray:
    test = np.arange(n) % TEST_EVERY == 0
    if split == "test":
        return np.flatnonzero(test)
    if split == "train":
        return np.flatnonzero(~test)
    raise DataError(f"unknown split {split!r} for digits (train, test)")


def load(split: str = "train", data_path=None,
         labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 images (N, 16, 16), values 0..16; int64 labels (N,) or None)."""
    if data_path is not None:
        raise DataError("the digits data set is bundled with scikit-learn: --data does not apply")
    images, y = _raw()
    idx = split_indices(len(images), split)
    images = images[idx].repeat(UPSAMPLE, axis=1).repeat(UPSAMPLE, axis=2)
    return np.ascontiguousarray(images), (y[idx] if labels else None)
