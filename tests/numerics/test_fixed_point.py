"""Pinned tables for the spec (``fixed_point``), in the manner of Vela's ``test_fp_math.py``.

Every expected value here was worked out by hand (or against TFLite's published
``QuantizeMultiplier`` pairs), not by running the code under test; an independent exact
rational oracle (``fractions.Fraction``) cross-checks the rounding tables over a range.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from simulator.contract import AccumulatorSpec, Overflow, RequantMode, RequantSpec, RoundingMode
from simulator.contract import SaturationPoint
from simulator.errors import SimulatorError
from simulator.numerics import fixed_point as fp
from simulator.numerics.fixed_point import INT32_MAX, INT32_MIN, OverflowStats

# ----------------------------------------------------------------------------- multipliers

# (scale, TFLite QuantizeMultiplier's (quantized_multiplier, shift)); ours is (M, 31 - shift)
TFLITE_PAIRS = [
    (0.5, 1073741824, 0),
    (1.0, 1073741824, 1),
    (2.0, 1073741824, 2),
    (0.25, 1073741824, -1),
    (0.75, 1610612736, 0),
    (0.1, 1717986918, -3),
    (1 / 3, 1431655765, -1),
    (1 - 2.0 ** -33, 1073741824, 1),   # rounds up to 2**31: TFLite halves it and bumps the shift
]


@pytest.mark.parametrize("scale, m_tflite, shift_tflite", TFLITE_PAIRS)
def test_quantize_multiplier_matches_tflite(scale, m_tflite, shift_tflite):
    m, s = fp.quantize_multiplier(scale, 32)
    assert (int(m[0]), int(s[0])) == (m_tflite, 31 - shift_tflite)


@pytest.mark.parametrize("scale, bits, expected", [
    (0.1, 8, (102, 10)),          # 0.8 * 2**7 = 102.4 -> 102, exponent -3
    (0.1, 16, (26214, 18)),       # 0.8 * 2**15 = 26214.4
    (0.75, 2, (1, 0)),            # 0.75 * 2 + 0.5 -> 2 == 2**1: halved, exponent + 1 -> 1 * 2**0
    (0.0, 32, (0, 0)),
    (2.0 ** -40, 32, (1 << 22, 62)),  # shift capped at 62: multiplier bits are lost instead
    (2.0 ** 30, 32, (1 << 30, 0)),
])
def test_quantize_multiplier_other_widths_and_extremes(scale, bits, expected):
    m, s = fp.quantize_multiplier(scale, bits)
    assert (int(m[0]), int(s[0])) == expected


def test_quantize_multiplier_per_channel_and_errors():
    m, s = fp.quantize_multiplier([0.5, 0.25, 0.0], 32)
    assert m.tolist() == [1 << 30, 1 << 30, 0] and s.tolist() == [31, 32, 0]
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(SimulatorError):
            fp.quantize_multiplier(bad, 32)
    with pytest.raises(SimulatorError, match="too large"):
        fp.quantize_multiplier(2.0 ** 31, 32)


def test_quantize_multiplier_pair_shares_the_larger_scales_shift():
    assert fp.quantize_multiplier_pair(0.5, 0.25, 32) == (1 << 30, 1 << 29, 31)
    assert fp.quantize_multiplier_pair(0.25, 0.5, 32) == (1 << 29, 1 << 30, 31)
    assert fp.quantize_multiplier_pair(0.0, 0.0, 32) == (0, 0, 0)


# ----------------------------------------------------------------------------- rounding

HALVES = np.array([-3, -2, -1, 0, 1, 2, 3])  # / 2 -> -1.5 -1 -0.5 0 0.5 1 1.5

ROUND_SHIFT_BY_1 = {
    RoundingMode.FLOOR: [-2, -1, -1, 0, 0, 1, 1],
    RoundingMode.HALF_UP: [-1, -1, 0, 0, 1, 1, 2],
    RoundingMode.HALF_EVEN: [-2, -1, 0, 0, 0, 1, 2],
    RoundingMode.HALF_AWAY: [-2, -1, -1, 0, 1, 1, 2],
}


@pytest.mark.parametrize("rounding", list(ROUND_SHIFT_BY_1))
def test_round_shift_ties_table(rounding):
    assert fp.round_shift(HALVES, 1, rounding).tolist() == ROUND_SHIFT_BY_1[rounding]
    assert fp.round_shift(HALVES, 0, rounding).tolist() == HALVES.tolist()


@pytest.mark.parametrize("rounding, expected", [
    # / 4 of -6 -5 -2 -1 1 2 5 6 -> -1.5 -1.25 -0.5 -0.25 0.25 0.5 1.25 1.5
    (RoundingMode.FLOOR, [-2, -2, -1, -1, 0, 0, 1, 1]),
    (RoundingMode.HALF_UP, [-1, -1, 0, 0, 0, 1, 1, 2]),
    (RoundingMode.HALF_EVEN, [-2, -1, 0, 0, 0, 0, 1, 2]),
    (RoundingMode.HALF_AWAY, [-2, -1, -1, 0, 0, 1, 1, 2]),
])
def test_round_shift_by_2_table(rounding, expected):
    v = np.array([-6, -5, -2, -1, 1, 2, 5, 6])
    assert fp.round_shift(v, 2, rounding).tolist() == expected


def test_round_shift_has_no_tflite_form():
    with pytest.raises(SimulatorError):
        fp.round_shift(np.array([1]), 1, RoundingMode.TFLITE)


@pytest.mark.parametrize("rounding, expected", [
    # n / 4 for n = -6 -2 -1 2 6 -> -1.5 -0.5 -0.25 0.5 1.5
    (RoundingMode.FLOOR, [-2, -1, -1, 0, 1]),
    (RoundingMode.HALF_UP, [-1, 0, 0, 1, 2]),
    (RoundingMode.HALF_EVEN, [-2, 0, 0, 0, 2]),
    (RoundingMode.HALF_AWAY, [-2, -1, 0, 1, 2]),
    (RoundingMode.TFLITE, [-2, -1, 0, 1, 2]),  # TFLite's average pool: half away from zero
])
def test_round_div_table(rounding, expected):
    assert fp.round_div(np.array([-6, -2, -1, 2, 6]), 4, rounding).tolist() == expected


def _oracle(q: Fraction, rounding: RoundingMode) -> int:
    """Exact rational rounding, written independently of fixed_point."""
    fl = math.floor(q)
    frac = q - fl
    if rounding is RoundingMode.FLOOR:
        return fl
    if frac != Fraction(1, 2):
        return fl + (frac > Fraction(1, 2))
    if rounding is RoundingMode.HALF_UP:
        return fl + 1
    if rounding is RoundingMode.HALF_EVEN:
        return fl + (fl % 2)
    return fl + 1 if q > 0 else fl  # half away from zero (TFLITE in round_div)


@pytest.mark.parametrize("rounding", list(RoundingMode))
def test_round_div_and_round_shift_equal_exact_rationals(rounding):
    values = np.arange(-70, 71)
    for d in (1, 2, 3, 4, 5, 7, 8, 16):
        want = [_oracle(Fraction(int(n), d), rounding) for n in values]
        assert fp.round_div(values, d, rounding).tolist() == want, d
    if rounding is RoundingMode.TFLITE:
        return
    for s in range(0, 6):
        want = [_oracle(Fraction(int(n), 1 << s), rounding) for n in values]
        assert fp.round_shift(values, s, rounding).tolist() == want, s


# ----------------------------------------------------------------------------- gemmlowp

@pytest.mark.parametrize("a, b, expected", [
    (INT32_MIN, INT32_MIN, INT32_MAX),       # the one overflow: saturates
    (INT32_MAX, INT32_MAX, 2147483646),
    (INT32_MIN, INT32_MAX, -2147483647),
    (INT32_MIN, 1 << 30, -(1 << 30)),
    (1, 1 << 30, 1),     # +0.5 -> 1
    (-1, 1 << 30, 0),    # -0.5 -> 0: gemmlowp's nudge rounds negative ties toward zero
    (3, 1 << 30, 2),     # +1.5 -> 2
    (-3, 1 << 30, -1),   # -1.5 -> -1
    (5, 1 << 29, 1),     # 1.25 -> 1
    (0, INT32_MIN, 0),
])
def test_saturating_rounding_doubling_high_mul(a, b, expected):
    assert int(fp.saturating_rounding_doubling_high_mul(a, b)) == expected


@pytest.mark.parametrize("x, e, expected", [
    ([5, -5, 3, -3, 4, -4, 1, -1], 1, [3, -3, 2, -2, 2, -2, 1, -1]),   # ties away from zero
    ([6, -6, 2, -2, 7, -7], 2, [2, -2, 1, -1, 2, -2]),
    ([INT32_MIN, INT32_MAX], 31, [-1, 1]),
    ([9, -9], 0, [9, -9]),
])
def test_rounding_divide_by_pot(x, e, expected):
    assert fp.rounding_divide_by_pot(np.array(x), e).tolist() == expected


@pytest.mark.parametrize("acc, m, s, expected", [
    (3, 1 << 30, 31, 2),           # 3 * 0.5 = 1.5 -> 2
    (3, 1 << 30, 32, 1),           # SRDHM 1.5 -> 2, then 2 / 2 = 1
    (-3, 1 << 30, 32, -1),         # SRDHM -1.5 -> -1, then -0.5 -> -1 (away)
    (5, 1 << 30, 32, 2),           # double rounding: 2.5 -> 3, 1.5 -> 2 (single: 1.25 -> 1)
    (1 << 30, 1 << 30, 29, 0),     # left shift by 2 in int32: 2**32 wraps to 0
    (1 << 29, 1 << 30, 29, -(1 << 30)),  # 2**31 wraps to INT32_MIN; * 0.5
    (100, 1 << 30, 30, 100),       # scale 1.0: left shift 1 then * 0.5
])
def test_tflite_multiply(acc, m, s, expected):
    assert int(fp.tflite_multiply(acc, m, s)) == expected


# ----------------------------------------------------------------------------- overflow

def test_wrap_table():
    assert fp.wrap(np.array([127, 128, -128, -129, 255, 256, -256]), 8).tolist() == \
        [127, -128, -128, 127, -1, 0, 0]
    assert int(fp.wrap(1 << 47, 48)) == -(1 << 47)
    assert int(fp.wrap((1 << 47) - 1, 48)) == (1 << 47) - 1
    assert int(fp.wrap(-(1 << 40), 64)) == -(1 << 40)


@pytest.mark.parametrize("lo, hi, bits", [
    (0, 0, 1), (-1, 0, 1), (0, 1, 2), (-2, 1, 2), (-128, 127, 8), (-129, 0, 9), (0, 128, 9),
    (-(1 << 47), (1 << 47) - 1, 48), (-(1 << 47) - 1, 0, 49), (0, 1 << 47, 49),
])
def test_signed_bits_needed(lo, hi, bits):
    assert fp.signed_bits_needed(lo, hi) == bits


def _acc(point, tile_k=0, overflow=Overflow.SATURATE):
    return AccumulatorSpec(8, overflow, point, tile_k=tile_k)


@pytest.mark.parametrize("spec, value, stats", [
    # terms 100, 100, -100: running sums 100, 200, 100 (200 leaves an 8-bit accumulator)
    (_acc(SaturationPoint.PER_MAC), 27, OverflowStats(1, 1, 9)),        # 127 - 100
    (_acc(SaturationPoint.PER_TILE, 2), 27, OverflowStats(1, 1, 9)),   # tile sums 200, -100
    (_acc(SaturationPoint.PER_TILE, 3), 100, OverflowStats(0, 1, 8)),  # one tile: exact
    (_acc(SaturationPoint.FINAL), 100, OverflowStats(0, 1, 8)),
    (_acc(SaturationPoint.PER_MAC, overflow=Overflow.WRAP), 100, OverflowStats(0, 1, 8)),
])
def test_accumulate_per_mac_per_tile_final(spec, value, stats):
    acc, st = fp.accumulate(np.array([[100, 100, -100]]), np.array([0]), spec)
    assert acc.tolist() == [value]
    assert st == stats


def test_accumulate_bias_loaded_first():
    # a bias outside the accumulator is clipped (an event) before any product is added
    acc, st = fp.accumulate(np.array([[-100]]), np.array([200]), _acc(SaturationPoint.PER_MAC))
    assert acc.tolist() == [27] and st == OverflowStats(1, 1, 9)
    # final saturation sees only the exact sum 100: 8 bits would have done
    acc, st = fp.accumulate(np.array([[-100]]), np.array([200]), _acc(SaturationPoint.FINAL))
    assert acc.tolist() == [100] and st == OverflowStats(0, 1, 8)
    acc, st = fp.accumulate(np.zeros((2, 0), np.int64), np.array([5, 300]),
                            _acc(SaturationPoint.PER_MAC))
    assert acc.tolist() == [5, 127] and st == OverflowStats(1, 2, 10)


def test_accumulate_wrap_final():
    acc, st = fp.accumulate(np.array([[100, 100]]), np.array([0]),
                            _acc(SaturationPoint.FINAL, overflow=Overflow.WRAP))
    assert acc.tolist() == [-56] and st == OverflowStats(1, 1, 9)


# ----------------------------------------------------------------------------- requantize

def test_requantize_integer_and_float_modes():
    x = np.array([7, -7, 5, 6])
    half_even = fp.prepare_scale(0.5, RequantSpec(RequantMode.MULTIPLIER_SHIFT,
                                                  RoundingMode.HALF_EVEN, 32))
    assert (int(half_even.multiplier[0]), int(half_even.shift[0])) == (1 << 30, 31)
    assert fp.requantize(x, 0, half_even, 0, -128, 127).tolist() == [4, -4, 2, 3]
    as_float = fp.prepare_scale(0.5, RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN))
    assert fp.requantize(x, 0, as_float, 0, -128, 127).tolist() == [4, -4, 2, 3]
    # zero points on both sides, then the clamp
    assert fp.requantize(np.array([10, 300]), 2, half_even, 3, 0, 100).tolist() == [7, 100]
    # per channel along axis 1
    pc = fp.prepare_scale([0.5, 0.25], RequantSpec(RequantMode.MULTIPLIER_SHIFT,
                                                   RoundingMode.FLOOR, 32))
    assert fp.requantize(np.array([[9, 9]]), 0, pc, 0, -99, 99, axis=1).tolist() == [[4, 2]]


def test_quantize_float_ties_to_even_and_saturates():
    got = fp.quantize_float(np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0]), 1.0, 0, -128, 127)
    assert got.tolist() == [0, 2, 2, 0, -2, 127]
    assert fp.dequantize(np.array([3, 1]), np.float32(0.5), 1).tolist() == [1.0, 0.0]
