"""The integer arithmetic contract, written once.

Every number the simulator produces passes through these functions or through a numba kernel
proven equal to them (tests/numerics). archnet's integer-emulation forward calls the same
functions for its multipliers and rounding, so one definition serves the chip, the reference and
the training side. NumPy int64 throughout; no numba here, on purpose: this is the spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.contract import (INTERPOLATION_FRACTION_BITS, AccumulatorSpec, Overflow,
                                RequantMode, RequantSpec, RoundingMode, SaturationPoint)
from simulator.errors import SimulatorError

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
MAX_SHIFT = 62


# ----------------------------------------------------------------------------- multipliers

def quantize_multiplier(scale, multiplier_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Real scale(s) -> integer multiplier M and right shift S with ``scale ~= M * 2**-S``.

    M is normalised into ``[2**(b-2), 2**(b-1))`` for ``b = multiplier_bits`` (a positive value
    of a signed b-bit register), rounded half away from zero as TFLite's ``QuantizeMultiplier``
    does, so that for b = 32 the pair is TFLite's (M, 31 - shift). Scales too small for
    ``S <= 62`` lose multiplier bits rather than fail; a scale of 0 gives M = 0.
    """
    scales = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    mults = np.zeros(scales.shape, dtype=np.int64)
    shifts = np.zeros(scales.shape, dtype=np.int64)
    top = multiplier_bits - 1
    for i, s in enumerate(scales.flat):
        if not math.isfinite(s) or s < 0:
            raise SimulatorError(f"requantize scale {s!r} must be finite and >= 0")
        if s == 0.0:
            continue
        frac, exp = math.frexp(s)  # s = frac * 2**exp, frac in [0.5, 1)
        m = math.floor(frac * (1 << top) + 0.5)
        if m == 1 << top:
            m //= 2
            exp += 1
        shift = top - exp
        if shift < 0:
            raise SimulatorError(
                f"requantize scale {s!r} too large for a {multiplier_bits}-bit multiplier "
                f"with a right shift (max {(1 << top) - 1})")
        if shift > MAX_SHIFT:
            m = math.floor(s * 2.0 ** MAX_SHIFT + 0.5)
            shift = MAX_SHIFT
        mults.flat[i] = m
        shifts.flat[i] = shift
    return mults, shifts


def quantize_multiplier_pair(scale_a: float, scale_b: float,
                             multiplier_bits: int) -> tuple[int, int, int]:
    """Two real scales -> (Ma, Mb, S) sharing one shift, for integer add: the larger is normalised."""
    big = max(scale_a, scale_b)
    if big <= 0:
        return 0, 0, 0
    _, shift = quantize_multiplier(big, multiplier_bits)
    s = int(shift[0])
    ma = math.floor(scale_a * 2.0 ** s + 0.5)
    mb = math.floor(scale_b * 2.0 ** s + 0.5)
    limit = (1 << (multiplier_bits - 1)) - 1
    while max(ma, mb) > limit:  # rounding the larger up may carry into the sign bit
        s -= 1
        ma = math.floor(scale_a * 2.0 ** s + 0.5)
        mb = math.floor(scale_b * 2.0 ** s + 0.5)
    return ma, mb, s



def prepare_add(ratio_a: float, ratio_b: float, spec: RequantSpec):
    """The two operand ratios of an integer add made ready for one chip: (Ma, Mb, S) sharing a
    shift, or float32 ratios with S = 0 in FLOAT_SCALE mode."""
    if spec.mode is RequantMode.FLOAT_SCALE:
        return np.float32(ratio_a), np.float32(ratio_b), 0
    return quantize_multiplier_pair(ratio_a, ratio_b, spec.multiplier_bits)


ADD_LEFT_SHIFT = 20  # TFLite ADD's headroom: 8-bit operands are shifted left this far first


def prepare_add_per_operand(scale_a: float, scale_b: float, scale_y: float,
                            spec: RequantSpec, left_shift: int = ADD_LEFT_SHIFT
                            ) -> tuple[int, int, int, int, int, int]:
    """TFLite ADD's three (M, S) pairs: each operand's scale over twice the larger operand
    scale (both below 1), then twice that scale over ``2**left_shift`` times the output's, each
    quantized like any requantize scale (``Prepare`` in TFLite's add.cc, in double; the left
    shift is 20 for 8-bit operands, 15 for 16-bit ones)."""
    twice_max = 2.0 * max(scale_a, scale_b)
    ratios = (scale_a / twice_max, scale_b / twice_max,
              twice_max / ((1 << left_shift) * scale_y))
    out: list[int] = []
    for r in ratios:
        m, s = quantize_multiplier(r, spec.multiplier_bits)
        out += [int(m[0]), int(s[0])]
    return tuple(out)


def add_per_operand(da, db, prepared: tuple[int, int, int, int, int, int],
                    rounding: RoundingMode, left_shift: int = ADD_LEFT_SHIFT) -> np.ndarray:
    """TFLite ADD before the output zero point: ``(da << 20)`` and ``(db << 20)`` (``left_shift``
    bits) rescaled and rounded each, summed, the sum rescaled and rounded again (``rounding`` at
    every step)."""
    ma, sa, mb, sb, my, sy = prepared
    mode = RequantMode.MULTIPLIER_SHIFT
    a = scale_values(np.asarray(da, np.int64) << left_shift, ma, sa, mode, rounding)
    b = scale_values(np.asarray(db, np.int64) << left_shift, mb, sb, mode, rounding)
    return scale_values(a + b, my, sy, mode, rounding)


def prepare_tflite_mean(scale_ratio: float, count: int, spec: RequantSpec) -> PreparedScale:
    """TFLite's int8 MEAN multiplier: QuantizeMultiplier(in_scale / out_scale) = (M, e), then
    M shifted left k = min(floor(log2 count), 32, 31 + e) bits and divided by the count
    (truncated), e lowered by k (QuantizedMeanOrSum in reference/reduce.h). The pair is kept
    as formed: it may be below 2**30, where normalising it would round differently."""
    m, s = quantize_multiplier(scale_ratio, spec.multiplier_bits)
    mult, shift = int(m[0]), int(s[0])
    exponent = spec.multiplier_bits - 1 - shift
    k = min(count.bit_length() - 1, 32, spec.multiplier_bits - 1 + exponent)
    mult = (mult << k) // count
    return PreparedScale(RequantMode.MULTIPLIER_SHIFT, spec.rounding,
                         np.asarray([mult], np.int64), np.asarray([shift + k], np.int64))


def prepare_mean(scale_ratio: float, count: int, spec: RequantSpec) -> PreparedScale:
    """A mean's one rescale of its exact sum: ``in_scale / (out_scale * count)`` prepared as
    any requantize scale, so the division by the count rounds once, with the chip's rounding."""
    return prepare_scale(scale_ratio / count, spec)


def lookup_interpolated(x, table) -> np.ndarray:
    """TOSA's TABLE for a signed 16-bit ``x``: the input, offset to 0..65535, picks an entry by
    its high 9 bits and interpolates towards the next by its low 7; the result is the entry
    times 2**7 plus slope x fraction (exact, up to 23 bits signed)."""
    u = np.asarray(x, dtype=np.int64) + np.int64(1 << 15)
    t = np.asarray(table, dtype=np.int64)
    index = u >> INTERPOLATION_FRACTION_BITS
    fraction = u & ((1 << INTERPOLATION_FRACTION_BITS) - 1)
    base = t[index]
    return (base << INTERPOLATION_FRACTION_BITS) + (t[index + 1] - base) * fraction


# ----------------------------------------------------------------------------- rounding

def _half(shift: np.ndarray) -> np.ndarray:
    return np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)


def round_shift(values, shift, rounding: RoundingMode) -> np.ndarray:
    """``values / 2**shift`` rounded as ``rounding`` says (shift >= 0, broadcastable).

    ``tflite`` is not a single-rounding mode; asking for it here is an error.
    """
    v = np.asarray(values, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    half = _half(s)
    if rounding is RoundingMode.FLOOR:
        return v >> s
    if rounding is RoundingMode.HALF_UP:
        return (v + half) >> s
    if rounding is RoundingMode.HALF_AWAY:
        magnitude = (np.abs(v) + half) >> s
        return np.where(v < 0, -magnitude, magnitude)
    if rounding is RoundingMode.HALF_EVEN:
        q = v >> s
        r = v - (q << s)
        return q + ((r > half) | ((r == half) & (half > 0) & ((q & 1) == 1)))
    raise SimulatorError(f"round_shift has no single-rounding form of {rounding.value!r}")


def round_div(numerator, denominator, rounding: RoundingMode) -> np.ndarray:
    """Exact rational ``n / d`` (d > 0) rounded; ``tflite`` divides half away from zero,
    as TFLite's integer average pool does."""
    n = np.asarray(numerator, dtype=np.int64)
    d = np.asarray(denominator, dtype=np.int64)
    q = n // d
    r = n - q * d  # 0 <= r < d
    if rounding is RoundingMode.FLOOR:
        return q
    if rounding is RoundingMode.HALF_UP:
        return q + (2 * r >= d)
    if rounding is RoundingMode.HALF_EVEN:
        return q + ((2 * r > d) | ((2 * r == d) & ((q & 1) == 1)))
    if rounding in (RoundingMode.HALF_AWAY, RoundingMode.TFLITE):
        magnitude = (np.abs(n) * 2 + d) // (2 * d)
        return np.where(n < 0, -magnitude, magnitude)
    raise SimulatorError(f"unknown rounding {rounding!r}")


def _trunc_div_pot(x: np.ndarray, bits: int) -> np.ndarray:
    """``x / 2**bits`` truncated toward zero (a shift of |x|: |x| < 2**63 here)."""
    q = np.abs(x) >> bits
    return np.where(x < 0, -q, q)


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp SRDHM on int32 values held in int64: ``a * b / 2**31`` rounded with gemmlowp's nudge
    (positive ties up, negative ties toward zero), INT32_MIN * INT32_MIN saturating."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    result = _trunc_div_pot(ab + nudge, 31)
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, result)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: arithmetic shift, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = np.left_shift(np.int64(1), e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def tflite_multiply(acc, multiplier, shift) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier with our (M, S): TFLite's exponent is ``31 - S``.

    A negative S (scale >= 1) left-shifts first; TFLite does that in int32, so it wraps here too.
    """
    s = np.asarray(shift, dtype=np.int64)
    exponent = 31 - s
    left = np.maximum(exponent, 0)
    right = np.maximum(-exponent, 0)
    x = wrap(np.asarray(acc, dtype=np.int64) << left, 32)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, multiplier), right)


# ----------------------------------------------------------------------------- overflow

def wrap(values, bits: int) -> np.ndarray:
    """Two's-complement wrap of int64 values to ``bits``."""
    v = np.asarray(values, dtype=np.int64)
    if bits >= 64:
        return v
    offset = np.int64(1) << np.int64(bits - 1)
    mask = (np.int64(1) << np.int64(bits)) - 1
    return ((v + offset) & mask) - offset


def signed_bits_needed(lo: int, hi: int) -> int:
    """Narrowest two's-complement width holding every value in ``[lo, hi]``."""
    widths = [1]
    for v in (int(lo), int(hi)):
        widths.append((v.bit_length() if v >= 0 else (-v - 1).bit_length()) + 1)
    return max(widths)


@dataclass(frozen=True)
class OverflowStats:
    """What the accumulator saw in one MAC op.

    ``events``: outputs whose accumulation left the accumulator range at a point where the
    policy applies (so their value differs from the exact sum). ``required_bits``: the
    narrowest accumulator with which this policy would have given every output exactly, for
    the inputs seen.
    """

    events: int
    outputs: int
    required_bits: int

    def merge(self, other: "OverflowStats") -> "OverflowStats":
        return OverflowStats(self.events + other.events, self.outputs + other.outputs,
                             max(self.required_bits, other.required_bits))


def accumulate(terms, bias, spec: AccumulatorSpec) -> tuple[np.ndarray, OverflowStats]:
    """The accumulator: ``acc = bias + sum_k terms[:, k]`` under ``spec``.

    ``terms`` is [P, K] int64, one row per output, columns in the declared reduction order;
    ``bias`` is [P]. The bias is loaded first, then the products are added. This is the
    reference: one output lane per row, the reduction a plain loop over K.
    """
    terms = np.asarray(terms, dtype=np.int64)
    bias = np.asarray(bias, dtype=np.int64)
    lo, hi = spec.lo, spec.hi
    p, k = terms.shape
    if spec.order_independent:
        exact = bias + terms.sum(axis=1)
        outside = (exact < lo) | (exact > hi)
        acc = wrap(exact, spec.bits) if spec.overflow is Overflow.WRAP else np.clip(exact, lo, hi)
        bounds = (exact.min(initial=0), exact.max(initial=0))
        return acc, OverflowStats(int(outside.sum()), p, signed_bits_needed(*bounds))
    step = 1 if spec.saturation_point is SaturationPoint.PER_MAC else spec.tile_k
    running = bias.copy()
    clipped = (bias < lo) | (bias > hi)
    acc = np.clip(bias, lo, hi)
    seen_lo, seen_hi = running.min(initial=0), running.max(initial=0)
    for start in range(0, k, step):
        partial = terms[:, start:start + step].sum(axis=1)
        running = running + partial
        seen_lo, seen_hi = min(seen_lo, running.min(initial=0)), max(seen_hi, running.max(initial=0))
        unclipped = acc + partial
        clipped |= (unclipped < lo) | (unclipped > hi)
        acc = np.clip(unclipped, lo, hi)
    return acc, OverflowStats(int(clipped.sum()), p, signed_bits_needed(seen_lo, seen_hi))


# ----------------------------------------------------------------------------- requantize

@dataclass(frozen=True)
class PreparedScale:
    """A real scale made ready for one chip: integers (M, S) or a float32, per channel or not."""

    mode: RequantMode
    rounding: RoundingMode
    multiplier: np.ndarray   # int64 M, or float32 scale in FLOAT_SCALE mode
    shift: np.ndarray        # int64 S (zeros in FLOAT_SCALE mode)
    # the scaled value is truncated to this many bits (two's complement) before the output
    # zero point and clamp: 32 where a C kernel casts its int64 result to int32_t
    result_bits: int = 64


def prepare_scale(scale, spec: RequantSpec) -> PreparedScale:
    """Prepare once: the only place a real requantization scale becomes chip integers."""
    if spec.mode is RequantMode.FLOAT_SCALE:
        f32 = np.atleast_1d(np.asarray(scale, dtype=np.float32))
        return PreparedScale(spec.mode, spec.rounding, f32, np.zeros(f32.shape, np.int64))
    m, s = quantize_multiplier(scale, spec.multiplier_bits)
    return PreparedScale(spec.mode, spec.rounding, m, s)


REDUCED_MULTIPLIER_CAP = 0x7FFF0000  # from here on TFLite's 16-bit multiplier is 0x7FFF


def prepare_tflite_int64(scale) -> PreparedScale:
    """TFLite's ``MultiplyByQuantizedMultiplier(int64_t x, M, shift)`` (kernels/internal/
    common.cc, the 16x8 conv and depthwise kernels): QuantizeMultiplier's Q0.31 M cut to a
    16-bit ``(M + 2**15) >> 16`` (0x7FFF for M >= 0x7FFF0000), then ``(x * M16 + 2**(S-17))
    >> (S - 16)``: one rounding, half up, the result cast to int32 (the same in TFLite's
    single- and double-rounding builds)."""
    m, s = quantize_multiplier(scale, 32)
    m16 = np.where(m >= REDUCED_MULTIPLIER_CAP, 0x7FFF, (m + (1 << 15)) >> 16)
    shift = np.where(m == 0, 15, s - 16)  # a zero scale: TFLite's shift 0, total shift 15
    if shift.size and shift.min() < 1:
        raise SimulatorError(f"requantize scale {float(np.max(scale))!r} too large for TFLite's "
                             f"64-bit requantize (it needs a right shift of at least 17)")
    return PreparedScale(RequantMode.MULTIPLIER_SHIFT, RoundingMode.HALF_UP, m16.astype(np.int64),
                         shift.astype(np.int64), result_bits=32)


def scale_values(values, multiplier, shift, mode: RequantMode, rounding: RoundingMode):
    """``values * scale`` rounded to an integer, before the output zero point and clamp."""
    v = np.asarray(values, dtype=np.int64)
    if mode is RequantMode.FLOAT_SCALE:
        product = v.astype(np.float32) * np.asarray(multiplier, dtype=np.float32)
        return np.rint(product).astype(np.int64)  # rint: ties to even, as ONNX prescribes
    if rounding is RoundingMode.TFLITE:
        return tflite_multiply(v, multiplier, shift)
    return round_shift(v * np.asarray(multiplier, dtype=np.int64), shift, rounding)


def requantize(values, in_zero_point, prepared: PreparedScale, out_zero_point: int,
               qmin: int, qmax: int, axis: int | None = None) -> np.ndarray:
    """``y = clamp(round((x - zx) * scale) + zy, qmin, qmax)``, per channel along ``axis``."""
    v = np.asarray(values, dtype=np.int64) - np.int64(in_zero_point)
    m, s = prepared.multiplier, prepared.shift
    if m.size > 1:
        shape = [1] * v.ndim
        shape[axis] = m.size
        m, s = m.reshape(shape), s.reshape(shape)
    else:
        m, s = m.reshape(()), s.reshape(())
    scaled = scale_values(v, m, s, prepared.mode, prepared.rounding)
    if prepared.result_bits < 64:
        scaled = wrap(scaled, prepared.result_bits)
    return np.clip(scaled + np.int64(out_zero_point), qmin, qmax)


def round_half_away_float(values) -> np.ndarray:
    """C's ``round`` of float64 values: ties away from zero (NumPy's ``rint`` ties to even)."""
    v = np.asarray(values, dtype=np.float64)
    return np.where(v < 0, -np.floor(-v + 0.5), np.floor(v + 0.5)).astype(np.int64)


def requantize_float64(values, in_zero_point, scales, out_zero_point: int, qmin: int,
                       qmax: int, axis: int | None = None) -> np.ndarray:
    """``y = clamp(round((x - zx) * scale) + zy)`` with a float64 scale, ties away from zero:
    TFLite's reference FULLY_CONNECTED (``round(static_cast<double>(acc) * scale)``)."""
    v = np.asarray(values, dtype=np.int64) - np.int64(in_zero_point)
    s = np.atleast_1d(np.asarray(scales, dtype=np.float64))
    if s.size > 1:
        shape = [1] * v.ndim
        shape[axis] = s.size
        s = s.reshape(shape)
    else:
        s = s.reshape(())
    scaled = round_half_away_float(v.astype(np.float64) * s)
    return np.clip(scaled + np.int64(out_zero_point), qmin, qmax)


def quantize_float(x, scale: float, zero_point: int, qmin: int, qmax: int,
                   ties_away: bool = False) -> np.ndarray:
    """Host-side float -> int as ONNX QuantizeLinear: float32 divide, ties to even, saturate;
    ``ties_away``: ties away from zero, as TFLite's reference AffineQuantize (``roundf``)."""
    v = np.asarray(x, dtype=np.float32) / np.float32(scale)
    q = (round_half_away_float(v) if ties_away else np.rint(v)).astype(np.float64)
    return np.clip(q + zero_point, qmin, qmax).astype(np.int64)


def dequantize(x, scale, zero_point) -> np.ndarray:
    """Integer -> float32 as ONNX DequantizeLinear: ``(x - zp) * scale`` in float32."""
    diff = (np.asarray(x, dtype=np.int64) - np.asarray(zero_point, dtype=np.int64))
    return diff.astype(np.float32) * np.asarray(scale, dtype=np.float32)
