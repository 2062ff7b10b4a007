"""Tables for the interpolated 16-bit lookup (``lookup_table`` with ``interpolated``): a
function sampled at the 513 inputs TOSA's TABLE reads, -32768 + 128 i (the last one past s16,
the end of the top interval), on an output grid. Values only: the arithmetic that reads them is
``fixed_point.lookup_interpolated``."""

from __future__ import annotations

import numpy as np

from simulator.contract import INTERPOLATED_TABLE_ENTRIES, INTERPOLATION_FRACTION_BITS, S16


def sample_points() -> np.ndarray:
    """The s16 inputs the table's entries stand for."""
    return S16.qmin + np.arange(INTERPOLATED_TABLE_ENTRIES) * (1 << INTERPOLATION_FRACTION_BITS)


def rsqrt_table(in_scale: float, out_scale: float, eps: float, floor: float = 0.0,
                in_zp: int = 0) -> list[int]:
    """1 / sqrt(v + eps) at the sample points, v = in_scale * (q - in_zp) but at least
    ``floor`` (negative inputs never occur; a floor keeps the first interval between values a
    token can have), rounded to the output grid and clipped to s16."""
    v = np.maximum((sample_points() - in_zp) * in_scale, floor)
    return np.clip(np.rint(1.0 / np.sqrt(v + eps) / out_scale), S16.qmin, S16.qmax).astype(
        int).tolist()
