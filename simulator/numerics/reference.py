"""The reference: every op in NumPy int64, written to be read, not to be fast.

Each MAC op lays out, for every output, the products of its window in the declared reduction
order and hands them to ``fixed_point.accumulate``; every rounding and clamp goes through
``fixed_point``. The numba kernels (``kernels.py``) have the same signatures and must return
the same integers; tests/numerics proves it. Arrays in, int64 arrays out.
"""

from __future__ import annotations

import numpy as np

from simulator.contract import AccumulatorSpec, MacOrder, RequantMode, RoundingMode
from simulator.numerics import fixed_point as fp
from simulator.numerics.fixed_point import OverflowStats, PreparedScale


def _channel_zero_points(zero_point, channels: int) -> np.ndarray:
    zp = np.asarray(zero_point, dtype=np.int64).ravel()
    return np.broadcast_to(zp, (channels,)) if zp.size == 1 else zp


def conv_output_size(size: int, k: int, stride: int, pad_a: int, pad_b: int, dilation: int) -> int:
    return (size + pad_a + pad_b - dilation * (k - 1) - 1) // stride + 1


def conv2d(x, w, bias, x_zp, w_zp, strides, pads, dilations, groups,
           acc: AccumulatorSpec) -> tuple[np.ndarray, OverflowStats]:
    """acc[n, o, y, x] = bias[o] + sum over (c, ky, kx) of (x - x_zp) * (w - w_zp[o])."""
    x = np.asarray(x, dtype=np.int64) - np.int64(x_zp)
    w = np.asarray(w, dtype=np.int64)
    n, c, h, wd = x.shape
    oc, icg, kh, kw = w.shape
    wz = w - _channel_zero_points(w_zp, oc)[:, None, None, None]
    b = np.zeros(oc, np.int64) if bias is None else np.asarray(bias, dtype=np.int64)
    (sh, sw), (dh, dw) = strides, dilations
    oh = conv_output_size(h, kh, sh, pads[0], pads[2], dh)
    ow = conv_output_size(wd, kw, sw, pads[1], pads[3], dw)
    # zero after subtracting the zero point: padding contributes nothing, as on every chip
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    out = np.empty((n, oc, oh, ow), np.int64)
    stats = OverflowStats(0, 0, 1)
    per_group = oc // groups
    for bi in range(n):
        for o in range(oc):
            g = o // per_group
            chans = xp[bi, g * icg:(g + 1) * icg]
            patches = np.empty((icg, kh, kw, oh, ow), np.int64)
            for ky in range(kh):
                for kx in range(kw):
                    y0, x0 = ky * dh, kx * dw
                    patches[:, ky, kx] = chans[:, y0:y0 + sh * (oh - 1) + 1:sh,
                                               x0:x0 + sw * (ow - 1) + 1:sw]
            terms = patches * wz[o][:, :, :, None, None]
            if acc.mac_order is MacOrder.KH_KW_CIN:
                terms = terms.transpose(1, 2, 0, 3, 4)
            terms = terms.reshape(icg * kh * kw, oh * ow).T
            values, st = fp.accumulate(terms, np.full(oh * ow, b[o]), acc)
            out[bi, o] = values.reshape(oh, ow)
            stats = stats.merge(st)
    return out, stats


def fully_connected(x, w, bias, x_zp, w_zp, acc: AccumulatorSpec):
    """acc[n, m] = bias[m] + sum over k of (x[n, k] - x_zp) * (w[m, k] - w_zp[m])."""
    x = np.asarray(x, dtype=np.int64) - np.int64(x_zp)
    w = np.asarray(w, dtype=np.int64)
    m_out = w.shape[0]
    wz = w - _channel_zero_points(w_zp, m_out)[:, None]
    b = np.zeros(m_out, np.int64) if bias is None else np.asarray(bias, dtype=np.int64)
    out = np.empty((x.shape[0], m_out), np.int64)
    stats = OverflowStats(0, 0, 1)
    for m in range(m_out):
        values, st = fp.accumulate(x * wz[m], np.full(x.shape[0], b[m]), acc)
        out[:, m] = values
        stats = stats.merge(st)
    return out, stats


def matmul(a, b, a_zp, b_zp, acc: AccumulatorSpec):
    """acc[..., n, m] = sum over k of (a[..., n, k] - a_zp) * (b[..., k, m] - b_zp)."""
    a = np.asarray(a, dtype=np.int64) - np.int64(a_zp)
    b = np.asarray(b, dtype=np.int64) - np.int64(b_zp)
    b = np.broadcast_to(b, a.shape[:-2] + b.shape[-2:])
    batch = a.shape[:-2]
    a2 = a.reshape(-1, *a.shape[-2:])
    b2 = b.reshape(-1, *b.shape[-2:])
    out = np.empty((a2.shape[0], a2.shape[1], b2.shape[2]), np.int64)
    stats = OverflowStats(0, 0, 1)
    for i in range(a2.shape[0]):
        for m in range(b2.shape[2]):
            values, st = fp.accumulate(a2[i] * b2[i][:, m], np.zeros(a2.shape[1], np.int64), acc)
            out[i, :, m] = values
            stats = stats.merge(st)
    return out.reshape(*batch, a.shape[-2], b.shape[-1]), stats


def requantize(x, x_zp, prepared: PreparedScale, axis: int, y_zp: int, qmin: int, qmax: int):
    """y = clamp(round((x - x_zp) * scale) + y_zp, qmin, qmax), per channel along axis."""
    return fp.requantize(x, x_zp, prepared, y_zp, qmin, qmax, axis)


def _windows(x, kernel, strides, pads, fill):
    """All pooling windows as [..., oh, ow, kh*kw] with out-of-bounds taps set to ``fill``."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = kernel, strides
    oh = conv_output_size(h, kh, sh, pads[0], pads[2], 1)
    ow = conv_output_size(w, kw, sw, pads[1], pads[3], 1)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=fill)
    taps = [xp[:, :, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw]
            for ky in range(kh) for kx in range(kw)]
    return np.stack(taps, axis=-1)


def maxpool2d(x, kernel, strides, pads):
    """Max of the integers in each window; padding never wins."""
    x = np.asarray(x, dtype=np.int64)
    return _windows(x, kernel, strides, pads, np.iinfo(np.int64).min).max(axis=-1)


def avgpool2d(x, x_zp, kernel, strides, pads, count_include_pad: bool, rounding: RoundingMode):
    """Mean of (x - zp) over each window, divided with ``rounding``, plus zp.

    Padding taps are real zeros; they count in the divisor only with ``count_include_pad``.
    """
    x = np.asarray(x, dtype=np.int64) - np.int64(x_zp)
    sums = _windows(x, kernel, strides, pads, 0).sum(axis=-1)
    if count_include_pad:
        counts = np.int64(kernel[0] * kernel[1])
    else:
        counts = _windows(np.ones_like(x), kernel, strides, pads, 0).sum(axis=-1)
    return fp.round_div(sums, counts, rounding) + np.int64(x_zp)


def global_avgpool2d(x, x_zp, rounding: RoundingMode):
    x = np.asarray(x, dtype=np.int64)
    h, w = x.shape[2], x.shape[3]
    return avgpool2d(x, x_zp, (h, w), (1, 1), (0, 0, 0, 0), False, rounding)


def add(a, a_zp, b, b_zp, multiplier_a, multiplier_b, shift, mode: RequantMode,
        rounding: RoundingMode, y_zp, qmin, qmax):
    """y = clamp(round((a - za) * ra + (b - zb) * rb) + zy): one rounding of the exact sum.

    Integer mode: ``ra = Ma / 2**S`` and ``rb = Mb / 2**S`` share the shift; float mode: float32
    ratios, ties to even. ``tflite`` rounding divides half away from zero here.
    """
    da = np.asarray(a, dtype=np.int64) - np.int64(a_zp)
    db = np.asarray(b, dtype=np.int64) - np.int64(b_zp)
    if mode is RequantMode.FLOAT_SCALE:
        total = da.astype(np.float32) * np.float32(multiplier_a) + \
            db.astype(np.float32) * np.float32(multiplier_b)
        scaled = np.rint(total).astype(np.int64)
    else:
        single = RoundingMode.HALF_AWAY if rounding is RoundingMode.TFLITE else rounding
        scaled = fp.round_shift(da * np.int64(multiplier_a) + db * np.int64(multiplier_b),
                                shift, single)
    return np.clip(scaled + np.int64(y_zp), qmin, qmax)


def mul(a, a_zp, b, b_zp, prepared: PreparedScale, y_zp, qmin, qmax):
    """y = clamp(round((a - za) * (b - zb) * scale) + zy): the exact integer product rescaled
    once, b broadcast to a (TFLite's MUL: MultiplyByQuantizedMultiplier of the product)."""
    da = np.asarray(a, dtype=np.int64) - np.int64(a_zp)
    db = np.asarray(b, dtype=np.int64) - np.int64(b_zp)
    return fp.requantize(da * db, 0, prepared, y_zp, qmin, qmax)


def mean(x, x_zp, axes, keepdims: bool, prepared: PreparedScale, y_zp, qmin, qmax):
    """sum(x - x_zp) over ``axes`` rescaled once by ``prepared`` (the scale ratio over the
    count: ``fixed_point.prepare_mean``, or TFLite's ``prepare_tflite_mean``), plus y_zp."""
    sums = (np.asarray(x, dtype=np.int64) - np.int64(x_zp)).sum(axis=tuple(axes),
                                                               keepdims=keepdims)
    return fp.requantize(sums, 0, prepared, y_zp, qmin, qmax)


def global_mean(x, x_zp, prepared: PreparedScale, y_zp, qmin, qmax):
    """TFLite's int8 MEAN over height and width (``mean`` over axes 2 and 3)."""
    return mean(x, x_zp, (2, 3), True, prepared, y_zp, qmin, qmax)


def add_per_operand(a, a_zp, b, b_zp, prepared, rounding: RoundingMode, y_zp, qmin, qmax,
                    left_shift: int = fp.ADD_LEFT_SHIFT):
    """TFLite's ADD: each operand shifted left ``left_shift`` bits and rescaled and rounded on
    its own, the sum rescaled again (``fixed_point.add_per_operand``); ``prepared`` is
    ``prepare_add_per_operand``'s six ints."""
    da = np.asarray(a, dtype=np.int64) - np.int64(a_zp)
    db = np.asarray(b, dtype=np.int64) - np.int64(b_zp)
    return np.clip(fp.add_per_operand(da, db, prepared, rounding, left_shift) + np.int64(y_zp),
                   qmin, qmax)


def requantize_float64(x, x_zp, scales, axis: int, y_zp: int, qmin: int, qmax: int):
    """y = clamp(round((x - x_zp) * scale) + y_zp) with float64 scales, ties away from zero."""
    return fp.requantize_float64(x, x_zp, scales, y_zp, qmin, qmax, axis)


def gather(table, indices):
    """The table's rows at ``indices`` (any shape): out[..., :] = table[indices[...]]."""
    t = np.asarray(table, dtype=np.int64)
    i = np.asarray(indices, dtype=np.int64)
    if i.size and (i.min() < 0 or i.max() >= t.shape[0]):
        raise IndexError(f"gather: an index is outside the table's {t.shape[0]} rows")
    return t[i]


def minimum(a, b):
    """The smaller integer of each pair, b broadcast to a (one grid: no rescale)."""
    return np.minimum(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))


def clamp(x, lo: int, hi: int):
    return np.clip(np.asarray(x, dtype=np.int64), lo, hi)


def lookup_table(x, table, offset: int):
    """y = table[x - offset]; offset is the input type's qmin."""
    return np.asarray(table, dtype=np.int64)[np.asarray(x, dtype=np.int64) - offset]


def lookup_interpolated(x, table):
    """TOSA's TABLE on a signed 16-bit x: ``fixed_point.lookup_interpolated``."""
    return fp.lookup_interpolated(x, table)


def softmax(x, axis: int, exp_table, out_shift: int, y_zp: int, qmin: int, qmax: int,
            rounding: RoundingMode, mask=None):
    """Integer softmax along ``axis``, over the valid positions only.

    ``mask`` (optional, any integer array whose shape broadcasts to x's under NumPy rules, e.g.
    x [N, heads, T, T] with mask [N, 1, 1, T]) marks valid positions by a nonzero; without it
    every position is valid. Along ``axis``:

        m     = max of x over the valid positions
        e     = exp_table[m - x] at valid positions, 0 at masked ones
        total = max(sum(e), 1)
        y     = clip(round_div(e << out_shift, total, rounding) + y_zp, qmin, qmax)

    so a masked position outputs y_zp (clipped), and so does every position of a row with no
    valid position. ``exp_table[d]`` holds exp(-d * input_scale) as an unsigned fixed-point
    integer, built by whoever makes the Program; the division is exact-rational with the
    profile's rounding.
    """
    x = np.asarray(x, dtype=np.int64)
    table = np.asarray(exp_table, dtype=np.int64)
    if mask is None:
        valid = np.ones(x.shape, bool)
    else:
        valid = np.broadcast_to(np.asarray(mask) != 0, x.shape)
    # masked positions stand in as a value no larger than any of x's, so the maximum is the
    # valid positions'; a row with none valid gets some m that no position then uses
    m = np.where(valid, x, x.min(initial=0)).max(axis=axis, keepdims=True)
    e = np.where(valid, table[np.where(valid, m - x, 0)], 0)
    total = np.maximum(e.sum(axis=axis, keepdims=True), 1)
    return np.clip(fp.round_div(e << np.int64(out_shift), total, rounding) + np.int64(y_zp),
                   qmin, qmax)


def reshape(x, shape):
    return np.asarray(x).reshape(shape)


def transpose(x, perm):
    return np.ascontiguousarray(np.asarray(x).transpose(perm))


def concat(xs, axis: int):
    return np.concatenate([np.asarray(v, dtype=np.int64) for v in xs], axis=axis)
