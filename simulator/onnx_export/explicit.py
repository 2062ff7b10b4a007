"""A requantize as plain ONNX ops that compute the Program's exactly: the form of a layer for
which no float32 scale makes a QLinear op exact (``requant``). The MAC before it is ConvInteger /
MatMulInteger plus an int32 Add of the bias (the Program's accumulator); then, by the arithmetic
the profile gives the requantize:

float32 scale (``onnx-qlinear``): Cast float -> Mul t[c] -> [Max/Min] -> QuantizeLinear(1, zp):
    rint(float32(acc) * t) + zp saturated, literally the simulator's formula (onnxruntime's Cast
    and Mul round to nearest, QuantizeLinear ties to even, and a scale of 1 divides exactly).
integer M and S (``multiplier_shift``): Cast int64 -> Max/Min to the channel's window (beyond
    it the Program only saturates; inside it every product stays far below 2**63) -> the
    rounding below -> Add zp -> Clip -> Cast. With n = acc * M, D = 2**S, h = D / 2 (0 if S = 0):
      floor      (n + K D) / D - K          K >= 0 even, so that every numerator is >= 0
      half_up    (n + h + K D) / D - K
      half_even  q = (n + K D) / D;  (n + K D + h - 1 + q mod 2) / D - K   (S >= 1; S = 0: n)
      half_away  sign(n) * ((|n| + h) / D)
      tflite     x = acc * 2**max(31 - S, 0); p = x * M                     (gemmlowp:)
                 s = sign(p) * ((|p| + 2**30 - [p < 0]) / 2**31)            SRDHM
                 sign(s) * ((|s| + h') / 2**max(S - 31, 0))                  RoundingDivideByPOT
float64 scale, ties away from zero (TFLite's reference fully connected): Cast double -> Mul ->
    where(v < 0, -floor(-v + 0.5), floor(v + 0.5)) -> Cast int64 -> Add zp -> Clip -> Cast.

ONNX Div on integers truncates toward zero on onnxruntime (older reference evaluators floored):
every division here has a numerator >= 0 and a divisor 2**k, where the two agree. Each form is
written once (``requantize``) against an ops interface with two implementations: ``NumpyOps``,
ONNX's semantics in NumPy, which ``requant.Layer.same_map`` proves equal to the Program before
anything is written, and ``OnnxOps``, the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.contract import ArithmeticSpec, RequantMode, RoundingMode
from simulator.errors import ExportError
from simulator.ir.ops import OpKind
from simulator.ir.program import Node, Program
from simulator.numerics import fixed_point as fp
from simulator.onnx_export.graph import (BOOL, DOUBLE, FLOAT, INT64, NUMPY, RANGES,
                                         GraphWriter)

_SAFE = 1 << 62             # every int64 intermediate stays below this (checked per layer)


@dataclass(frozen=True)
class Requant:
    """The Program's requantize under the profile, as the numbers an explicit form needs."""

    kind: str                   # "float32", "integer" or "float64"
    scale: np.ndarray           # float32 t or float64 scale per channel ("float32", "float64")
    multiplier: np.ndarray      # int64 M per channel ("integer")
    shift: np.ndarray           # int64 S per channel ("integer")
    rounding: RoundingMode

    @property
    def name(self) -> str:
        return {"float32": "float32 ops", "integer": "int64 ops",
                "float64": "float64 ops"}[self.kind]


def requant_of(program: Program, mac: Node, rq: Node, arith: ArithmeticSpec,
               channels: int) -> Requant:
    """What ``execute`` computes for this requantize (its rule, read the same way)."""
    mult = np.broadcast_to(np.asarray(rq.attrs["real_multiplier"], np.float64), (channels,))
    # a profile may requantize fully connected layers in float64, ties away (TFLite's reference
    # kernel): execute's FcRequant rule, read by value so this module needs no newer contract
    fc = getattr(getattr(arith, "fc_requantize", None), "value", "same")
    if mac.op is OpKind.FULLY_CONNECTED and fc == "float64_half_away":
        return Requant("float64", mult.copy(), np.zeros(0, np.int64), np.zeros(0, np.int64),
                       RoundingMode.HALF_AWAY)
    prepared = fp.prepare_scale(mult, arith.requant)
    if arith.requant.mode is RequantMode.FLOAT_SCALE:
        return Requant("float32", prepared.multiplier.astype(np.float32), np.zeros(0, np.int64),
                       np.zeros(0, np.int64), arith.requant.rounding)
    return Requant("integer", np.zeros(0), prepared.multiplier.astype(np.int64),
                   prepared.shift.astype(np.int64), arith.requant.rounding)


# ---------------------------------------------------------------------- the two interpreters

class NumpyOps:
    """ONNX operator semantics on NumPy arrays (values are arrays)."""

    def const(self, base: str, value, elem: int):
        return np.asarray(value, NUMPY[elem])

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def mul(self, a, b):
        return a * b

    def div(self, a, b):  # integers: truncation toward zero, as onnxruntime
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) != (b < 0), -q, q)

    def mod(self, a, b):  # fmod = 0: the sign of the divisor
        return np.mod(a, b)

    def abs(self, a):
        return np.abs(a)

    def sign(self, a):
        return np.sign(a)

    def neg(self, a):
        return -a

    def floor(self, a):
        return np.floor(a)

    def less(self, a, b):
        return a < b

    def where(self, c, a, b):
        return np.where(c, a, b)

    def maximum(self, a, b):
        return np.maximum(a, b)

    def minimum(self, a, b):
        return np.minimum(a, b)

    def cast(self, a, elem: int, out: str | None = None):
        return np.asarray(a).astype(NUMPY[elem])

    def clip(self, a, lo, hi):
        return np.clip(a, lo, hi)

    def quantize(self, a, zp, elem: int, out: str | None = None):
        lo, hi = RANGES[elem]
        q = np.rint(a / np.float32(1)).astype(np.int64) + np.int64(zp)
        return np.clip(q, lo, hi).astype(NUMPY[elem])


class OnnxOps:
    """The same operators as ONNX nodes in ``g`` (values are names; every value has the layer's
    output shape, constants broadcast against it)."""

    def __init__(self, g: GraphWriter, base: str, shape, types: dict[str, int]):
        self.g, self.base, self.shape, self.types = g, base, tuple(shape), types

    def const(self, base: str, value, elem: int):
        name = self.g.initializer(f"{self.base}/{base}", np.asarray(value), elem)
        self.types[name] = elem
        return name

    def _node(self, op: str, ins, elem: int, out: str | None = None, **attrs) -> str:
        name = out or self.g.fresh(f"{self.base}/{op.lower()}")
        self.g.typed(name, elem, self.shape)
        self.types[name] = elem
        self.g.add(op, list(ins), name, name=f"{self.base}/{op}", **attrs)
        return name

    def _same(self, op: str, *ins) -> str:
        return self._node(op, ins, self.types[ins[0]])

    def add(self, a, b):
        return self._same("Add", a, b)

    def sub(self, a, b):
        return self._same("Sub", a, b)

    def mul(self, a, b):
        return self._same("Mul", a, b)

    def div(self, a, b):
        return self._same("Div", a, b)

    def mod(self, a, b):
        return self._same("Mod", a, b)

    def abs(self, a):
        return self._same("Abs", a)

    def sign(self, a):
        return self._same("Sign", a)

    def neg(self, a):
        return self._same("Neg", a)

    def floor(self, a):
        return self._same("Floor", a)

    def less(self, a, b):
        return self._node("Less", [a, b], BOOL)

    def where(self, c, a, b):
        return self._node("Where", [c, a, b], self.types[a])

    def maximum(self, a, b):
        return self._same("Max", a, b)

    def minimum(self, a, b):
        return self._same("Min", a, b)

    def cast(self, a, elem: int, out: str | None = None):
        return self._node("Cast", [a], elem, out, to=elem)

    def clip(self, a, lo, hi):
        elem = self.types[a]
        return self._node("Clip", [a, self.const("clip_min", lo, elem),
                                   self.const("clip_max", hi, elem)], elem)

    def quantize(self, a, zp, elem: int, out: str | None = None):
        return self._node("QuantizeLinear", [a, self.const("unit_scale", np.float32(1), FLOAT),
                                             self.const("zero_point", zp, elem)], elem, out)


# ---------------------------------------------------------------------- the forms

def requantize(ops, acc, r: Requant, window: tuple[np.ndarray, np.ndarray], z: int, lo: int,
               hi: int, out_elem: int, cshape: tuple[int, ...], out: str | None = None):
    """The Program's requantize of the int32 accumulator ``acc`` (module doc); per-channel
    constants are shaped ``cshape`` to broadcast along the channel axis."""
    def c(base, values, elem):
        arr = np.asarray(values)
        return ops.const(base, arr.reshape(cshape) if arr.size > 1 else arr.reshape(()), elem)

    t_lo, t_hi = RANGES[out_elem]
    if r.kind == "float32":
        v = ops.mul(ops.cast(acc, FLOAT), c("scale", r.scale, FLOAT))
        if lo > t_lo:
            v = ops.maximum(v, c("min", np.float32(lo - z), FLOAT))
        if hi < t_hi:
            v = ops.minimum(v, c("max", np.float32(hi - z), FLOAT))
        return ops.quantize(v, z, out_elem, out)
    if r.kind == "float64":
        v = ops.mul(ops.cast(acc, DOUBLE), c("scale", r.scale, DOUBLE))
        half = c("half", 0.5, DOUBLE)
        up = ops.floor(ops.add(v, half))
        down = ops.neg(ops.floor(ops.add(ops.neg(v), half)))
        q = ops.cast(ops.where(ops.less(v, c("zero", 0.0, DOUBLE)), down, up), INT64)
        offset = 0
    else:
        a = ops.minimum(ops.maximum(ops.cast(acc, INT64), c("window_lo", window[0], INT64)),
                        c("window_hi", window[1], INT64))
        q, offset = _integer_rounding(ops, a, r, window, c)
    q = ops.clip(ops.add(q, c("zero_point_offset", np.int64(z) - offset, INT64)), lo, hi)
    return ops.cast(q, out_elem, out)


def _integer_rounding(ops, a, r: Requant, window, c):
    """(rounded acc * M / 2**S as an int64 value, an offset still to subtract) per rounding."""
    m, s = r.multiplier, r.shift
    if r.rounding is RoundingMode.TFLITE:
        left, right = np.maximum(31 - s, 0), np.maximum(s - 31, 0)
        p = ops.mul(ops.mul(a, c("left_shift", np.left_shift(1, left), INT64)),
                    c("multiplier", m, INT64))
        negative = ops.cast(ops.less(p, c("zero", 0, INT64)), INT64)
        high = ops.div(ops.sub(ops.add(ops.abs(p), c("nudge", 1 << 30, INT64)), negative),
                       c("two_31", 1 << 31, INT64))
        srdhm = ops.mul(ops.sign(p), high)
        half = np.where(right > 0, np.left_shift(1, np.maximum(right - 1, 0)), 0)
        q = ops.div(ops.add(ops.abs(srdhm), c("half", half, INT64)),
                    c("divisor", np.left_shift(1, right), INT64))
        return ops.mul(ops.sign(srdhm), q), 0
    n = ops.mul(a, c("multiplier", m, INT64))
    d = np.left_shift(np.int64(1), s)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    if r.rounding is RoundingMode.HALF_AWAY:
        q = ops.div(ops.add(ops.abs(n), c("half", half, INT64)), c("divisor", d, INT64))
        return ops.mul(ops.sign(n), q), 0
    lowest = np.asarray(window[0], np.int64) * m           # the least n (M > 0)
    k = np.maximum(0, -(lowest // d))                       # ceil(-lowest / D) when negative
    k = k + (k & 1)                                         # even: q keeps floor(n / D)'s parity
    base = k * d
    if r.rounding is RoundingMode.FLOOR:
        return ops.div(ops.add(n, c("offset", base, INT64)), c("divisor", d, INT64)), k
    if r.rounding is RoundingMode.HALF_UP:
        return ops.div(ops.add(n, c("offset", base + half, INT64)), c("divisor", d, INT64)), k
    if r.rounding is RoundingMode.HALF_EVEN:
        shifted = ops.add(n, c("offset", base, INT64))
        odd = ops.mod(ops.div(shifted, c("divisor", d, INT64)), c("two", 2, INT64))
        tie = ops.mul(odd, c("rounds", (s > 0).astype(np.int64), INT64))
        nudge = np.where(s > 0, half - 1, 0)
        return ops.div(ops.add(ops.add(shifted, tie), c("nudge", nudge, INT64)),
                       c("divisor", d, INT64)), k
    raise ExportError(f"rounding {r.rounding.value!r} has no explicit ONNX form")


def check_int64_range(r: Requant, window, where: str) -> None:
    """The integer form's intermediates stay below 2**62 on the whole window, or an error."""
    if r.kind != "integer":
        return
    reach = np.maximum(np.abs(window[0]), np.abs(window[1])).astype(object)
    m = r.multiplier.astype(object)
    if r.rounding is RoundingMode.TFLITE:
        left = np.maximum(31 - r.shift, 0).astype(object)
        worst = max(int(v) for v in reach * (2 ** left) * m) + (1 << 31)
    else:
        d = (2 ** r.shift.astype(object))
        worst = max(int(v) for v in 2 * reach * m + 3 * d)
    if worst >= _SAFE:
        raise ExportError(f"{where}: its requantize needs int64 values up to {worst}, past "
                          f"2**62; no exact ONNX form")
