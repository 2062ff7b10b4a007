"""TFLite's arithmetic choices (the tflite-reference profile): the numba kernels equal the
reference, and the reference equals TFLite's kernels written out step by step here.

* ADD ``per_operand``: each operand << 20 rescaled alone, the sum rescaled (add.cc / add.h);
* FULLY_CONNECTED ``float64_half_away``: round(acc * double scale), ties away from zero;
* MEAN ``tflite_mean``: QuantizeMultiplier(in/out) << floor(log2 n) // n, one rescale;
* AVERAGE_POOL_2D ``raw``: the mean of the stored integers (zero point in), ties away.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from numerics.strategies import edgy_integers, int_types, of_type
from simulator.contract import IntType, RequantMode, RequantSpec, RoundingMode
from simulator.numerics import fixed_point as fp
from simulator.numerics import kernels, reference

FAST = settings(deadline=None)
TFLITE = RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE, 32)
ROUNDINGS = st.sampled_from([RoundingMode.TFLITE, RoundingMode.HALF_UP, RoundingMode.HALF_AWAY,
                             RoundingMode.HALF_EVEN, RoundingMode.FLOOR])
scales = st.floats(1e-4, 1.0).map(lambda s: float(np.float32(s)))


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype == np.int64 and a.shape == b.shape
    assert np.array_equal(a, b), np.argwhere(a != b)[:3]


# ----------------------------------------------------------------------------- kernels

@FAST
@given(int_types(bits=(8,)), ROUNDINGS, scales, scales, scales, st.data())
def test_add_per_operand_kernel_equals_reference(t, rounding, sa, sb, sy, data):
    a, b = data.draw(of_type((2, 3, 4), t)), data.draw(of_type((2, 3, 4), t))
    za, zb, zy = (data.draw(edgy_integers(t.qmin, t.qmax)) for _ in range(3))
    spec = RequantSpec(RequantMode.MULTIPLIER_SHIFT, rounding, 32)
    prepared = fp.prepare_add_per_operand(sa, sb, sy, spec)
    args = (a, za, b, zb, prepared, rounding, zy, t.qmin, t.qmax)
    _same(kernels.add_per_operand(*args), reference.add_per_operand(*args))


@FAST
@given(st.integers(-(1 << 31), (1 << 31) - 1).flatmap(
    lambda v: st.just(np.array([v, -v // 3, 7, -7, 0], np.int64))),
       st.lists(st.floats(1e-6, 4.0), min_size=1, max_size=5), st.integers(-128, 127))
def test_requantize_float64_kernel_equals_reference(acc, scale_list, zy):
    per_channel = len(scale_list) == acc.size
    x = acc.reshape(1, -1)
    s = scale_list if per_channel else scale_list[:1]
    _same(kernels.requantize_float64(x, 0, s, 1, zy, -128, 127),
          reference.requantize_float64(x, 0, s, 1, zy, -128, 127))


@FAST
@given(st.integers(1, 9), st.integers(1, 9), scales, scales, st.integers(-128, 127),
       st.integers(-128, 127), st.data())
def test_global_mean_kernel_equals_reference(h, w, s_in, s_out, zx, zy, data):
    x = data.draw(of_type((2, 3, h, w), IntType(8, True)))
    prepared = fp.prepare_tflite_mean(s_in / s_out, h * w, TFLITE)
    _same(kernels.global_mean(x, zx, prepared, zy, -128, 127),
          reference.global_mean(x, zx, prepared, zy, -128, 127))


# ----------------------------------------------------------------------------- TFLite, by hand

def _srdhm(a: int, b: int) -> int:
    if a == b == -(1 << 31):
        return (1 << 31) - 1
    ab = a * b
    v = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    return (abs(v) >> 31) * (1 if v >= 0 else -1)  # C division: toward zero


def _rdbpot(x: int, e: int) -> int:
    mask = (1 << e) - 1
    return (x >> e) + ((x & mask) > (mask >> 1) + (x < 0))


def _quantize_multiplier(d: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: (int32 multiplier, exponent)."""
    q, e = math.frexp(d)
    m = int(math.copysign(math.floor(abs(q) * (1 << 31) + 0.5), q))
    if m == 1 << 31:
        m, e = m // 2, e + 1
    return m, e


def _mbqm(x: int, d: float) -> int:
    """MultiplyByQuantizedMultiplier (double rounding) of x by the real multiplier d."""
    m, e = _quantize_multiplier(d)
    left, right = max(e, 0), max(-e, 0)
    return _rdbpot(_srdhm(x * (1 << left), m), right)


@FAST
@given(st.integers(-128, 127), st.integers(-128, 127), scales, scales, scales,
       st.integers(-20, 20), st.integers(-20, 20), st.integers(-20, 20))
def test_add_per_operand_is_tflites_add(a, b, sa, sb, sy, za, zb, zy):
    twice = 2 * max(sa, sb)
    raw = _mbqm((a - za) << 20, sa / twice) + _mbqm((b - zb) << 20, sb / twice)
    want = min(max(_mbqm(raw, twice / ((1 << 20) * sy)) + zy, -128), 127)
    got = reference.add_per_operand(np.int64(a), za, np.int64(b), zb,
                                    fp.prepare_add_per_operand(sa, sb, sy, TFLITE),
                                    RoundingMode.TFLITE, zy, -128, 127)
    assert int(got) == want


@FAST
@given(st.integers(1, 300), st.lists(st.integers(-128, 127), min_size=1, max_size=40),
       scales, scales, st.integers(-20, 20), st.integers(-20, 20))
def test_tflite_mean_is_quantized_mean_or_sum(n_extra, values, s_in, s_out, zx, zy):
    total = sum(v - zx for v in values)
    n = len(values) + n_extra  # the count need not be the number of values summed here
    m, e = _quantize_multiplier(s_in / s_out)
    k = min(n.bit_length() - 1, 32, 31 + e)
    m2, e2 = (m << k) // n, e - k
    want = min(max(_rdbpot(_srdhm(total * (1 << max(e2, 0)), m2), max(-e2, 0)) + zy, -128),
               127)
    prepared = fp.prepare_tflite_mean(s_in / s_out, n, TFLITE)
    got = fp.requantize(np.int64(total), 0, prepared, zy, -128, 127)
    assert int(got) == want


def test_float64_requantize_rounds_ties_away_from_zero():
    got = reference.requantize_float64(np.array([[4, -4, 12, -12, 5]]), 0, [0.125], 1, 0, -128,
                                       127)
    assert got.tolist() == [[1, -1, 2, -2, 1]]  # 0.5 -> 1, -0.5 -> -1, 1.5 -> 2, -1.5 -> -2


def test_raw_average_keeps_the_zero_point_inside_the_rounding():
    """Taps 1 and 0 with zero point 5: the raw mean 0.5 rounds away to 1; the centred mean
    (-4 - 5) / 2 = -4.5 rounds away to -5, plus 5 is 0. Ties away from zero are not
    translation-invariant, so where the zero point goes decides the answer."""
    x = np.array([[[[1, 0]]]])
    raw = reference.avgpool2d(x, 0, (1, 2), (1, 1), (0, 0, 0, 0), False, RoundingMode.TFLITE)
    centred = reference.avgpool2d(x, 5, (1, 2), (1, 1), (0, 0, 0, 0), False,
                                  RoundingMode.TFLITE)
    assert raw.ravel().tolist() == [1] and centred.ravel().tolist() == [0]
