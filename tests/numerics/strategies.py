"""Hypothesis strategies for the numerics tests (in the manner of Brevitas' ``hyp_helper.py``).

Every strategy draws small shapes (the reference is a plain loop) but the full range of the
arithmetic contract: operand types of 2/4/8/16 bits, signed or not, zero points anywhere in
the type, per-channel or per-tensor; accumulators of 8..48 bits with every overflow policy,
saturation point, tile size and MAC order; every rounding mode and multiplier width.
Values are drawn with a bias toward the ends of each range, where overflow and ties live.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from simulator.contract import (AccumulatorSpec, IntType, MacOrder, Overflow, RequantMode,
                                RequantSpec, RoundingMode, SaturationPoint)
from simulator.numerics import fixed_point as fp

OPERAND_BITS = (2, 4, 8, 16)


@st.composite
def int_types(draw, bits=OPERAND_BITS) -> IntType:
    return IntType(draw(st.sampled_from(bits)), draw(st.booleans()))


def edgy_integers(lo: int, hi: int):
    """Integers in [lo, hi], often exactly lo, hi or 0 (if inside)."""
    special = [v for v in {lo, hi, 0, lo + 1, hi - 1} if lo <= v <= hi]
    return st.one_of(st.sampled_from(sorted(special)), st.integers(lo, hi))


def int_arrays(shape, lo: int, hi: int):
    return hnp.arrays(np.int64, shape, elements=edgy_integers(lo, hi))


def of_type(shape, t: IntType):
    return int_arrays(shape, t.qmin, t.qmax)


def zero_points(t: IntType, channels: int | None = None):
    """A zero point anywhere in the type: a scalar, or one per channel."""
    if channels is None:
        return edgy_integers(t.qmin, t.qmax)
    return st.one_of(edgy_integers(t.qmin, t.qmax),
                     int_arrays((channels,), t.qmin, t.qmax))


@st.composite
def accumulator_specs(draw, bits=st.integers(8, 48)) -> AccumulatorSpec:
    point = draw(st.sampled_from(list(SaturationPoint)))
    return AccumulatorSpec(
        draw(bits), draw(st.sampled_from(list(Overflow))), point,
        draw(st.integers(1, 9)) if point is SaturationPoint.PER_TILE else 0,
        draw(st.sampled_from(list(MacOrder))))


def narrow_accumulators():
    """Accumulators narrow enough that small random MACs overflow them."""
    return accumulator_specs(bits=st.integers(8, 20))


@dataclass
class ConvCase:
    x: np.ndarray
    w: np.ndarray
    bias: np.ndarray | None
    x_zp: int
    w_zp: object
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    groups: int

    def args(self, acc):
        return (self.x, self.w, self.bias, self.x_zp, self.w_zp, self.strides, self.pads,
                self.dilations, self.groups, acc)


@st.composite
def conv_cases(draw, max_ocg: int = 4) -> ConvCase:
    groups = draw(st.integers(1, 3))
    icg, ocg = draw(st.integers(1, 3)), draw(st.integers(1, max_ocg))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[2]), 7))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[1] - pads[3]), 7))
    n = draw(st.integers(1, 2))
    xt, wt = draw(int_types()), draw(int_types())
    oc = groups * ocg
    x = draw(of_type((n, groups * icg, h, w), xt))
    wts = draw(of_type((oc, icg, kh, kw), wt))
    bias = draw(st.one_of(st.none(), int_arrays((oc,), -(1 << 20), 1 << 20)))
    return ConvCase(x, wts, bias, draw(zero_points(xt)), draw(zero_points(wt, oc)), (sh, sw),
                    pads, (dh, dw), groups)


@st.composite
def fc_cases(draw):
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 24)), draw(st.integers(1, 6))
    xt, wt = draw(int_types()), draw(int_types())
    bias = draw(st.one_of(st.none(), int_arrays((m,), -(1 << 20), 1 << 20)))
    return (draw(of_type((n, k), xt)), draw(of_type((m, k), wt)), bias,
            draw(zero_points(xt)), draw(zero_points(wt, m)))


@st.composite
def matmul_cases(draw):
    batch = draw(st.sampled_from([(), (2,), (2, 2)]))
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 12)), draw(st.integers(1, 5))
    at, bt = draw(int_types()), draw(int_types())
    b_batch = draw(st.sampled_from([(), batch]))
    return (draw(of_type(batch + (n, k), at)), draw(of_type(b_batch + (k, m), bt)),
            draw(zero_points(at)), draw(zero_points(bt)))


@st.composite
def requant_specs(draw) -> RequantSpec:
    mode = draw(st.sampled_from(list(RequantMode)))
    rounding = draw(st.sampled_from(list(RoundingMode)))
    if mode is RequantMode.FLOAT_SCALE:
        return RequantSpec(mode, RoundingMode.HALF_EVEN)
    bits = 32 if rounding is RoundingMode.TFLITE else draw(st.integers(2, 32))
    return RequantSpec(mode, rounding, bits)


def real_scales():
    """Requantization scales from tiny to a little above 1 (TFLite's left-shift case)."""
    return st.one_of(
        st.floats(1e-9, 4.0, allow_nan=False, allow_infinity=False),
        st.sampled_from([0.0, 0.5, 0.25, 1.0, 2.0, 1 / 3, 2.0 ** -20, 0.75]),
        st.builds(lambda m, e: m * 2.0 ** e, st.integers(1, 255), st.integers(-40, -1)))


@st.composite
def prepared_scales(draw, channels: int):
    spec = draw(requant_specs())
    per_channel = channels > 1 and draw(st.booleans())
    count = channels if per_channel else 1
    scales = [draw(real_scales()) for _ in range(count)]
    limit = (1 << (spec.multiplier_bits - 1)) - 1
    # keep scales representable with a right shift for this multiplier width
    scales = [min(s, float(limit)) for s in scales]
    return fp.prepare_scale(scales, spec), per_channel


def roundings():
    return st.sampled_from(list(RoundingMode))
