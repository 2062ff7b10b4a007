"""256-entry tables that reproduce TFLite's int8 activation kernels, one input value at a time.

Each of these kernels maps one int8 value to one int8 value, so evaluating the kernel's own
arithmetic once per input value gives a table that is exact by construction. The arithmetic is
re-derived here from TFLite's sources (named in each function), never called:

* LOGISTIC, TANH, GELU: LiteRT's reference and optimised kernels look up a table built in float32
  (``LUTPopulate`` in kernels/internal/common.h): dequantize, the float function, multiply by the
  inverse output scale, ``roundf``, add the zero point, clamp.
* HARD_SWISH: reference_ops::HardSwish, 16-bit fixed point throughout.
* LEAKY_RELU, RELU, RELU6, RELU_N1_TO_1: MultiplyByQuantizedMultiplier of ``x - zp``.
"""

from __future__ import annotations

import math

import numpy as np

from simulator.numerics import fixed_point as fp

I16_MIN, I16_MAX = -(1 << 15), (1 << 15) - 1
F32 = np.float32


def _round_half_away(v: float) -> int:
    """C's ``round``/``roundf`` of an already-rounded float: ties away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def int8_values(qmin: int = -128, qmax: int = 127) -> np.ndarray:
    return np.arange(qmin, qmax + 1, dtype=np.int64)


# ----------------------------------------------------------------------------- float-built

def _expf(x: F32) -> F32:
    # glibc's expf is correctly rounded but for rare cases within 0.002 ulp of a tie; the float64
    # exp rounded once to float32 is the correctly rounded value
    with np.errstate(over="ignore"):  # expf overflows to inf, and so must this
        return F32(np.exp(np.float64(x)))


def _tanhf(x: F32) -> F32:
    return F32(np.tanh(np.float64(x)))


def sigmoid_f32(x: F32) -> F32:
    """``1.0f / (1.0f + std::exp(-value))`` in float32, as the LOGISTIC table is built."""
    return F32(F32(1.0) / F32(F32(1.0) + _expf(F32(-x))))


def lut_populate(func, in_scale: float, in_zp: int, out_scale: float, out_zp: int,
                 qmin: int = -128, qmax: int = 127) -> list[int]:
    """LUTPopulateInt8: float32 dequantize, ``func``, ``roundf(y * (1 / out_scale))``, + zp."""
    inverse = F32(F32(1.0) / F32(out_scale))
    table = []
    for v in range(qmin, qmax + 1):
        deq = F32(F32(in_scale) * F32(v - in_zp))
        rescaled = _round_half_away(float(F32(func(deq) * inverse)))
        q = int(F32(F32(rescaled) + F32(out_zp)))
        table.append(min(max(q, qmin), qmax))
    return table


def gelu_f32(x: F32) -> F32:
    """GeluTransform: ``0.5f * x * erfc(x * -M_SQRT1_2)`` in float32 (reference/gelu.h)."""
    erfc = F32(math.erfc(float(F32(x * F32(-math.sqrt(0.5))))))
    return F32(F32(F32(0.5) * x) * erfc)


SQRT_2_OVER_PI = F32(2 / math.sqrt(math.pi) * math.sqrt(0.5))


def gelu_tanh_f32(x: F32) -> F32:
    """GeluTransformApproximate: ``0.5f x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    cube = F32(F32(F32(F32(0.044715) * x) * x) * x)
    inner = F32(SQRT_2_OVER_PI * F32(x + cube))
    return F32(F32(F32(0.5) * x) * F32(F32(1.0) + _tanhf(inner)))


def gelu_table(in_scale, in_zp, out_scale, out_zp, approximate: bool) -> list[int]:
    return lut_populate(gelu_tanh_f32 if approximate else gelu_f32, in_scale, in_zp, out_scale,
                        out_zp)


def logistic_table(in_scale, in_zp, out_scale, out_zp) -> list[int]:
    return lut_populate(sigmoid_f32, in_scale, in_zp, out_scale, out_zp)


def tanh_table(in_scale, in_zp, out_scale, out_zp) -> list[int]:
    return lut_populate(_tanhf, in_scale, in_zp, out_scale, out_zp)


# ----------------------------------------------------------------------------- fixed point

def _multiply(x: int, scale: float) -> int:
    """MultiplyByQuantizedMultiplier(x, QuantizeMultiplier(scale)) for one value, scale > 0."""
    m, s = fp.quantize_multiplier(scale, 32)
    return int(fp.tflite_multiply(np.int64(x), m[0], s[0]))


def requantize_table(in_scale_ratio: float, in_zp: int, out_zp: int, lo: int, hi: int,
                     qmin: int = -128, qmax: int = 127) -> list[int]:
    """ReluX / QUANTIZE of one int8: ``clamp(M(x - zp_in) + zp_out, lo, hi)``."""
    return [min(max(_multiply(v - in_zp, in_scale_ratio) + out_zp, lo), hi)
            for v in range(qmin, qmax + 1)]


def leaky_relu_table(in_scale, in_zp, out_scale, out_zp, alpha) -> list[int]:
    """QuantizeLeakyRelu: identity multiplier for x >= zp, alpha multiplier (sign kept apart,
    as the kernel does) below. Both multipliers are computed in float32, as LeakyReluPrepare."""
    identity = float(F32(in_scale) / F32(out_scale))
    alpha_m = float(F32(F32(in_scale) * F32(alpha)) / F32(out_scale))
    out = []
    for v in range(-128, 128):
        d = v - in_zp
        if d >= 0:
            y = _multiply(d, identity) if identity > 0 else 0
        else:
            y = _multiply(d, abs(alpha_m)) if alpha_m != 0 else 0
            y = -y if alpha_m < 0 else y
        out.append(min(max(y + out_zp, -128), 127))
    return out


def _i16(v: int) -> int:
    """A C++ int -> int16_t conversion (two's complement wrap)."""
    return ((v + (1 << 15)) & 0xFFFF) - (1 << 15)


def _srdhm16(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul on int16."""
    if a == b == I16_MIN:
        return I16_MAX
    ab = a * b
    nudge = (1 << 14) if ab >= 0 else 1 - (1 << 14)
    return _i16(int((ab + nudge) / (1 << 15)))  # C division: toward zero


def _sdhm16(a: int, b: int) -> int:
    """TFLite's SaturatingDoublingHighMul on int16: like SRDHM, rounding toward zero."""
    if a == b == I16_MIN:
        return I16_MAX
    return _i16(int((a * b) / (1 << 15)))


def _rdbpot(x: int, e: int) -> int:
    """gemmlowp RoundingDivideByPOT: ties away from zero."""
    mask = (1 << e) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if (x & mask) > threshold else 0)


def _sat_left_shift16(v: int, amount: int) -> int:
    return min(max(v * (1 << amount), I16_MIN), I16_MAX)


def _multiplier16(scale: F32) -> tuple[int, int]:
    """QuantizeMultiplier of a float32 scale, then DownScaleInt32ToInt16Multiplier; returns
    (int16 multiplier, TFLite exponent)."""
    m, s = fp.quantize_multiplier(float(scale), 32)
    m32, exponent = int(m[0]), 31 - int(s[0])
    if m32 >= (1 << 31) - 1 - (1 << 15):
        return I16_MAX, exponent
    return (m32 + (1 << 15)) >> 16, exponent


def hard_swish_table(in_scale, in_zp, out_scale, out_zp) -> list[int]:
    """reference_ops::HardSwish for int8, with HardSwishPrepare's float32 multipliers."""
    hires_scale = F32(F32(1.0 / 128.0) * F32(in_scale))
    out_m, out_exp = _multiplier16(F32(hires_scale / F32(out_scale)))
    relu_m, relu_exp = _multiplier16(F32(hires_scale / F32(3.0 / 32768.0)))
    if out_exp > 0:
        raise ValueError("HARD_SWISH output multiplier above 1 (TFLite's Prepare rejects it)")
    out = []
    for v in range(-128, 128):
        hires = _i16((v - in_zp) * (1 << 7))
        preshift_out = _srdhm16(hires, out_m)
        reluish = hires
        if relu_exp > 0:
            reluish = _sat_left_shift16(reluish, relu_exp - 1)
        reluish = _srdhm16(reluish, relu_m)
        if relu_exp > 0:
            reluish = _sat_left_shift16(reluish, 1)
        if relu_exp < 0:
            reluish = _rdbpot(reluish, -relu_exp)
        reluish = (reluish + (1 << 15)) >> 1
        y = _rdbpot(_sdhm16(reluish, preshift_out), -out_exp) + out_zp
        out.append(min(max(y, -128), 127))
    return out
