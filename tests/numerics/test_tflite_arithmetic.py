"""TFLite's arithmetic choices (the tflite-reference profile): the numba kernels equal the
reference, and the reference equals TFLite's kernels written out step by step here.

* ADD ``per_operand``: each operand << 20 rescaled alone, the sum rescaled (add.cc / add.h);
* FULLY_CONNECTED ``float64_half_away``: round(acc * double scale), ties away from zero;
* MEAN ``tflite_mean``: QuantizeMultiplier(in/out) << floor(log2 n) // n, one rescale;
* AVERAGE_POOL_2D ``raw``: the mean of the stored integers (zero point in), ties away;
* 16x8 ``int16_requantize`` ``tflite_reduced_multiplier``: MultiplyByQuantizedMultiplier of an
  int64 accumulator (a 16-bit multiplier, one rounding half up, an int32 result), on sums a
  64-bit ``int16_accumulator`` holds; ADD of int16 with ``int16_add_left_shift`` 15;
* MUL ``mul_scale`` float32: the scale formed in float32, as mul.cc's Prepare.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from numerics.strategies import edgy_integers, int_types, of_type
from simulator.contract import (AccumulatorSpec, ArithmeticSpec, IntType, MulScale, Overflow,
                                RequantMode, RequantSpec, RoundingMode, SaturationPoint)
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


# ----------------------------------------------------------------------------- 16x8

ACC64 = AccumulatorSpec(64, Overflow.WRAP, SaturationPoint.FINAL)


def _mbqm64(x: int, d: float) -> int:
    """MultiplyByQuantizedMultiplier(int64_t x, ...) (common.cc), written out: the Q0.31
    multiplier reduced to 16 bits, one rounding, int64 arithmetic, the result cast to int32."""
    m, e = _quantize_multiplier(d)
    reduced = (m + (1 << 15)) >> 16 if m < 0x7FFF0000 else 0x7FFF
    total_shift = 15 - e
    v = x * reduced + (1 << (total_shift - 1))
    v = ((v + (1 << 63)) % (1 << 64)) - (1 << 63)  # int64 wraps
    r = v >> total_shift
    return ((r + (1 << 31)) % (1 << 32)) - (1 << 31)  # int32_t result


@FAST
@given(st.lists(st.integers(-(1 << 47), (1 << 47) - 1), min_size=1, max_size=12),
       st.floats(1e-9, 64.0), st.integers(-32768, 32767))
def test_tflite_int64_requantize_is_tflites(acc, d, lo):
    """fixed_point.prepare_tflite_int64 + requantize against the C function written out, on
    the 2**47 range TFLite asserts (the int32 cast included: large sums wrap there)."""
    x = np.asarray(acc, np.int64)
    got = fp.requantize(x, 0, fp.prepare_tflite_int64(d), 0, lo, 32767)
    want = [min(max(_mbqm64(v, d), lo), 32767) for v in acc]
    assert got.tolist() == want


def test_tflite_int64_requantize_rounds_half_up_with_a_16_bit_multiplier():
    """Scale 1/2: ties go up (+inf), not away from zero; scale 0.7: the multiplier keeps 15
    bits (22938 / 2**15), not 31."""
    half = fp.prepare_tflite_int64(0.5)
    assert (int(half.multiplier[0]), int(half.shift[0])) == (1 << 14, 15)
    got = fp.requantize(np.array([3, -3, 5, -5]), 0, half, 0, -100, 100)
    assert got.tolist() == [2, -1, 3, -2]
    assert int(fp.prepare_tflite_int64(0.7).multiplier[0]) == 22938
    big = fp.requantize(np.array([1 << 40]), 0, fp.prepare_tflite_int64(0.999), 0, -(1 << 40),
                        1 << 40)
    assert big.tolist() == [_mbqm64(1 << 40, 0.999)] and -(1 << 31) <= big[0] < (1 << 31)


@FAST
@given(st.lists(st.integers(-(1 << 47), (1 << 47) - 1), min_size=1, max_size=24),
       st.lists(st.floats(1e-7, 2.0), min_size=1, max_size=4), st.integers(-32768, 0),
       st.booleans())
def test_tflite_int64_requantize_kernel_equals_reference(acc, scale_list, lo, per_channel):
    x = np.resize(np.asarray(acc, np.int64), (2, len(scale_list), 3))
    s = scale_list if per_channel else scale_list[:1]
    prepared = fp.prepare_tflite_int64(s)
    _same(kernels.requantize(x, 0, prepared, 1, 0, lo, 32767),
          reference.requantize(x, 0, prepared, 1, 0, lo, 32767))


@FAST
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 600), st.integers(1, 3),
       st.integers(0, 2**32 - 1))
def test_int16_conv_and_fc_with_a_64_bit_accumulator(kh, oc, c, n, seed):
    """int16 x int8 sums in a 64-bit wrapping accumulator: the kernels' fast paths equal the
    reference, extremes included (sums past 2**31 where the reduction is long)."""
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-32768, 32767, 0, 1, -1, 12345]), (n, c, 5, 4))
    x[0] = 32767  # with channel 0's weights all 127: c * kh * kh * 4161409 may pass 2**31
    w = rng.integers(-127, 128, (oc, c, kh, kh))
    w[0] = 127
    bias = rng.integers(-(1 << 40), 1 << 40, oc)
    args = (x, w, bias, 0, 0, (1, 1), (1, 0, 0, 1), (1, 1), 1, ACC64)
    got, want = kernels.conv2d(*args), reference.conv2d(*args)
    _same(got[0], want[0])
    assert got[1] == want[1]
    xf = x.reshape(n, -1)
    wf = np.resize(w.ravel(), (oc, xf.shape[1]))
    got, want = (be.fully_connected(xf, wf, bias, 0, 0, ACC64) for be in (kernels, reference))
    _same(got[0], want[0])
    assert got[1] == want[1]


@FAST
@given(st.integers(-32768, 32767), st.integers(-32768, 32767), scales, scales, scales,
       st.sampled_from([15, 20]))
def test_int16_add_per_operand_is_tflites_add(a, b, sa, sb, sy, shift):
    """AddElementwise for int16 (general scales): each operand << 15 (``int16_add_left_shift``)
    rescaled alone; the kernels equal the reference."""
    twice = 2 * max(sa, sb)
    raw = _mbqm(a << shift, sa / twice) + _mbqm(b << shift, sb / twice) if shift == 15 else None
    prepared = fp.prepare_add_per_operand(sa, sb, sy, TFLITE, shift)
    args = (np.full((3,), a, np.int64), 0, np.full((3,), b, np.int64), 0, prepared,
            RoundingMode.TFLITE, 0, -32768, 32767, shift)
    got = reference.add_per_operand(*args)
    _same(kernels.add_per_operand(*args), got)
    if raw is not None:
        want = min(max(_mbqm(raw, twice / ((1 << 15) * sy)), -32768), 32767)
        assert got.tolist() == [want] * 3


def test_mul_scale_float32_is_mul_prepare():
    """mul.cc forms in1_scale * in2_scale / out_scale in float32: with these scales its
    QuantizeMultiplier lands 175 units away from the double quotient's, and the product
    -11170 * 15 rounds to -78 (float32) where the double quotient gives -79."""
    from simulator.execute import run_node
    from simulator.ir.builder import ProgramBuilder
    b = ProgramBuilder("mul")
    x = b.input("a", (1, 2), "s16", scale=0.0005651481333188713)
    g = b.input("b", (1, 2), "s16", scale=0.0008817557827569544)
    b.output(b.node("mul", [x, g], "y", dtype="s16", scale=0.0010636205552145839))
    program = b.build()
    ins = [np.array([[-11170, 11170]]), np.array([[15, 15]])]
    base = ArithmeticSpec(AccumulatorSpec(32, Overflow.WRAP, SaturationPoint.FINAL), TFLITE)
    f32 = dataclasses.replace(base, mul_scale=MulScale.FLOAT32)
    (node,) = program.nodes
    assert run_node(node, program, ins, f32)[0].tolist() == [[-78, 78]]
    assert run_node(node, program, ins, base)[0].tolist() == [[-79, 79]]
    assert _mbqm(-11170 * 15, float(np.float32(np.float32(0.0005651481333188713)
                                              * np.float32(0.0008817557827569544))
                                   / np.float32(0.0010636205552145839))) == -78
