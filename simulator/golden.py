"""Golden-vector regression of every quantized kernel.

Cases are declared here, once, in Python: a tiny Program per op, an arithmetic contract, inputs
from a seeded generator. ``regenerate`` runs the reference (the oracle) and writes one small
``.npz`` per case (the Program file's bytes, the contract, the inputs and every expected
tensor). ``check`` runs the stored Program on the stored inputs with a backend and compares
every tensor exactly: a kernel change that moves one bit fails.

Regenerating is deliberate: ``archnet regress --regenerate`` (see README), and only after
deciding that the new integers are the right ones.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from simulator.contract import (AccumulatorSpec, AddRounding, ArithmeticSpec, AvgPoolSum,
                                FcRequant, GlobalAvgPool, Int16Requant, MacOrder, MulScale,
                                Overflow, QuantizeRounding, RequantMode, RequantSpec,
                                RoundingMode, SaturationPoint, parse_dtype)
from simulator.errors import SimulatorError
from simulator.execute import execute, output_array
from simulator.fileio import atomic_write_bytes
from simulator.ir.builder import ProgramBuilder
from simulator.ir.program import Program, load_program, save_program
from simulator.numerics.tables import rsqrt_table

# ----------------------------------------------------------------------------- contracts

ACCUMULATORS = {
    "acc32_sat_final": AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL),
    "acc24_wrap": AccumulatorSpec(24, Overflow.WRAP, SaturationPoint.FINAL),
    "acc16_sat_per_mac_cin": AccumulatorSpec(16, Overflow.SATURATE, SaturationPoint.PER_MAC,
                                             mac_order=MacOrder.CIN_KH_KW),
    "acc16_sat_per_mac_hwc": AccumulatorSpec(16, Overflow.SATURATE, SaturationPoint.PER_MAC,
                                             mac_order=MacOrder.KH_KW_CIN),
    "acc20_sat_tile8": AccumulatorSpec(20, Overflow.SATURATE, SaturationPoint.PER_TILE, tile_k=8,
                                       mac_order=MacOrder.KH_KW_CIN),
    "acc12_sat_final": AccumulatorSpec(12, Overflow.SATURATE, SaturationPoint.FINAL),
}

REQUANTS = {
    "tflite_m32": RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE, 32),
    "half_up_m16": RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.HALF_UP, 16),
    "half_even_m24": RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.HALF_EVEN, 24),
    "half_away_m32": RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.HALF_AWAY, 32),
    "floor_m8": RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.FLOOR, 8),
    "float_half_even": RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN, 32),
}

_ACC_DEFAULT = ACCUMULATORS["acc32_sat_final"]
_RQ_DEFAULT = REQUANTS["tflite_m32"]


@dataclass(frozen=True)
class GoldenCase:
    name: str
    op: str
    accumulator: str
    requant: str
    build: Callable[[np.random.Generator], tuple[Program, dict[str, np.ndarray]]]
    variant: str = ""   # a key of VARIANTS: the arithmetic choices beyond accumulator/requant

    @property
    def arithmetic(self) -> ArithmeticSpec:
        return contract(self.accumulator, self.requant, self.variant)


# TFLite's own arithmetic (the tflite-reference profile): ADD, AVERAGE_POOL_2D, MEAN and the
# reference FULLY_CONNECTED each round their own way, MUL forms its scale in float32
VARIANTS = {"": {}, "tflite": {"add_rounding": AddRounding.PER_OPERAND,
                               "avgpool_sum": AvgPoolSum.RAW,
                               "fc_requantize": FcRequant.FLOAT64_HALF_AWAY,
                               "global_avgpool": GlobalAvgPool.TFLITE_MEAN,
                               "quantize_rounding": QuantizeRounding.HALF_AWAY,
                               "mul_scale": MulScale.FLOAT32}}
# ... and its 16x8 kernels: an int64 accumulator requantized by a 16-bit multiplier rounded once,
# ADD's operands shifted 15 bits
VARIANTS["tflite16"] = {**VARIANTS["tflite"],
                        "int16_accumulator": AccumulatorSpec(64, Overflow.WRAP,
                                                             SaturationPoint.FINAL),
                        "int16_requantize": Int16Requant.TFLITE_REDUCED_MULTIPLIER,
                        "int16_add_left_shift": 15}


def contract(accumulator: str, requant: str, variant: str = "") -> ArithmeticSpec:
    return replace(ArithmeticSpec(ACCUMULATORS[accumulator], REQUANTS[requant]),
                   **VARIANTS[variant])


def _rand(rng, dtype: str, shape) -> np.ndarray:
    t = parse_dtype(dtype)
    return rng.integers(t.qmin, t.qmax, size=shape, endpoint=True).astype(np.int64)


def _mac_program(op: str, x_t: str, w_t: str, out_t: str, rng, per_channel: bool, **attrs):
    b = ProgramBuilder(f"golden_{op}")
    if op == "conv2d":
        groups = attrs.get("groups", 1)
        x_shape, w_shape = (1, 4, 7, 6), (4 if groups == 1 else 4, 4 // groups, 3, 3)
    else:
        x_shape, w_shape = (3, 20), (5, 20)
    xt, wt = parse_dtype(x_t), parse_dtype(w_t)
    x_zp = (xt.qmax + 1) // 2 if not xt.signed else 0
    x = b.input("x", x_shape, x_t, scale=0.05, zero_point=x_zp)
    oc = w_shape[0]
    w_scale = list(rng.uniform(0.01, 0.05, oc)) if per_channel else 0.03
    w = b.constant("w", _rand(rng, w_t, w_shape), w_t, scale=w_scale,
                   zero_point=0, axis=0 if per_channel else None)
    # spread the outputs over their range: typical |acc| ~ sqrt(K) * |x| * |w|
    k = int(np.prod(w_shape[1:]))
    typical = np.sqrt(k) * max(abs(xt.qmin), xt.qmax) / 2 * max(abs(wt.qmin), wt.qmax) / 2
    bias = b.constant("bias", rng.integers(-typical, typical, oc, endpoint=True), "s32")
    acc = b.node(op, [x, w, bias], "acc", **attrs)
    out = parse_dtype(out_t)
    base = (out.qmax - out.qmin) / 4 / typical
    ratio = list(base * rng.uniform(0.6, 1.4, oc)) if per_channel else [base]
    y = b.node("requantize", [acc], "y", dtype=out_t, scale=0.1,
               zero_point=0 if out.signed else (out.qmax + 1) // 4, real_multiplier=ratio, axis=1)
    b.output(y)
    return b.build(), {"x": _rand(rng, x_t, x_shape)}


def _single_input(op: str, dtype: str, shape, rng, out_dtype=None, out_scale=None, **attrs):
    b = ProgramBuilder(f"golden_{op}")
    t = parse_dtype(dtype)
    zp = 0 if t.signed else (t.qmax + 1) // 2
    x = b.input("x", shape, dtype, scale=0.07, zero_point=zp)
    kwargs = {}
    if out_dtype:
        kwargs = {"dtype": out_dtype, "scale": out_scale, "zero_point": 0}
    y = b.node(op, [x], "y", **kwargs, **attrs)
    b.output(y)
    return b.build(), {"x": _rand(rng, dtype, shape)}


def _add_program(rng, dtype: str):
    b = ProgramBuilder("golden_add")
    t = parse_dtype(dtype)
    zp = 0 if t.signed else (t.qmax + 1) // 2
    a = b.input("a", (2, 3, 4, 5), dtype, scale=0.031, zero_point=zp)
    c = b.input("b", (2, 3, 4, 5), dtype, scale=0.017, zero_point=zp // 2)
    y = b.node("add", [a, c], "y", dtype=dtype, scale=0.04, zero_point=zp)
    b.output(y)
    return b.build(), {"a": _rand(rng, dtype, (2, 3, 4, 5)), "b": _rand(rng, dtype, (2, 3, 4, 5))}


def _mul_program(rng, dtype: str):
    """A squeeze-and-excitation gate: a feature map times one value per channel."""
    b = ProgramBuilder("golden_mul")
    t = parse_dtype(dtype)
    zp = 0 if t.signed else (t.qmax + 1) // 2
    a = b.input("a", (2, 3, 4, 5), dtype, scale=0.031, zero_point=zp)
    g = b.input("gate", (2, 3, 1, 1), "u8", scale=1 / 256, zero_point=0)
    y = b.node("mul", [a, g], "y", dtype=dtype, scale=0.02, zero_point=zp)
    b.output(y)
    return b.build(), {"a": _rand(rng, dtype, (2, 3, 4, 5)), "gate": _rand(rng, "u8", (2, 3, 1, 1))}


def _softmax_program(rng, dtype: str):
    t = parse_dtype(dtype)
    table = [int(round(np.exp(-d * 0.1) * (1 << 15))) for d in range(1 << t.bits)]
    return _single_input("softmax", dtype, (3, 2, 9), rng, out_dtype="u8", out_scale=1 / 256,
                         axis=-1, exp_table=table)


def _masked_softmax_program(rng):
    """Attention over padded keys: scores [N, heads, T, T] with a key mask [N, 1, 1, T]. One
    sequence is whole, one padded (its mask holds 2s: any nonzero is valid), one wholly masked."""
    shape, mask_shape = (3, 2, 4, 7), (3, 1, 1, 7)
    b = ProgramBuilder("golden_masked_softmax")
    x = b.input("x", shape, "s8", scale=0.07)
    m = b.input("mask", mask_shape, "u8")
    table = [int(round(np.exp(-d * 0.07) * (1 << 15))) for d in range(256)]
    y = b.node("softmax", [x, m], "y", dtype="s8", scale=1 / 256, zero_point=-128, axis=-1,
               exp_table=table)
    b.output(y)
    mask = np.zeros(mask_shape, np.int64)
    mask[0] = 1
    mask[1, ..., :4] = 2
    return b.build(), {"x": _rand(rng, "s8", shape), "mask": mask}


def _lut_program(rng, dtype: str):
    t = parse_dtype(dtype)
    table = [int(np.clip(round(np.tanh((i + t.qmin) * 0.05) * 127), -128, 127))
             for i in range(1 << t.bits)]
    return _single_input("lookup_table", dtype, (2, 3, 5, 5), rng, out_dtype="s8", out_scale=1 / 127,
                         table=table)


def _mean_rows_program(rng):
    """A mean over each row's last axis at 16 bits (a token's channels), zero points in."""
    b = ProgramBuilder("golden_mean")
    x = b.input("x", (2, 5, 24), "s16", scale=0.003, zero_point=-7)
    y = b.node("mean", [x], "y", dtype="s16", scale=0.0011, zero_point=5, axes=[-1])
    b.output(y)
    return b.build(), {"x": _rand(rng, "s16", (2, 5, 24)) // 4}


def _sub_rows_program(rng):
    """x minus one value per row (a token's mean) broadcast along the row, at 16 bits."""
    b = ProgramBuilder("golden_sub")
    x = b.input("x", (2, 5, 8), "s16", scale=0.003, zero_point=3)
    m = b.input("m", (2, 5, 1), "s16", scale=0.0017, zero_point=-2)
    y = b.node("sub", [x, m], "y", dtype="s16", scale=0.004, zero_point=1)
    b.output(y)
    return b.build(), {"x": _rand(rng, "s16", (2, 5, 8)) // 2, "m": _rand(rng, "s16", (2, 5, 1)) // 2}


def _minimum_program(rng):
    """Two tables' readings of one value on one grid, the smaller kept (row broadcast)."""
    b = ProgramBuilder("golden_minimum")
    x = b.input("a", (2, 5, 8), "s16", scale=0.01)
    y = b.input("b", (2, 5, 1), "s16", scale=0.01)
    b.output(b.node("minimum", [x, y], "y", dtype="s16", scale=0.01))
    return b.build(), {"a": _rand(rng, "s16", (2, 5, 8)), "b": _rand(rng, "s16", (2, 5, 1))}


def _gather_program(rng):
    """Token ids looking up rows of an s8 embedding table (the chip's gather)."""
    b = ProgramBuilder("golden_gather")
    ids = b.input("ids", (2, 7), "u16")
    table = b.constant("table", _rand(rng, "s8", (40, 6)), "s8", scale=0.02)
    b.output(b.node("gather", [table, ids], "rows", dtype="s8", scale=0.02))
    return b.build(), {"ids": rng.integers(0, 40, (2, 7))}


def _lut_interpolated_program(rng):
    b = ProgramBuilder("golden_lookup_interpolated")
    x = b.input("x", (3, 7, 11), "s16", scale=0.001)
    table = [int(v) for v in np.clip(np.rint(np.tanh(np.linspace(-32.768, 32.768, 513)) * 32767),
                                     -32768, 32767)]
    y = b.node("lookup_table", [x], "y", dtype="s32", scale=1 / 32767 / 128, table=table,
               interpolated=True, function="tanh")
    b.output(y)
    return b.build(), {"x": _rand(rng, "s16", (3, 7, 11))}


def _token_norm_program(rng):
    """LayerNorm over each token's 16 channels from chip ops at 16 bits, as Arm's toolchain
    decomposes it: mean, subtract, square, mean, rsqrt by an interpolated table, multiply. The
    square and the variance are nonnegative: their zero point puts the whole s16 range above 0."""
    b = ProgramBuilder("golden_token_norm")
    x = b.input("x", (2, 6, 16), "s16", scale=0.002)
    m = b.node("mean", [x], "mean", dtype="s16", scale=0.002, axes=[-1])
    c = b.node("sub", [x, m], "centred", dtype="s16", scale=0.002)
    sq = b.node("mul", [c, c], "square", dtype="s16", scale=8e-4, zero_point=-32768)
    var = b.node("mean", [sq], "variance", dtype="s16", scale=1e-4, zero_point=-32768, axes=[-1])
    r_scale = 1 / 8192
    wide = b.node("lookup_table", [var], "rsqrt_wide", dtype="s32", scale=r_scale / 128,
                  table=rsqrt_table(1e-4, r_scale, 1e-5, in_zp=-32768), interpolated=True,
                  function="rsqrt")
    r = b.node("requantize", [wide], "rsqrt", dtype="s16", scale=r_scale,
               real_multiplier=[1 / 128])
    y = b.node("mul", [c, r], "y", dtype="s8", scale=1 / 32)
    b.output(y)
    spread = rng.uniform(0.5, 2.0, (2, 6, 1))
    values = np.rint(rng.normal(0, 1, (2, 6, 16)) * spread / 0.002 + rng.normal(0, 300, (2, 6, 1)))
    return b.build(), {"x": np.clip(values, -32768, 32767).astype(np.int64)}


def _requant_program(rng, in_t: str, out_t: str, per_channel: bool):
    """Dyadic ratios make exact ties frequent, so every rounding mode shows where it differs."""
    b = ProgramBuilder("golden_requantize")
    x = b.input("x", (2, 6, 5, 4), in_t, scale=0.001)
    dyadic = [1 / 8, 3 / 32, 0.0073, 5 / 64, 0.011, 1 / 16]
    ratios = dyadic if per_channel else [1 / 8]
    out, src = parse_dtype(out_t), parse_dtype(in_t)
    y = b.node("requantize", [x], "y", dtype=out_t, scale=0.1,
               zero_point=0 if out.signed else 3, real_multiplier=ratios, axis=1)
    b.output(y)
    reach = ((out.qmax - out.qmin) * 0.75 / np.resize(ratios, 6)).astype(np.int64)
    x_values = rng.integers(-reach[None, :, None, None], reach[None, :, None, None],
                            (2, 6, 5, 4), endpoint=True)
    return b.build(), {"x": np.clip(x_values, src.qmin, src.qmax)}


def cases() -> Iterator[GoldenCase]:
    """Every op under every semantic combination that matters, each a few hundred integers."""
    mac_types = [("u8", "s8", "u8"), ("s8", "s4", "s8"), ("u4", "s2", "u4"), ("s16", "s8", "s16")]
    for acc_name in ACCUMULATORS:
        for x_t, w_t, out_t in mac_types:
            if acc_name == "acc12_sat_final" and x_t in ("s16", "u8"):
                continue  # a 12-bit accumulator only makes sense for narrow operands
            for per_channel in (False, True):
                tag = f"{x_t}x{w_t}_{'pc' if per_channel else 'pt'}"
                yield GoldenCase(f"conv3x3_{tag}_{acc_name}", "conv2d", acc_name, "tflite_m32",
                                 lambda rng, a=(x_t, w_t, out_t, per_channel): _mac_program(
                                     "conv2d", *a[:3], rng, a[3], pads=[1, 1, 1, 1]))
            yield GoldenCase(f"fc_{x_t}x{w_t}_{acc_name}", "fully_connected", acc_name, "tflite_m32",
                             lambda rng, a=(x_t, w_t, out_t): _mac_program(
                                 "fully_connected", *a, rng, True))
        yield GoldenCase(f"conv_s2_d2_{acc_name}", "conv2d", acc_name, "half_up_m16",
                         lambda rng: _mac_program("conv2d", "u8", "s8", "u8", rng, True,
                                                  strides=[2, 2], dilations=[1, 2], pads=[2, 1, 0, 2]))
        yield GoldenCase(f"depthwise_{acc_name}", "conv2d", acc_name, "half_even_m24",
                         lambda rng: _mac_program("conv2d", "s8", "s8", "s8", rng, True,
                                                  groups=4, pads=[1, 1, 1, 1]))
    for rq_name in REQUANTS:
        for in_t, out_t in (("s32", "u8"), ("s32", "s8"), ("s24", "s4"), ("s16", "u4")):
            for per_channel in (False, True):
                yield GoldenCase(f"requantize_{in_t}_{out_t}_{'pc' if per_channel else 'pt'}_{rq_name}",
                                 "requantize", "acc32_sat_final", rq_name,
                                 lambda rng, a=(in_t, out_t, per_channel): _requant_program(rng, *a))
        yield GoldenCase(f"add_s8_{rq_name}", "add", "acc32_sat_final", rq_name,
                         lambda rng: _add_program(rng, "s8"))
        yield GoldenCase(f"add_u8_{rq_name}", "add", "acc32_sat_final", rq_name,
                         lambda rng: _add_program(rng, "u8"))
        yield GoldenCase(f"mul_se_s8_{rq_name}", "mul", "acc32_sat_final", rq_name,
                         lambda rng: _mul_program(rng, "s8"))
        yield GoldenCase(f"avgpool_{rq_name}", "avgpool2d", "acc32_sat_final", rq_name,
                         lambda rng: _single_input("avgpool2d", "s8", (1, 3, 7, 7), rng,
                                                   kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
        yield GoldenCase(f"global_avgpool_{rq_name}", "global_avgpool2d", "acc32_sat_final", rq_name,
                         lambda rng: _single_input("global_avgpool2d", "u8", (2, 4, 5, 3), rng))
        yield GoldenCase(f"softmax_s8_{rq_name}", "softmax", "acc32_sat_final", rq_name,
                         lambda rng: _softmax_program(rng, "s8"))
        yield GoldenCase(f"mean_rows_s16_{rq_name}", "mean", "acc32_sat_final", rq_name,
                         _mean_rows_program)
        yield GoldenCase(f"sub_rows_s16_{rq_name}", "sub", "acc32_sat_final", rq_name,
                         _sub_rows_program)
        yield GoldenCase(f"token_norm_s16_{rq_name}", "mean", "acc32_sat_final", rq_name,
                         _token_norm_program)
    yield GoldenCase("softmax_u4", "softmax", "acc32_sat_final", "half_up_m16",
                     lambda rng: _softmax_program(rng, "u4"))
    yield GoldenCase("softmax_masked_s8_half_even_m24", "softmax", "acc32_sat_final",
                     "half_even_m24", _masked_softmax_program)
    for dtype in ("u8", "s8", "s4", "u2", "s16"):
        yield GoldenCase(f"maxpool2x2_{dtype}", "maxpool2d", "acc32_sat_final", "tflite_m32",
                         lambda rng, d=dtype: _single_input("maxpool2d", d, (1, 3, 8, 7), rng,
                                                            kernel=[2, 2], strides=[2, 2]))
        yield GoldenCase(f"maxpool3x3_pad_{dtype}", "maxpool2d", "acc32_sat_final", "tflite_m32",
                         lambda rng, d=dtype: _single_input("maxpool2d", d, (1, 2, 6, 6), rng,
                                                            kernel=[3, 3], strides=[2, 2],
                                                            pads=[1, 1, 1, 1]))
        t = parse_dtype(dtype)
        yield GoldenCase(f"clamp_relu_{dtype}", "clamp", "acc32_sat_final", "tflite_m32",
                         lambda rng, d=dtype, t=t: _single_input(
                             "clamp", d, (2, 3, 4), rng, min=0 if t.signed else (t.qmax + 1) // 2,
                             max=t.qmax))
    for dtype in ("u8", "s8", "s4"):
        yield GoldenCase(f"lookup_table_{dtype}", "lookup_table", "acc32_sat_final", "tflite_m32",
                         lambda rng, d=dtype: _lut_program(rng, d))
    yield GoldenCase("lookup_interpolated_s16", "lookup_table", "acc32_sat_final", "tflite_m32",
                     _lut_interpolated_program)
    yield GoldenCase("minimum_s16", "minimum", "acc32_sat_final", "tflite_m32", _minimum_program)
    yield GoldenCase("gather_s8", "gather", "acc32_sat_final", "tflite_m32", _gather_program)
    for dtype in ("u8", "s4"):
        yield GoldenCase(f"concat_{dtype}", "concat", "acc32_sat_final", "tflite_m32",
                         lambda rng, d=dtype: _concat_program(rng, d))
    for acc_name in ("acc32_sat_final", "acc16_sat_per_mac_cin", "acc20_sat_tile8", "acc24_wrap"):
        yield GoldenCase(f"matmul_s8_{acc_name}", "matmul", acc_name, "tflite_m32", _matmul_program)
    yield from _tflite_cases()


def _tflite_cases() -> Iterator[GoldenCase]:
    """TFLite's ADD, AVERAGE_POOL_2D (u8: a zero point that moves ties), MEAN and reference
    FULLY_CONNECTED (dyadic scales: ties) under the tflite-reference arithmetic."""
    tfl = dict(accumulator="acc32_sat_final", requant="tflite_m32", variant="tflite")
    yield GoldenCase("add_s8_tflite_per_operand", "add", build=lambda rng: _add_program(rng, "s8"),
                     **tfl)
    yield GoldenCase("avgpool_u8_tflite_raw", "avgpool2d", build=lambda rng: _single_input(
        "avgpool2d", "u8", (1, 3, 7, 7), rng, kernel=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
        **tfl)
    yield GoldenCase("global_avgpool_s8_tflite_mean", "global_avgpool2d", build=_mean_program,
                     **tfl)
    yield GoldenCase("mean_rows_s16_tflite_mean", "mean", build=_mean_rows_program, **tfl)
    yield GoldenCase("fc_s8_tflite_float64", "fully_connected", build=_fc_ties_program, **tfl)
    yield from _tflite16_cases()


def _tflite16_cases() -> Iterator[GoldenCase]:
    """TFLite's 16x8 kernels (int16 activations, int8 weights, int64 bias) and its float32
    MUL scale, under the tflite-reference arithmetic."""
    tfl = dict(accumulator="acc32_sat_final", requant="tflite_m32", variant="tflite16")
    yield GoldenCase("conv3x3_s16xs8_tflite16", "conv2d", build=lambda rng: _mac16_program(
        "conv2d", rng, pads=[1, 1, 1, 1]), **tfl)
    yield GoldenCase("depthwise_s16xs8_tflite16", "conv2d", build=lambda rng: _mac16_program(
        "conv2d", rng, groups=4, pads=[1, 0, 1, 2]), **tfl)
    yield GoldenCase("fc_s16xs8_tflite16", "fully_connected",
                     build=lambda rng: _mac16_program("fully_connected", rng), **tfl)
    yield GoldenCase("add_s16_tflite16", "add", build=lambda rng: _add_program(rng, "s16"), **tfl)
    yield GoldenCase("mul_s16_tflite16", "mul", build=_mul16_program, **tfl)


def _mac16_program(op: str, rng, **attrs):
    """A 16x8 MAC: int16 input (zero point 0) whose first batch (first rows) holds extremes,
    so that the sums of channel 0 pass 2**31 where the reduction is long (the 64-bit
    accumulator holds them); the rest uniform, spread over the output range; an int64 bias;
    per-channel multipliers, two dyadic (ties for the one rounding half up), channel 0's small
    enough that its sums past 2**31 land inside the int16 range."""
    b = ProgramBuilder(f"golden_{op}_16x8")
    if op == "conv2d":
        groups = attrs.get("groups", 1)
        x_shape, w_shape = (2, 4, 5, 6), (4, 4 // groups, 3, 3)
        if groups == 1:
            x_shape, w_shape = (2, 300, 3, 4), (4, 300, 3, 3)
    else:
        x_shape, w_shape = (6, 2000), (4, 2000)
    x = b.input("x", x_shape, "s16", scale=1e-4)
    oc = w_shape[0]
    w_data = rng.integers(-127, 128, w_shape)
    w_data[0] = np.abs(w_data[0])  # channel 0: one sign, so extreme inputs sum past 2**31
    w = b.constant("w", w_data, "s8", scale=list(rng.uniform(0.002, 0.02, oc)), axis=0)
    bias = b.constant("bias", rng.integers(-(1 << 20), 1 << 20, oc), "s64")
    acc = b.node(op, [x, w, bias], "acc", **attrs)
    k = int(np.prod(w_shape[1:]))
    base = 2.0 ** -int(np.ceil(np.log2(np.sqrt(k) * 18918 * 73 / 8192)))
    ratios = [base / 64, base / 2, base * 0.731, base * 1.37]  # channel 0: sums past 2**31 fit
    y = b.node("requantize", [acc], "y", dtype="s16", scale=0.1, real_multiplier=ratios, axis=1,
               clamp_min=-20000)
    b.output(y)
    x_values = _rand(rng, "s16", x_shape)
    x_values[0] = np.where(rng.random(x_values[0].shape) < 0.2, -32768, 32767)
    return b.build(), {"x": x_values}


def _mul16_program(rng):
    """Scales whose float32 product and quotient quantize 175 units of the Q0.31 multiplier
    away from the double one."""
    b = ProgramBuilder("golden_mul_16")
    a = b.input("a", (2, 3, 4, 5), "s16", scale=0.0005651481333188713)
    g = b.input("b", (2, 3, 4, 5), "s16", scale=0.0008817557827569544)
    y = b.node("mul", [a, g], "y", dtype="s16", scale=0.0010636205552145839)
    b.output(y)
    va, vb = _rand(rng, "s16", (2, 3, 4, 5)) // 8, _rand(rng, "s16", (2, 3, 4, 5)) // 8
    # products where the two multipliers round apart (found by search)
    pairs = [(-11170, 15), (11170, 15), (-26312, 29), (-20010, 36), (20010, 36), (-16008, 43),
             (3351, 50), (-26343, 57), (31039, 71), (-31039, 71)]
    va.reshape(-1)[:len(pairs)], vb.reshape(-1)[:len(pairs)] = zip(*pairs)
    return b.build(), {"a": va, "b": vb}


def _mean_program(rng):
    b = ProgramBuilder("golden_tflite_mean")
    x = b.input("x", (2, 4, 5, 3), "s8", scale=0.07, zero_point=-9)
    y = b.node("global_avgpool2d", [x], "y", dtype="s8", scale=0.03, zero_point=11)
    b.output(y)
    return b.build(), {"x": _rand(rng, "s8", (2, 4, 5, 3))}


def _fc_ties_program(rng):
    b = ProgramBuilder("golden_tflite_fc")
    x = b.input("x", (16, 12), "s8", scale=0.5, zero_point=3)
    w = b.constant("w", _rand(rng, "s8", (4, 12)) // 4, "s8",
                   scale=[0.25, 0.125, 0.0625, 0.01], axis=0)
    acc = b.node("fully_connected", [x, w], "acc")
    y = b.node("requantize", [acc], "y", dtype="s8", scale=2.0, zero_point=-2,
               real_multiplier=[1 / 16, 1 / 32, 1 / 64, 0.0025], axis=1)
    b.output(y)
    return b.build(), {"x": _rand(rng, "s8", (16, 12)) // 4}


def _concat_program(rng, dtype: str):
    b = ProgramBuilder("golden_concat")
    a = b.input("a", (1, 2, 3, 4), dtype, scale=0.05, zero_point=1)
    c = b.input("b", (1, 3, 3, 4), dtype, scale=0.05, zero_point=1)
    y = b.node("concat", [a, c], "y", axis=1)
    z = b.node("transpose", [y], "z", perm=[0, 2, 3, 1])
    f = b.node("flatten", [z], "f", axis=1)
    r = b.node("reshape", [f], "r", shape=[1, -1, 5])
    b.output(r)
    return b.build(), {"a": _rand(rng, dtype, (1, 2, 3, 4)), "b": _rand(rng, dtype, (1, 3, 3, 4))}


def _matmul_program(rng):
    b = ProgramBuilder("golden_matmul")
    a = b.input("a", (2, 3, 4, 16), "s8", scale=0.05)
    c = b.input("b", (2, 3, 16, 5), "s8", scale=0.04, zero_point=3)
    acc = b.node("matmul", [a, c], "acc")
    y = b.node("requantize", [acc], "y", dtype="s8", scale=0.2, real_multiplier=[0.01])
    b.output(y)
    return b.build(), {"a": _rand(rng, "s8", (2, 3, 4, 16)), "b": _rand(rng, "s8", (2, 3, 16, 5))}


# ----------------------------------------------------------------------------- files

def default_dir() -> Path:
    """``tests/golden`` of the source tree this package runs from, else of the working dir."""
    here = Path(__file__).resolve().parent.parent / "tests" / "golden"
    return here if here.is_dir() else Path.cwd() / "tests" / "golden"


def _seed(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") ^ 0x5EED


def _program_bytes(program: Program) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = save_program(program, Path(tmp) / "case.program")
        return np.frombuffer(path.read_bytes(), dtype=np.uint8)


def _program_from_bytes(data: np.ndarray, where: str) -> Program:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.program"
        path.write_bytes(data.tobytes())
        try:
            return load_program(path)
        except SimulatorError as exc:
            raise SimulatorError(f"{where}: {exc}") from None


def regenerate(directory: Path | None = None, progress: Callable[[str], None] | None = None,
               only: set[str] | None = None) -> int:
    """Write every case's expected integers as computed by the reference. Returns the count.
    ``only``: just these cases, leaving every other file as it is."""
    directory = Path(directory or default_dir())
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    names = set()
    for case in cases():
        if only is not None and case.name not in only:
            continue
        if progress:
            progress(case.name)
        program, inputs = case.build(np.random.default_rng(_seed(case.name)))
        result = execute(program, case.arithmetic, inputs, backend="reference", trace=True)
        payload = {"program": _program_bytes(program),
                   "case": np.frombuffer(json.dumps(
                       {"name": case.name, "op": case.op, "accumulator": case.accumulator,
                        "requant": case.requant, **({"variant": case.variant} if case.variant
                                                    else {})}).encode(), dtype=np.uint8)}
        for name, value in inputs.items():
            payload[f"in:{name}"] = output_array(program.tensors[name], value)
        for node in program.nodes:
            t = node.outputs[0]
            payload[f"out:{t}"] = output_array(program.tensors[t], result.tensors[t])
        for node_name, stats in result.overflow.items():
            payload[f"overflow:{node_name}"] = np.asarray(
                [stats.events, stats.outputs, stats.required_bits], np.int64)
        buf = io.BytesIO()
        np.savez_compressed(buf, **payload)
        target = atomic_write_bytes(directory / f"{case.name}.npz", buf.getvalue())
        names.add(target.name)
        count += 1
    for stale in directory.glob("*.npz") if only is None else ():
        if stale.name not in names:
            stale.unlink()
    return count


@dataclass
class GoldenResult:
    case: str
    op: str
    semantics: str
    backend: str
    elements: int
    mismatches: int
    first: str

    @property
    def ok(self) -> bool:
        return self.mismatches == 0


def check_file(path: Path, backend: str) -> GoldenResult:
    """Run one stored case with ``backend`` and compare every tensor and overflow count exactly."""
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
    except Exception as exc:  # a damaged archive can fail in many numpy/zip ways
        raise SimulatorError(f"{where}: unreadable golden file ({type(exc).__name__}: {exc})") from None
    if "program" not in stored or "case" not in stored:
        raise SimulatorError(f"{where}: not a golden file (needs 'program' and 'case')")
    meta = json.loads(stored["case"].tobytes().decode())
    if meta["accumulator"] not in ACCUMULATORS or meta["requant"] not in REQUANTS:
        raise SimulatorError(f"{where}: unknown contract {meta['accumulator']}/{meta['requant']}")
    if meta.get("variant", "") not in VARIANTS:
        raise SimulatorError(f"{where}: unknown arithmetic variant {meta['variant']!r}")
    arith = contract(meta["accumulator"], meta["requant"], meta.get("variant", ""))
    program = _program_from_bytes(stored["program"], where)
    inputs = {k[3:]: v for k, v in stored.items() if k.startswith("in:")}
    result = execute(program, arith, inputs, backend=backend, trace=True)
    elements, mismatches, first = 0, 0, ""
    for key, expected in stored.items():
        if key.startswith("out:"):
            got = np.asarray(result.tensors[key[4:]], np.int64)
            diff = got != expected.astype(np.int64)
            elements += expected.size
            if diff.any():
                mismatches += int(diff.sum())
                if not first:
                    idx = tuple(int(i) for i in np.argwhere(diff)[0])
                    first = f"{key[4:]}{list(idx)}: got {got[idx]} expected {expected[idx]}"
        elif key.startswith("overflow:"):
            stats = result.overflow.get(key[9:])
            got = [stats.events, stats.outputs, stats.required_bits] if stats else None
            if got != expected.tolist():
                mismatches += 1
                first = first or f"overflow stats of {key[9:]}: got {got} expected {expected.tolist()}"
    return GoldenResult(meta["name"], meta["op"], f"{meta['accumulator']}/{meta['requant']}",
                        backend, elements, mismatches, first)


def check(directory: Path | None = None, backends=("kernels", "reference"),
          progress: Callable[[str], None] | None = None) -> list[GoldenResult]:
    directory = Path(directory or default_dir())
    files = sorted(directory.glob("*.npz"))
    if not files:
        raise SimulatorError(f"{directory}: no golden files (*.npz); run `archnet regress --regenerate`")
    results = []
    for path in files:
        if progress:
            progress(path.stem)
        for backend in backends:
            results.append(check_file(path, backend))
    return results


__all__ = ["ACCUMULATORS", "REQUANTS", "GoldenCase", "GoldenResult", "cases", "check", "check_file",
           "default_dir", "regenerate", "asdict"]
