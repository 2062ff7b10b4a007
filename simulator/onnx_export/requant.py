"""Requantization that onnxruntime computes exactly as the Program does, for every accumulator.

The Program's requantize, under the chip profile the export is for, is a function F of the
accumulator per output channel: ``execute``'s own rule (``run_node``), e.g. float32 scale and
ties to even under ``onnx-qlinear``, integer multiplier M and shift S with the profile's
rounding elsewhere. An ONNX QLinearConv / QGemm / QLinearMatMul computes instead
``G_m(acc) = saturate(rint(float32(acc) * m) + y_zp)`` with ``m = (float32(x_scale) *
float32(w_scale[c])) / float32(y_scale)``, each step float32, ties to even (onnxruntime's MLAS;
``onnx_map``). The export writes a QLinear op only where G_m = F is proven for every accumulator
the channel can produce, and otherwise an explicit form (``explicit.py``) proven the same way.

Reachable accumulators (``reachable``): ``acc = bias + sum_k (x_k - x_zp) * (w_k - w_zp)`` and
every ``x_k - x_zp`` lies in ``[qmin - x_zp, qmax - x_zp]`` of the input's type (padding gives
0, inside it), so acc lies in ``[bias + sum_k min_k, bias + sum_k max_k]`` whatever the input.
A range beyond int32 or the profile's accumulator is refused: ONNX accumulates in int32, and the
Program's accumulator would wrap or saturate where ONNX's does not.

The proof (``same_map``). F and G_m are monotone non-decreasing in acc: the conversion to
float32, multiplication by m > 0, rint and saturation are, and so is ``acc * M`` divided by 2**S
with any rounding, TFLite's two roundings included (its left shift must not wrap: refused where
it could). A monotone function onto the integers [lo, hi] is determined by where it first
reaches each level v in (lo, hi]: ``f(acc) = lo + #{v : first_f(v) <= acc}``. So F = G on
[A, B] iff every level is first reached at the same accumulator, found by bisection (33 steps
for each of the <= 255 levels, all channels at once): a proof over up to 2**32 accumulators in a
few thousand evaluations.

The scales (``fit_qlinear``). x_scale and y_scale are the Program's (other ops read those
tensors); each channel's weight scale is free within ``MAX_WEIGHT_ULPS`` of the Program's, and
onnxruntime's m is monotone in it, so bisection finds the weight scale giving a wanted m, or
the m values on either side of one it cannot give. Under ``onnx-qlinear`` the Program's float32
multiplier t is the wanted m (*exact*: the same multiplier bit for bit, the same function).
Where t is out of reach (the float32 division can step over it), the nearest m below and above
t are tried: the multipliers that give F on the whole range form an interval around t (for
acc >= 0, G_m(acc) grows with m, for acc < 0 it shrinks, so a multiplier between two good ones
is good), so if neither of those is proven no other m onnxruntime can give is (*equivalent*
when one is). Under an integer profile the m nearest ``M * 2**-S`` on either side are tried
(two each), and the weight scale may move as far as M rounds the real multiplier. A channel left
without a proven m sends its layer to the explicit form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from simulator.contract import ArithmeticSpec, RequantMode, RoundingMode
from simulator.errors import ExportError
from simulator.execute import run_node
from simulator.ir.ops import OpKind
from simulator.ir.program import Node, Program
from simulator.numerics import fixed_point as fp

MAX_WEIGHT_ULPS = 4         # how far a written weight scale may lie from the Program's, in its
                            # float32 ulps, beyond how far the chip's own multiplier rounds
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
_INF_BITS = 0x7F800000      # float32 +inf: above every finite positive float's bit pattern

Map = Callable[[np.ndarray], np.ndarray]  # accumulators [k, C] -> output integers [k, C]


# ---------------------------------------------------------------------- float32 bits

def bits_of(values) -> np.ndarray:
    """Bit patterns (int64) of positive float32 values: their order is the floats' order."""
    return np.asarray(values, np.float32).view(np.int32).astype(np.int64)


def floats_of(bits) -> np.ndarray:
    return np.asarray(bits, np.int64).astype(np.int32).view(np.float32)


def onnx_multiplier(x_scale, w_scale, y_scale) -> np.ndarray:
    """onnxruntime's requantization scale: float32 ``(x_scale * w_scale) / y_scale``."""
    return (np.float32(x_scale) * np.asarray(w_scale, np.float32)) / np.float32(y_scale)


def onnx_map(acc, m, z: int, lo: int, hi: int) -> np.ndarray:
    """What QLinearConv / QGemm / QLinearMatMul write for accumulators ``acc`` [k, C] and
    multipliers ``m`` [C]: ``rint(float32(acc) * m) + z`` saturated, the bounds [lo, hi]."""
    product = np.asarray(acc, np.int64).astype(np.float32) * np.asarray(m, np.float32)
    return np.clip(np.rint(product).astype(np.int64) + z, lo, hi)


def integer_identity(s_from, s_to, k_lo: int, k_hi: int) -> bool:
    """DequantizeLinear(scale s_from) then QuantizeLinear(scale s_to) returns every integer k in
    [k_lo, k_hi] (zero points aside) in float32, whether QuantizeLinear divides or multiplies by
    the reciprocal."""
    k = np.arange(k_lo, k_hi + 1, dtype=np.int64)
    real = k.astype(np.float32) * np.float32(s_from)
    to = np.float32(s_to)
    return all(np.array_equal(np.rint(v).astype(np.int64), k)
               for v in (real / to, real * (np.float32(1) / to)))


# ---------------------------------------------------------------------- one layer

@dataclass
class Layer:
    """One MAC + requantize as the export must reproduce it, per output channel c."""

    where: str
    acc_lo: np.ndarray           # int64 [C]: the reachable accumulators are [acc_lo, acc_hi]
    acc_hi: np.ndarray
    z: int                       # output zero point and clamp bounds
    lo: int
    hi: int
    program: Map                 # the Program's requantize under the profile
    seeds: np.ndarray            # float32 [C]: the multiplier the profile means
    float_scale: bool            # the profile's requantize is float32 rint(acc * seed)
    weight_reach: int            # ulps a written weight scale may move (``fit_qlinear``)
    _first: np.ndarray | None = field(default=None, repr=False)

    @property
    def channels(self) -> int:
        return self.acc_lo.size

    def first_reached(self, f: Map) -> np.ndarray:
        """[levels, C]: the first reachable accumulator where ``f`` is >= each level in
        (lo, hi] (acc_hi + 1 where never), by bisection for every level and channel at once."""
        levels = np.arange(self.lo + 1, self.hi + 1, dtype=np.int64)[:, None]
        a = np.broadcast_to(self.acc_lo, (levels.size, self.channels)).copy()
        b = np.broadcast_to(self.acc_hi + 1, a.shape).copy()
        while np.any(a < b):
            mid = (a + b) // 2
            reached = f(mid) >= levels  # mid <= acc_hi: a < b <= acc_hi + 1
            b = np.where(reached & (a < b), mid, b)
            a = np.where(~reached & (a < b), mid + 1, a)
        return a

    @property
    def first(self) -> np.ndarray:
        if self._first is None:
            self._first = self.first_reached(self.program)
        return self._first

    def same_map(self, f: Map) -> np.ndarray:
        """bool [C]: ``f`` (monotone, onto [lo, hi]) equals the Program's requantize on every
        reachable accumulator of the channel (see the module doc)."""
        return np.all(self.first_reached(f) == self.first, axis=0)

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel the reachable accumulators outside which the Program's requantize only
        saturates: below the first the output is lo, above the last hi."""
        first = self.first
        if first.shape[0] == 0:
            return self.acc_lo.copy(), self.acc_lo.copy()
        return (np.maximum(self.acc_lo, first[0] - 1), np.minimum(self.acc_hi, first[-1]))


def reachable(program: Program, mac: Node) -> tuple[np.ndarray, np.ndarray]:
    """[acc_lo, acc_hi] per output channel (see the module doc): from the weights and the input
    types alone."""
    x = program.tensors[mac.inputs[0]]
    w = program.tensors[mac.inputs[1]]
    dx = np.array([x.dtype.qmin - x.zp_scalar, x.dtype.qmax - x.zp_scalar], np.int64)
    if mac.op is OpKind.MATMUL:  # two activations: every product within the types' corners
        dw = np.array([w.dtype.qmin - w.zp_scalar, w.dtype.qmax - w.zp_scalar], np.int64)
        corners = np.outer(dx, dw)
        k = x.shape[-1]
        return np.array([k * corners.min()]), np.array([k * corners.max()])
    data = w.data.astype(np.int64)
    channels = data.shape[0]
    wz = np.broadcast_to(np.asarray(w.zero_point, np.int64).ravel(), (channels,))
    terms = (data - wz.reshape((-1,) + (1,) * (data.ndim - 1))).reshape(channels, -1)
    lo = np.minimum(terms * dx[0], terms * dx[1]).sum(axis=1)
    hi = np.maximum(terms * dx[0], terms * dx[1]).sum(axis=1)
    if len(mac.inputs) > 2:
        bias = program.tensors[mac.inputs[2]].data.astype(np.int64).ravel()
        lo, hi = lo + bias, hi + bias
    return lo, hi


def layer_of(program: Program, mac: Node, rq: Node, arith: ArithmeticSpec, where: str,
             lo: int, hi: int) -> Layer:
    """The Program's MAC + requantize as a ``Layer``, or a one-line ExportError naming it."""
    acc_t, out = program.tensors[mac.outputs[0]], program.tensors[rq.outputs[0]]
    mult = np.asarray(rq.attrs["real_multiplier"], np.float64)
    if not (np.all(np.isfinite(mult)) and np.all(mult > 0)):
        raise ExportError(f"{where}: real multiplier {mult.tolist()[:4]} must be finite and > 0")
    if acc_t.zp_scalar != 0:
        raise ExportError(f"{where}: accumulator {acc_t.name!r} has zero point "
                          f"{acc_t.zp_scalar}; ONNX accumulators have none")
    acc_lo, acc_hi = reachable(program, mac)
    spec = arith.accumulator
    if acc_lo.min() < max(INT32_MIN, spec.lo) or acc_hi.max() > min(INT32_MAX, spec.hi):
        raise ExportError(f"{where}: its accumulator can reach [{acc_lo.min()}, "
                          f"{acc_hi.max()}], beyond int32 or the profile's {spec.bits}-bit "
                          f"accumulator, where ONNX and the chip would differ")
    channels = max(acc_lo.size, mult.size)
    acc_lo, acc_hi = (np.broadcast_to(v, (channels,)).copy() for v in (acc_lo, acc_hi))
    ndim = len(out.shape)

    def program_map(acc: np.ndarray) -> np.ndarray:
        shaped = acc.reshape(acc.shape + (1,) * max(ndim - 2, 0)) if ndim >= 2 else acc
        got = run_node(rq, program, [shaped], arith, "reference")[0]
        return got.reshape(acc.shape)

    requant = arith.requant
    prepared = fp.prepare_scale(mult, requant)
    if requant.mode is RequantMode.FLOAT_SCALE:
        seeds = prepared.multiplier.astype(np.float32)
    else:
        if requant.rounding is RoundingMode.TFLITE:
            left = np.maximum(31 - prepared.shift, 0)
            widest = np.maximum(np.abs(acc_lo), np.abs(acc_hi))
            if (widest << np.broadcast_to(left, (channels,))).max() > INT32_MAX:
                raise ExportError(f"{where}: TFLite's left shift of its accumulator by "
                                  f"{int(left.max())} bits can wrap int32, where the "
                                  f"requantize stops being monotone; ONNX cannot follow it")
        seeds = (prepared.multiplier * np.exp2(-prepared.shift.astype(np.float64))
                 ).astype(np.float32)
    # M of b bits is the real multiplier within 2**-(b - 1) (relative), 2**(25 - b) float32
    # ulps: the weight scale may move that far to make onnxruntime's multiplier the chip's
    float_scale = requant.mode is RequantMode.FLOAT_SCALE
    reach = MAX_WEIGHT_ULPS + (0 if float_scale else 1 << max(25 - requant.multiplier_bits, 0))
    return Layer(where, acc_lo, acc_hi, int(out.zp_scalar), lo, hi, program_map,
                 np.broadcast_to(seeds, (channels,)).copy(), float_scale, reach)


# ---------------------------------------------------------------------- QLinear scales

def _first_weight_bits(xs, ys, targets) -> np.ndarray:
    """Per target multiplier the smallest positive float32 weight scale (as bits) whose onnx
    multiplier is >= it; _INF_BITS where none."""
    targets = np.asarray(targets, np.float32)
    a = np.ones(targets.shape, np.int64)
    b = np.full(targets.shape, _INF_BITS, np.int64)
    while np.any(a < b):
        mid = (a + b) // 2
        reached = onnx_multiplier(xs, floats_of(mid), ys) >= targets
        b = np.where(reached & (a < b), mid, b)
        a = np.where(~reached & (a < b), mid + 1, a)
    return a


def _weight_bits_for(xs, ys, m, ws_bits, reach: int = MAX_WEIGHT_ULPS) -> np.ndarray:
    """The weight scale (bits) nearest the Program's whose onnx multiplier is exactly ``m``
    (per channel; -1 where none is within ``reach`` ulps)."""
    m = np.asarray(m, np.float32)
    first = _first_weight_bits(xs, ys, m)
    past = _first_weight_bits(xs, ys, floats_of(bits_of(m) + 1))
    pick = np.clip(ws_bits, first, np.maximum(first, past - 1))
    ok = (pick < past) & (first < _INF_BITS) & (np.abs(pick - ws_bits) <= reach)
    ok &= onnx_multiplier(xs, floats_of(np.where(ok, pick, 1)), ys) == m
    return np.where(ok, pick, -1)


@dataclass
class QLinearFit:
    """Weight scales under which a QLinear op gives the Program's integers on every reachable
    accumulator. Under a float32-scale profile the channels not in ``equivalent`` have the
    Program's multiplier bit for bit; under an integer profile every channel is proven equal in
    its integers (a float32 multiplier is never the same thing as M and S)."""

    w_scale: np.ndarray               # float32 [C] (or [1])
    equivalent: list[int]             # proven equal in their integers, multiplier not equal
    weight_ulps: int                  # largest move of a weight scale

    def note(self, node: str) -> dict | None:
        if not (self.equivalent or self.weight_ulps):
            return None
        return {"node": node, "form": "qlinear", "weight_scale_max_ulps": self.weight_ulps,
                "channels_equal_in_integers_only": self.equivalent}


def _candidates(xs, ys, seeds) -> list[np.ndarray]:
    """The multipliers onnxruntime can give nearest each seed, nearest first: the least >= it
    (the seed itself where it can), the greatest below it, then the next ones out."""
    def at(bits):
        return onnx_multiplier(xs, floats_of(np.clip(bits, 1, _INF_BITS - 1)), ys)

    up = _first_weight_bits(xs, ys, seeds)
    up1, down1 = at(up), at(up - 1)
    up2 = at(_first_weight_bits(xs, ys, floats_of(bits_of(up1) + 1)))
    down2 = at(_first_weight_bits(xs, ys, down1) - 1)
    return [up1, down1, up2, down2]


def fit_qlinear(layer: Layer, x_scale, w_scale, y_scale, *, free_weights: bool = True
                ) -> tuple[QLinearFit | None, list[int]]:
    """(scales, []) for a QLinear op proven equal to the Program's requantize on every channel,
    else (None, the channels without a proven multiplier). ``free_weights`` False: the weight
    scale is an activation's (QLinearMatMul), written as it is."""
    n = layer.channels
    xs, ys = np.float32(x_scale), np.float32(y_scale)
    ws_bits = np.broadcast_to(bits_of(np.asarray(w_scale, np.float32).ravel()), (n,)).copy()
    if free_weights:
        candidates = _candidates(xs, ys, layer.seeds)
    else:
        candidates = [np.broadcast_to(onnx_multiplier(xs, floats_of(ws_bits), ys), (n,))]
    chosen = np.full(n, -1, np.int64)
    exact = np.zeros(n, bool)
    for m in candidates:
        todo = chosen < 0
        if not todo.any():
            break
        bits = _weight_bits_for(xs, ys, m, ws_bits, layer.weight_reach) if free_weights \
            else ws_bits
        usable = todo & (bits >= 0)
        if not usable.any():
            continue
        take = usable & layer.same_map(lambda acc, m=m: onnx_map(acc, m, layer.z, layer.lo,
                                                                 layer.hi))
        chosen[take] = bits[take]
        exact[take] = layer.float_scale & (m[take] == layer.seeds[take])
    missing = [int(c) for c in np.nonzero(chosen < 0)[0]]
    if missing:
        return None, missing
    scales = floats_of(chosen)
    moved = int(np.abs(chosen - ws_bits).max()) if n else 0
    if np.asarray(w_scale).size == 1 and np.all(scales == scales[0]):
        scales = scales[:1]
    equivalent = [int(c) for c in np.nonzero(~exact)[0]] if layer.float_scale else []
    return QLinearFit(scales, equivalent, moved), []


def matching_weight_scales(x_scale, w_scale, y_scale, multipliers) -> np.ndarray:
    """Float32 weight scales, each within MAX_WEIGHT_ULPS of the Program's, whose onnx
    multiplier is float32(multiplier) where one is (the Program's scale elsewhere): for forms
    that compute in float and promise no exactness (``qdq``)."""
    targets = np.asarray(multipliers, np.float32).ravel()
    ws = np.asarray(w_scale, np.float32).ravel()
    n = max(targets.size, ws.size)
    targets, ws_bits = np.broadcast_to(targets, (n,)), np.broadcast_to(bits_of(ws), (n,))
    found = _weight_bits_for(np.float32(x_scale), np.float32(y_scale), targets, ws_bits)
    scales = floats_of(np.where(found >= 0, found, ws_bits))
    return scales[:1] if ws.size == 1 and np.all(scales == scales[0]) else scales
