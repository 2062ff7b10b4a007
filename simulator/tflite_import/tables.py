"""256-entry tables that reproduce TFLite's int8 activation kernels, one input value at a time.

Each of these kernels maps one int8 value to one int8 value, so evaluating the kernel's own
arithmetic once per input value gives a table that is exact by construction. The arithmetic is
re-derived here from TFLite's sources (named in each function), never called:

* LOGISTIC, TANH, GELU: LiteRT's reference and optimised kernels look up a table built in float32
  (``LUTPopulate`` in kernels/internal/common.h): dequantize, the float function, multiply by the
  inverse output scale, ``roundf``, add the zero point, clamp.
* HARD_SWISH: reference_ops::HardSwish, 16-bit fixed point throughout.
* LEAKY_RELU, RELU, RELU6, RELU_N1_TO_1: MultiplyByQuantizedMultiplier of ``x - zp``.

The int16 LOGISTIC and TANH kernels also map one value to one value, so the same holds for their
65536 inputs: ``logistic16_table`` and ``tanh16_table`` evaluate reference_integer_ops::Logistic
/ Tanh (16-bit) on each, with the input multiplier of LogisticPrepare / TanhPrepare.
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


# ----------------------------------------------------------------------------- int16

# kernels/internal/common.h: sigmoid(i / 24) in 0.16 fixed point, shared by LOGISTIC and TANH
SIGMOID_TABLE_UINT16 = (32768, 33451, 34133, 34813, 35493, 36169, 36843, 37513, 38180, 38841, 39498,
    40149, 40794, 41432, 42064, 42688, 43304, 43912, 44511, 45102, 45683, 46255,
    46817, 47369, 47911, 48443, 48964, 49475, 49975, 50464, 50942, 51409, 51865,
    52311, 52745, 53169, 53581, 53983, 54374, 54755, 55125, 55485, 55834, 56174,
    56503, 56823, 57133, 57433, 57724, 58007, 58280, 58544, 58800, 59048, 59288,
    59519, 59743, 59959, 60168, 60370, 60565, 60753, 60935, 61110, 61279, 61441,
    61599, 61750, 61896, 62036, 62172, 62302, 62428, 62549, 62666, 62778, 62886,
    62990, 63090, 63186, 63279, 63368, 63454, 63536, 63615, 63691, 63765, 63835,
    63903, 63968, 64030, 64090, 64148, 64204, 64257, 64308, 64357, 64405, 64450,
    64494, 64536, 64576, 64614, 64652, 64687, 64721, 64754, 64786, 64816, 64845,
    64873, 64900, 64926, 64950, 64974, 64997, 65019, 65039, 65060, 65079, 65097,
    65115, 65132, 65149, 65164, 65179, 65194, 65208, 65221, 65234, 65246, 65258,
    65269, 65280, 65291, 65301, 65310, 65319, 65328, 65337, 65345, 65352, 65360,
    65367, 65374, 65381, 65387, 65393, 65399, 65404, 65410, 65415, 65420, 65425,
    65429, 65433, 65438, 65442, 65445, 65449, 65453, 65456, 65459, 65462, 65465,
    65468, 65471, 65474, 65476, 65479, 65481, 65483, 65485, 65488, 65489, 65491,
    65493, 65495, 65497, 65498, 65500, 65501, 65503, 65504, 65505, 65507, 65508,
    65509, 65510, 65511, 65512, 65513, 65514, 65515, 65516, 65517, 65517, 65518,
    65519, 65520, 65520, 65521, 65522, 65522, 65523, 65523, 65524, 65524, 65525,
    65525, 65526, 65526, 65526, 65527, 65527, 65528, 65528, 65528, 65529, 65529,
    65529, 65529, 65530, 65530, 65530, 65530, 65531, 65531, 65531, 65531, 65531,
    65532, 65532, 65532, 65532, 65532, 65532, 65533, 65533, 65533, 65533, 65533,
    65533, 65533, 65533, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534,
    65534, 65534, 65535)


def checked_log2(x: float) -> tuple[bool, int]:
    """quantization_util.cc CheckedLog2: float32 ``log(x) / log(2)`` rounded; a power of two
    when the fraction is below 1e-3. Returns (is_power_of_two, rounded log2)."""
    x_log2 = F32(F32(np.log(np.float64(F32(x)))) * F32(1.0 / np.log(np.float64(2.0))))
    rounded = F32(_round_half_away(float(x_log2)))
    return bool(abs(float(F32(x_log2 - rounded))) < float(F32(1e-3))), int(rounded)


def int16_activation_multiplier(in_scale: float, tanh: bool) -> tuple[int, int]:
    """LogisticPrepare / TanhPrepare for int16: (input_multiplier, input_left_shift). A power of
    two input scale with a left shift of 0 (TANH: 0 or 1) keeps multiplier 0 (the kernel then
    uses 3 << shift); any other scale gets ``in_scale * 4096 * 3`` doubled until it exceeds
    32767 / 2, truncated."""
    pot, log2 = checked_log2(in_scale)
    shift = 12 + log2                 # (15 - kInputIntegerBits 3) + log2(scale)
    if pot and shift in ((0, 1) if tanh else (0,)):
        return 0, shift
    multiplier, shift = float(F32(in_scale)) * 4096.0 * 3.0, 0
    while multiplier <= 32767.0 / 2.0 and shift <= 30:
        shift += 1
        multiplier *= 2.0
    return int(multiplier), shift


def _wrap(v: np.ndarray, bits: int) -> np.ndarray:
    return fp.wrap(v, bits)


def _int16_inputs(multiplier: int, shift: int) -> np.ndarray:
    """The kernel's rescaled input for every int16 value: ``(x * M + round) >> shift`` in int32."""
    if multiplier == 0:
        multiplier, shift = 3 << shift, 0
    rounding = (1 << (shift - 1)) if shift > 0 else 0
    x = np.arange(I16_MIN, I16_MAX + 1, dtype=np.int64)
    return _wrap(x * multiplier + rounding, 32) >> shift


def _sigmoid_interpolated(v: np.ndarray, frac_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' shared step: |v| as a table index with ``frac_bits`` fractional bits, the
    sigmoid table linearly interpolated there (unwrapped), and where the index is past the
    table (saturated)."""
    a = np.abs(v) & 0xFFFFFFFF
    sig = np.asarray(SIGMOID_TABLE_UINT16 + (0,), np.int64)
    uh = a >> frac_bits
    idx = np.minimum(uh, 254)
    ua, ub = sig[idx], sig[idx + 1]
    return uh >= 255, (ua << frac_bits) + (a & ((1 << frac_bits) - 1)) * (ub - ua)


def logistic16_table(in_scale: float) -> list[int]:
    """reference_integer_ops::Logistic (int16): the table interpolated at 9 fractional bits,
    mirrored for negative inputs, 15 fractional bits out; uint32 arithmetic as the kernel's."""
    v = _int16_inputs(*int16_activation_multiplier(in_scale, tanh=False))
    saturated, r = _sigmoid_interpolated(v, 9)
    r = np.where(saturated, 0x7FFF << 10, r & 0xFFFFFFFF)
    r = np.where(v >= 0, r + (1 << 9), (1 << 25) - r + (1 << 9) - 1) & 0xFFFFFFFF
    return _wrap(r >> 10, 16).tolist()


def tanh16_table(in_scale: float) -> list[int]:
    """reference_integer_ops::Tanh (int16): tanh(x) = 2 sigmoid(2x) - 1 from the same table,
    interpolated at 8 fractional bits; int32 arithmetic as the kernel's."""
    v = _int16_inputs(*int16_activation_multiplier(in_scale, tanh=True))
    saturated, r = _sigmoid_interpolated(v, 8)
    r = np.where(saturated, 0xFFFF << 8, _wrap(r, 32))
    r = np.where(v >= 0, _wrap(r - (1 << 23) + (1 << 7), 32),
                 _wrap(-r + (1 << 23) + (1 << 7) - 1, 32))
    return _wrap(r >> 8, 16).tolist()
