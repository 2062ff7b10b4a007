"""ONNX scales that make onnxruntime requantize exactly as the Program's ``requantize`` does.

The Program gives each requantize its real multiplier per channel; the ``onnx-qlinear`` arithmetic
multiplies the int32 accumulator (as float32) by ``float32(multiplier)`` and rounds half to
even. An ONNX QLinearConv / QGemm carries no multiplier: onnxruntime computes it in float32 as
``x_scale * w_scale[c] / y_scale`` (left to right, each step rounded). A Program whose multipliers
were computed otherwise (e.g. in float64 from float64 scales, as the archnet student does) differs
from that formula by an ulp in some channels, and an ulp can move an output integer.

So the export chooses the float32 scales it writes:

1. the weight scale of each channel may move by up to ``WEIGHT_REACH`` ulps (the weight scale
   enters onnxruntime's arithmetic only through this product) so that the formula gives the
   Program's float32 multiplier bit for bit;
2. where no such weight scale exists (division can step over a float32 value), a multiplier an
   ulp or two away is accepted only if it gives the same output integer for *every*
   accumulator value: both round ``float32(acc) * m`` and saturate, monotonically, so checking
   every accumulator between the two saturation points proves it (``same_integers``);
3. where a channel still fails, the op's own output scale ``y_scale`` is moved by up to
   ``Y_SCALE_REACH`` ulps, the weight scales with it, and the output goes through
   DequantizeLinear -> QuantizeLinear back to the Program's scale, a pair that returns every
   integer unchanged (checked for each one, ``integer_identity``); every channel is solved
   again for that ``y_scale``.
4. a node where no tried scales solve every channel keeps the Program's ``y_scale``, and each
   unsolved channel takes the multiplier that changes the fewest accumulators (typically 1 to
   3 of the ~10**5 accumulators that do not saturate): onnxruntime then equals the simulator
   on every input except those whose accumulator hits one of these values.

Everything adjusted is recorded in the ONNX model's metadata (``archnet.requant_adjustments``:
per node, the largest weight-scale move in ulps, the moved ``y_scale``, the channels equal in
their integers only, and the channels not equal with their count of differing accumulators).
A Program whose multipliers are ``float32(x_scale) * float32(w_scale) / float32(y_scale)``
computed in float32 (as ONNX computes them) needs none of this and is exact channel for channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.errors import ExportError

WEIGHT_REACH = 2            # ulps a weight scale may move around its target
Y_SCALE_REACH = 64          # ulps the op's own y_scale may move (the weight scales follow it)
# the farthest a written weight scale can lie from the Program's, in its own ulps: k ulps of
# y_scale are a relative move of k * 2**-23 / m_y (m_y its mantissa, in [1, 2)), which is
# k * m_w / m_y < 2k ulps of a weight scale of mantissa m_w; rounding the scaled weight scale to
# float32 adds half an ulp, the nudge WEIGHT_REACH more
MAX_WEIGHT_ULPS = 2 * Y_SCALE_REACH + WEIGHT_REACH + 1
MAX_WINDOW = 1 << 24        # accumulators checked for one multiplier pair (beyond: not tried)
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


@dataclass
class RequantFit:
    w_scale: np.ndarray          # float32, one per channel (or one)
    y_scale: np.float32          # the ONNX op's own output scale
    exact: int = 0               # channels whose multiplier onnxruntime reproduces bit for bit
    equivalent: list[int] = field(default_factory=list)  # same integers for every accumulator
    unproven: dict[int, int] = field(default_factory=dict)  # channel -> accumulators that differ
    weight_ulps: int = 0         # largest weight scale move
    y_scale_moved: bool = False

    def note(self, node: str) -> dict | None:
        if not (self.equivalent or self.unproven or self.weight_ulps or self.y_scale_moved):
            return None
        return {"node": node, "weight_scale_max_ulps": self.weight_ulps,
                "y_scale": float(self.y_scale) if self.y_scale_moved else None,
                "channels_equal_in_integers_only": self.equivalent,
                "channels_not_equal": {str(c): n for c, n in sorted(self.unproven.items())}}

    def rank(self) -> tuple:
        return (len(self.unproven), sum(self.unproven.values()), self.weight_ulps)


def onnx_multiplier(x_scale, w_scale, y_scale) -> np.ndarray:
    """onnxruntime's requantization scale: float32 ``x_scale * w_scale / y_scale``."""
    xs = np.float32(x_scale)
    return (xs * np.asarray(w_scale, np.float32)) / np.float32(y_scale)


def differing_accumulators(m_a, m_b, zp: int, lo: int, hi: int, stop: int | None = None) -> int:
    """How many int32 accumulators ``clip(rint(float32(acc) * m) + zp, lo, hi)`` maps to
    different integers for m_a and m_b (counting stops past ``stop``; ``MAX_WINDOW + 1`` when
    too many to check). Both maps are monotone and saturate, so only accumulators between the
    saturation points of the smaller multiplier can differ."""
    m_a, m_b = np.float32(m_a), np.float32(m_b)
    if m_a == m_b:
        return 0
    m = float(min(m_a, m_b))
    if not m > 0:
        return MAX_WINDOW + 1
    a0 = max(INT32_MIN, int(np.floor((lo - zp - 1) / m)) - 2)
    a1 = min(INT32_MAX, int(np.ceil((hi - zp + 1) / m)) + 2)
    if a1 - a0 > MAX_WINDOW:
        return MAX_WINDOW + 1
    count = 0
    for start in range(a0, a1 + 1, 1 << 20):
        f = np.arange(start, min(a1, start + (1 << 20) - 1) + 1, dtype=np.int64).astype(np.float32)
        ya = np.clip(np.rint(f * m_a) + zp, lo, hi)
        yb = np.clip(np.rint(f * m_b) + zp, lo, hi)
        count += int(np.count_nonzero(ya != yb))
        if stop is not None and count > stop:
            break
    return count


def same_integers(m_a, m_b, zp: int, lo: int, hi: int) -> bool:
    """True when both multipliers give the same integer for every int32 accumulator."""
    return differing_accumulators(m_a, m_b, zp, lo, hi, stop=0) == 0


def integer_identity(s_from, s_to, k_lo: int, k_hi: int) -> bool:
    """DequantizeLinear(scale s_from) then QuantizeLinear(scale s_to) returns every integer k in
    [k_lo, k_hi] (zero points aside) in float32, whether QuantizeLinear divides or multiplies by
    the reciprocal."""
    k = np.arange(k_lo, k_hi + 1, dtype=np.int64)
    real = k.astype(np.float32) * np.float32(s_from)
    to = np.float32(s_to)
    return all(np.array_equal(np.rint(v).astype(np.int64), k)
               for v in (real / to, real * (np.float32(1) / to)))


def _candidates(w, nudge: bool) -> np.ndarray:
    if not nudge:
        return np.asarray([w], np.float32)
    offsets = np.array(sorted(range(-WEIGHT_REACH, WEIGHT_REACH + 1), key=abs), np.int32)
    cands = (np.asarray([w], np.float32).view(np.int32) + offsets).view(np.float32)
    return cands[np.isfinite(cands) & (cands > 0)]


def _channel(xs, w, ys1, target, zp, lo, hi, nudge: bool, settle: bool):
    """(weight scale, kind, differing accumulators) for one channel at output scale ys1: kind
    'exact', 'equivalent', or (when ``settle``) 'unproven' with the fewest differences; else
    None."""
    cands = _candidates(w, nudge)
    q = onnx_multiplier(xs, cands, ys1)
    hit = np.nonzero(q == target)[0]
    if len(hit):
        return cands[hit[0]], "exact", 0
    order = np.argsort(np.abs(q.astype(np.float64) - float(target)), kind="stable")
    best, seen = None, set()
    for i in order:
        if float(q[i]) in seen or len(seen) >= 3:
            continue
        seen.add(float(q[i]))
        n = differing_accumulators(q[i], target, zp, lo, hi,
                                   stop=None if settle else 0)
        if n == 0:
            return cands[i], "equivalent", 0
        if best is None or n < best[2]:
            best = (cands[i], "unproven", n)
    return best if settle else None


def _fit_at(xs, ws, ys1, targets, zp, lo, hi, nudge, order, settle, moved) -> RequantFit | None:
    n = len(targets)
    fit = RequantFit(np.empty(n, np.float32), ys1, y_scale_moved=moved)
    for c in list(order):
        got = _channel(xs, ws[c], ys1, targets[c], zp, lo, hi, nudge, settle)
        if got is None:
            order.remove(c)
            order.insert(0, c)  # the hardest channel first next time: fail fast
            return None
        fit.w_scale[c] = got[0]
        if got[1] == "exact":
            fit.exact += 1
        elif got[1] == "equivalent":
            fit.equivalent.append(c)
        else:
            fit.unproven[c] = got[2]
    fit.equivalent.sort()
    return fit


def fit_requant(x_scale, w_scale, y_scale, multipliers, zp: int, lo: int, hi: int, where: str,
                *, nudge_weights: bool = True, k_range: tuple[int, int] | None = None
                ) -> RequantFit:
    """Scales for one MAC + requantize (see the module doc). ``k_range``: the integers (output
    minus zero point) the op's own output can hold when a DequantizeLinear -> QuantizeLinear
    pair may follow it (then ``y_scale`` may move, the weight scales with it); None: it may not.

    Channels that no tried scales make exact or equivalent are settled on the multiplier that
    differs on the fewest accumulators, listed in ``unproven``."""
    targets = np.asarray(multipliers, np.float32).ravel()
    ws0 = np.asarray(w_scale, np.float32).ravel()
    if not (np.all(np.isfinite(targets)) and np.all(targets > 0)):
        raise ExportError(f"{where}: real multiplier {targets.tolist()[:4]} must be finite and > 0")
    n = max(targets.size, ws0.size)
    if targets.size not in (1, n) or ws0.size not in (1, n):
        raise ExportError(f"{where}: {targets.size} multipliers for {ws0.size} weight scales")
    targets, ws0 = np.broadcast_to(targets, (n,)), np.broadcast_to(ws0, (n,))
    xs, ys = np.float32(x_scale), np.float32(y_scale)
    base = np.asarray([ys], np.float32).view(np.int32)[0]
    offsets = [0]
    if k_range is not None and nudge_weights:
        for k in range(1, Y_SCALE_REACH + 1):
            offsets += [-k, k]
    order = list(range(n))
    fit = None
    for off in offsets:
        ys1 = np.asarray([base + off], np.int32).view(np.float32)[0]
        if off and not integer_identity(ys1, ys, *k_range):
            continue
        ws = (ws0.astype(np.float64) * (float(ys1) / float(ys))).astype(np.float32) if off else ws0
        fit = _fit_at(xs, ws, ys1, targets, zp, lo, hi, nudge_weights, order, False, bool(off))
        if fit is not None:
            break
    if fit is None:  # settle at the Program's own y_scale on the fewest differing accumulators
        fit = _fit_at(xs, ws0, ys, targets, zp, lo, hi, nudge_weights, list(range(n)), True,
                      False)
    moved = np.abs(fit.w_scale.view(np.int32).astype(np.int64) -
                   np.asarray(ws0, np.float32).view(np.int32).astype(np.int64))
    fit.weight_ulps = int(moved.max()) if n else 0
    if np.asarray(w_scale).size == 1 and n > 1 and np.all(fit.w_scale == fit.w_scale[0]):
        fit.w_scale = fit.w_scale[:1]
    return fit
