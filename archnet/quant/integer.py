"""The arithmetic contract in torch: archnet's own integer forward, checked against the simulator.

MAC sums are computed exactly (convolution of integers in float32 where every partial sum stays
below 2**24, else float64, guarded by a 2**53 bound) and
then put through the chip's accumulator: wrap or saturate at the end, or saturate after every
MAC or K-tile in the declared order (an unfolded, lane-parallel loop over K). Requantization
calls ``simulator.numerics.fixed_point``, the one definition of multipliers and rounding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from simulator.contract import AccumulatorSpec, MacOrder, Overflow, SaturationPoint
from simulator.numerics import fixed_point as fp

EXACT_FLOAT64 = 2 ** 53
EXACT_FLOAT32 = 2 ** 24     # every integer partial sum below it is exact in float32


def _check_exact(x: torch.Tensor, w: torch.Tensor, k: int, bias: torch.Tensor | None
                 ) -> tuple[int, int]:
    """The largest |sum of products| ``k``-long reductions of x and w can reach, without and
    with the bias; raises unless the sum with the bias is exact in float64."""
    products = k * int(x.abs().max()) * int(w.abs().max()) if x.numel() and w.numel() else 0
    bound = products + (int(bias.abs().max()) if bias is not None and bias.numel() else 0)
    if bound >= EXACT_FLOAT64:
        raise OverflowError(f"MAC sums up to {bound} are not exact in float64")
    return products, bound


def _exact_product(a: torch.Tensor, b: torch.Tensor, bound: int) -> torch.Tensor:
    """``a @ b`` of integer tensors whose partial sums stay within ``bound``, exactly, as int64:
    in float32 below 2**24 (low-bit operands: twice as fast), else in float64."""
    dtype = torch.float32 if bound < EXACT_FLOAT32 else torch.float64
    return torch.matmul(a.to(dtype), b.to(dtype)).round().to(torch.int64)


def _wrap(v: torch.Tensor, bits: int) -> torch.Tensor:
    offset = 1 << (bits - 1)
    return torch.remainder(v + offset, 1 << bits) - offset


def _finish(exact: torch.Tensor, acc: AccumulatorSpec, reach: int | None = None) -> torch.Tensor:
    """``exact`` through the accumulator; ``reach`` bounds |exact| (nothing to wrap or clamp
    when the accumulator holds it)."""
    if reach is not None and -reach >= acc.lo and reach <= acc.hi:
        return exact
    if acc.overflow is Overflow.WRAP:
        return _wrap(exact, acc.bits)
    return exact.clamp(acc.lo, acc.hi)


def _sequential(cols: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, acc: AccumulatorSpec):
    """cols [N, K, P], w [O, K] in declared order -> acc [N, O, P], saturating per MAC or tile."""
    step = 1 if acc.saturation_point is SaturationPoint.PER_MAC else acc.tile_k
    total = bias.view(1, -1, 1).expand(cols.shape[0], -1, cols.shape[2]).clamp(acc.lo, acc.hi)
    for start in range(0, cols.shape[1], step):
        partial = torch.einsum("ok,nkp->nop", w[:, start:start + step], cols[:, start:start + step])
        total = (total + partial).clamp(acc.lo, acc.hi)
    return total


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv2d(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride, padding,
           acc: AccumulatorSpec, dilation=1, groups: int = 1) -> torch.Tensor:
    """acc = bias + sum x * w under the chip's accumulator; x, w int64 (zero points 0).
    ``stride``, ``padding``, ``dilation``: an int or an (h, w) pair; ``groups`` as torch's."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    out_ch, in_per_group, kh, kw = w.shape
    b = bias if bias is not None else torch.zeros(out_ch, dtype=torch.int64)
    bound, reach = _check_exact(x, w, in_per_group * kh * kw, b)
    if acc.order_independent:   # as _exact_product: float32 where every partial sum is exact
        dtype = torch.float32 if bound < EXACT_FLOAT32 else torch.float64
        exact = F.conv2d(x.to(dtype), w.to(dtype), None, stride=stride, padding=padding,
                         dilation=dilation, groups=groups)
        return _finish(exact.round().to(torch.int64) + b.view(1, -1, 1, 1), acc, reach)
    n, _, h, wd = x.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    per_out = out_ch // groups
    outs = []
    for g in range(groups):     # each group reduces its own input channels, in declared order
        xg = x[:, g * in_per_group:(g + 1) * in_per_group]
        wg = w[g * per_out:(g + 1) * per_out]
        cols = F.unfold(xg.to(torch.float64), (kh, kw), dilation=dilation, padding=padding,
                        stride=stride).round().to(torch.int64)
        weights = wg.reshape(per_out, -1)
        if acc.mac_order is MacOrder.KH_KW_CIN:  # unfold is channel-major; taps outermost
            cols = cols.view(n, in_per_group, kh * kw, -1).transpose(1, 2).reshape(
                n, in_per_group * kh * kw, -1)
            weights = wg.permute(0, 2, 3, 1).reshape(per_out, -1)
        outs.append(_sequential(cols, weights, b[g * per_out:(g + 1) * per_out], acc))
    return torch.cat(outs, dim=1).view(n, out_ch, oh, ow)


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, acc: AccumulatorSpec) -> torch.Tensor:
    """acc[n, o] = bias[o] + sum_k x[n, k] * w[o, k] under the chip's accumulator."""
    b = bias if bias is not None else torch.zeros(w.shape[0], dtype=torch.int64)
    bound, reach = _check_exact(x, w, w.shape[1], b)
    if acc.order_independent:
        return _finish(_exact_product(x, w.T, bound) + b, acc, reach)
    return _sequential(x.unsqueeze(2), w, b, acc).squeeze(2)


def requantize(acc: torch.Tensor, real_multiplier, requant_spec, qmin: int, qmax: int) -> torch.Tensor:
    """The contract's requantize (per output channel along axis 1), via fixed_point."""
    prepared = fp.prepare_scale(real_multiplier, requant_spec)
    out = fp.requantize(acc.numpy(), 0, prepared, 0, qmin, qmax, axis=1)
    return torch.from_numpy(np.ascontiguousarray(out)).to(torch.int64)


def requant_multiplier(in_scale: float, weight_scales: torch.Tensor, out_scale: float,
                       float32: bool = False) -> list[float]:
    """Real multipliers s_in * s_w[c] / s_out in float64: export and emulation share these bits.

    ``float32``: as a chip with a float32 requantization scale (ONNX QLinearConv on
    onnxruntime) derives it from the float32 scales it is given, ``(f32(s_in) * f32(s_w[c])) /
    f32(s_out)`` with each step rounded to float32; the ONNX export then writes these scales
    and onnxruntime's multiplier is the Program's bit for bit."""
    if float32:
        xs, ys = np.float32(in_scale), np.float32(out_scale)
        ws = weight_scales.detach().cpu().numpy().astype(np.float32).ravel()
        return [float(v) for v in (xs * ws) / ys]
    return [float(in_scale) * float(s) / float(out_scale) for s in weight_scales.tolist()]


def matmul(a: torch.Tensor, b: torch.Tensor, acc: AccumulatorSpec) -> torch.Tensor:
    """acc[..., n, m] = sum_k a[..., n, k] * b[..., k, m] of two activations (zero points 0)."""
    k = a.shape[-1]
    bound, reach = _check_exact(a, b, k, None)
    if acc.order_independent:
        return _finish(_exact_product(a, b, bound), acc, reach)
    # order-dependent saturation: the chip reduces k in order, one output at a time
    lead = a.shape[:-2]
    a2 = a.reshape(-1, a.shape[-2], k)
    b2 = b.expand(*lead, *b.shape[-2:]).reshape(-1, k, b.shape[-1])
    out = torch.stack([_sequential(a2[i].unsqueeze(2), b2[i].T, torch.zeros(b2.shape[2], dtype=torch.int64),
                                   acc).squeeze(2) for i in range(a2.shape[0])])
    return out.reshape(*lead, a.shape[-2], b.shape[-1])
