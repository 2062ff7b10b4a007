"""The fast backend: numba ports of ``reference.py``, equal to it bit for bit.

Same function names, same arguments (specs and ``PreparedScale`` included), same int64 results
and the same ``OverflowStats``; beyond the reference, ``PreparedConv`` (a conv's weights made
ready once) and ``conv2d_requantize`` (the two ops as one kernel, the reference's
composition). Each public function unpacks its Python-level arguments into plain integers and arrays and hands them to ``@njit(cache=True)`` inner functions; the rounding
and overflow rules are those of ``fixed_point`` (the spec), written again here in scalar form.
tests/numerics/test_kernels_vs_reference.py proves the equality over random cases.

How the MAC ops are made fast without changing a single bit:

* **Order-independent accumulators** (``wrap``, or ``saturate`` at ``final``) see only the exact
  sum, so any summation order is allowed; an exact GEMM computes it, and the bias is added, the
  sum wrapped or clamped and the statistics taken afterwards in int64, as
  ``fixed_point.accumulate`` does. Which GEMM is decided by a bound B >= |sum over any subset of
  the products| for every output (``max|x - zx| * max_o sum_k |w[o, k] - zw[o]|``):

  - ``vnni8`` / ``vnni16``: where the CPU has AVX512-VNNI and the operands fit bytes / int16,
    the products are summed in int32 lanes by VPDPBUSD / VPDPWSSD (wrapping, in any order).
    Integer addition mod 2**32 is associative, so the lanes hold the true sum mod 2**32, which
    *is* the true sum when its bound is below 2**31. VPDPBUSD multiplies unsigned by signed
    bytes: the input goes in as x + off (unsigned, whatever its zero point), the weights as
    w - zw, and (zx + off) * sum(w - zw), a constant per output channel, comes off with the
    bias, exactly. Conv reads a padded NHWC copy of the input directly (no im2col), and a
    requantize after it can run in its epilogue (``conv2d_requantize``), so the accumulators
    never go to memory.
  - ``depthwise``: one input plane per output channel, summed across channels in vector lanes
    (int32 or int64 where the bound allows, exact in any order), with the same epilogue.
  - ``float32`` / ``float64``: im2col, then BLAS; exact when B < 2**24 / 2**53, since every
    partial sum in whatever order and blocking BLAS uses (FMA or not) is then an integer that
    the float type represents.
  - ``int64``: a numba loop, always exact (it wraps where the reference's int64 does).
* **Order-dependent accumulators** (``saturate`` ``per_mac`` / ``per_tile``) follow the declared
  order for every output, but vectorise *across* outputs: for each k in order,
  ``acc[j] = clip(acc[j] + col[k, j] * w[k])`` over a contiguous lane of outputs j, beside the
  exact running sum and its extremes (for ``required_bits`` and the clipped-ever flag). Lanes
  are int32 when a bound proves nothing leaves int32, else int64; with AVX-512 the int32 lanes
  are 64 outputs per task held in 16 zmm registers for the whole reduction.

Threads: the heavy kernels are serial ``nogil`` functions over a range of independent tasks,
spread over a small pool of Python threads (``tasks.run_tasks``; ``tasks`` says why no numba
parallel region is used).

Arguments outside the domain the inner kernels are written for (a shift outside 0..62, a
per-channel multiplier that does not match the axis, negative pads, ...) are handed to the
reference, which is the definition, so the answer is still the reference's.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir as llir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from simulator.contract import (INTERPOLATED_TABLE_ENTRIES, INTERPOLATION_FRACTION_BITS,
                                AccumulatorSpec, MacOrder, Overflow, RequantMode, RoundingMode,
                                SaturationPoint)
from simulator.numerics import fixed_point as fp
from simulator.numerics import reference
from simulator.numerics.fixed_point import OverflowStats, PreparedScale, signed_bits_needed
from simulator.numerics.tasks import run_tasks

# data movement carries no arithmetic: the reference's functions are the kernels
reshape = reference.reshape
transpose = reference.transpose
conv_output_size = reference.conv_output_size

_JIT = dict(cache=True, nogil=True, error_model="numpy")

FLOAT32_EXACT = 1 << 24   # every integer of magnitude <= 2**24 is a float32
FLOAT64_EXACT = 1 << 53   # ... <= 2**53 is a float64
INT32_LANE = 1 << 31
LANE = 256                # outputs per vector lane block in the order-dependent engine
COL_BUDGET_BYTES = 32 << 20  # an im2col chunk is at most this big

_ROUNDING_CODE = {RoundingMode.FLOOR: 0, RoundingMode.HALF_UP: 1, RoundingMode.HALF_EVEN: 2,
                  RoundingMode.HALF_AWAY: 3, RoundingMode.TFLITE: 4}
I32 = np.int32


# ============================================================================ scalar spec

@njit(inline="always", **_JIT)
def _round_shift(v, s, rnd):
    """fixed_point.round_shift for one value, 0 <= s <= 62; rnd 0..3 (floor/up/even/away)."""
    half = (np.int64(1) << (s - 1)) if s > 0 else np.int64(0)
    if rnd == 0:
        return v >> s
    if rnd == 1:
        return (v + half) >> s
    if rnd == 2:
        q = v >> s
        r = v - (q << s)
        # bitwise, not short-circuit: no data-dependent branch
        return q + ((r > half) | ((r == half) & (half > 0) & ((q & 1) == 1)))
    mag = (abs(v) + half) >> s
    return -mag if v < 0 else mag


@njit(inline="always", **_JIT)
def _round_div(n, d, rnd):
    """fixed_point.round_div for one value (d > 0; d == 0 behaves as NumPy's n // 0 == 0)."""
    if d == 0:
        q = np.int64(0)
        r = n
    else:
        q = n // d
        r = n - q * d
    if rnd == 0:
        return q
    if rnd == 1:
        return q + 1 if 2 * r >= d else q
    if rnd == 2:
        return q + ((2 * r > d) | ((2 * r == d) & ((q & 1) == 1)))
    if d == 0:
        return np.int64(0)
    mag = (abs(n) * 2 + d) // (2 * d)
    return -mag if n < 0 else mag


@njit(inline="always", **_JIT)
def _wrap(v, bits):
    if bits >= 64:
        return v
    off = np.int64(1) << (bits - 1)
    mask = (np.int64(1) << bits) - 1
    return ((v + off) & mask) - off


@njit(inline="always", **_JIT)
def _trunc_div_2_31(x):
    """x / 2**31 rounded toward zero (|x| < 2**62): add 2**31 - 1 to negatives, then floor."""
    return (x + ((x >> 63) & np.int64((1 << 31) - 1))) >> 31


@njit(inline="always", **_JIT)
def _srdhm(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values held in int64."""
    ab = a * b
    nudge = np.int64(1 << 30) + ((ab >> 63) & np.int64(1 - (1 << 31)))  # 1 - 2**30 if ab < 0
    result = _trunc_div_2_31(ab + nudge)
    both_min = (a == -2147483648) & (b == -2147483648)  # the one product that overflows
    return np.int64(2147483647) if both_min else result


@njit(inline="always", **_JIT)
def _rdbpot(x, e):
    """gemmlowp RoundingDivideByPOT: ties away from zero."""
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


@njit(inline="always", **_JIT)
def _tflite_multiply(acc, m, s):
    """fixed_point.tflite_multiply: int32-wrapped left shift, SRDHM, rounding divide by POT."""
    exponent = 31 - s
    left = exponent if exponent > 0 else 0
    right = -exponent if exponent < 0 else 0
    x = _wrap(acc << left, 32)
    return _rdbpot(_srdhm(x, m), right)


# ============================================================================ SIMD vocabulary
# A 512-bit vector of 16 int32 as a numba type, and the operations the VNNI GEMMs and the
# 512-bit per-MAC engine need. Kernels using them are compiled lazily, on first call, and are
# only called where the host has the instructions (VNNI_AVAILABLE, AVX512_AVAILABLE).

class _Vec16Type(types.Type):
    def __init__(self):
        super().__init__(name="Vec16xI32")


_vec16 = _Vec16Type()
_LL_V16I32 = llir.VectorType(llir.IntType(32), 16)
_LL_V32I16 = llir.VectorType(llir.IntType(16), 32)


@register_model(_Vec16Type)
class _Vec16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _LL_V16I32)


def _element_pointer(context, builder, arrty, arr, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [idx])


@intrinsic
def _vzero(typingctx):
    def codegen(context, builder, sig, args):
        return llir.Constant(_LL_V16I32, None)
    return _vec16(), codegen


@intrinsic
def _vload(typingctx, arr, idx):
    """The 16 int32 at flat index idx.. of a contiguous int32 array (unaligned load)."""
    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, _LL_V16I32.as_pointer()), align=4)
    return _vec16(arr, idx), codegen


@intrinsic
def _vstore(typingctx, arr, idx, vec):
    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _LL_V16I32.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(arr, idx, _vec16), codegen


_LL_V64I8 = llir.VectorType(llir.IntType(8), 64)


def _vnni_operand(name: str, new_type):
    """The operand type this LLVM declares the VNNI intrinsic ``name`` with (a vector of i16
    or i8 since LLVM 21 or so, <16 x i32> before), found by verifying a one-call module;
    None if neither form verifies."""
    for operand in (new_type, _LL_V16I32):
        text = (f"declare <16 x i32> @{name}(<16 x i32>, {operand}, {operand})\n"
                f"define <16 x i32> @probe(<16 x i32> %a, {operand} %b, {operand} %c) {{\n"
                f"  %r = call <16 x i32> @{name}(<16 x i32> %a, {operand} %b, {operand} %c)\n"
                f"  ret <16 x i32> %r\n}}\n")
        try:
            llvm_binding.parse_assembly(text).verify()
        except Exception:  # noqa: BLE001 - this form is not the one
            continue
        return operand
    return None


_VPDPWSSD = "llvm.x86.avx512.vpdpwssd.512"
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"
_VPDPWSSD_OPERAND = _vnni_operand(_VPDPWSSD, _LL_V32I16)
_VPDPBUSD_OPERAND = _vnni_operand(_VPDPBUSD, _LL_V64I8)


def _vnni_codegen(name, operand, broadcast_first=False):
    """acc + VNNI(name)(w, broadcast of the int32 word xarr[xidx]), or with the broadcast as
    the first (for VPDPBUSD: the unsigned) operand."""
    def codegen(context, builder, sig, args):
        acc_v, w_v, xa, xi = args
        word = builder.load(_element_pointer(context, builder, sig.args[2], xa, xi), align=4)
        zero = llir.Constant(_LL_V16I32, None)
        splat = builder.insert_element(zero, word, llir.Constant(llir.IntType(32), 0))
        splat = builder.shuffle_vector(splat, zero, llir.Constant(_LL_V16I32, [0] * 16))
        op = operand or _LL_V16I32
        fnty = llir.FunctionType(_LL_V16I32, [_LL_V16I32, op, op])
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        w_o, x_o = builder.bitcast(w_v, op), builder.bitcast(splat, op)
        return builder.call(fn, [acc_v, x_o, w_o] if broadcast_first else [acc_v, w_o, x_o])
    return codegen


@intrinsic
def _vdpwssd(typingctx, acc, w, xarr, xidx):
    """acc[i] += w16[2i] * x16[0] + w16[2i+1] * x16[1], x = the int32 word xarr[xidx] (two
    int16) broadcast; int32 lanes wrap (AVX512-VNNI VPDPWSSD, no saturation)."""
    return _vec16(_vec16, _vec16, xarr, xidx), _vnni_codegen(_VPDPWSSD, _VPDPWSSD_OPERAND)


@intrinsic
def _vdpbusd(typingctx, acc, w, xarr, xidx):
    """acc[i] += sum_j u8(x)[j] * s8(w)[4i+j], x = the int32 word xarr[xidx] (four uint8)
    broadcast; int32 lanes wrap (AVX512-VNNI VPDPBUSD, no saturation)."""
    return (_vec16(_vec16, _vec16, xarr, xidx),
            _vnni_codegen(_VPDPBUSD, _VPDPBUSD_OPERAND, broadcast_first=True))


def _vnni_available() -> bool:
    """AVX512-VNNI on the host, numba compiling for the host (not a generic CPU), and an LLVM
    that knows both instructions."""
    if numba.config.CPU_NAME not in (None, "", "host") or numba.config.CPU_FEATURES:
        return False
    if _VPDPWSSD_OPERAND is None or _VPDPBUSD_OPERAND is None:
        return False
    try:
        features = llvm_binding.get_host_cpu_features()
    except Exception:  # noqa: BLE001 - any failure to ask means: do not use it
        return False
    return all(features.get(f, False) for f in ("avx512f", "avx512bw", "avx512vnni"))


VNNI_AVAILABLE = _vnni_available()


# Plain 16 x int32 lane arithmetic (generic LLVM IR, plus VPMADDWD; used where the host has
# AVX-512F and AVX-512BW).

@intrinsic
def _vsplat(typingctx, value):
    """16 lanes of int32(value)."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int32)
        zero = llir.Constant(_LL_V16I32, None)
        vec = builder.insert_element(zero, v, llir.Constant(llir.IntType(32), 0))
        return builder.shuffle_vector(vec, zero, llir.Constant(_LL_V16I32, [0] * 16))
    return _vec16(value), codegen


@intrinsic
def _vlanes(typingctx, arr, idx):
    """The 16 elements at flat index idx.. of a contiguous int16 or int32 array, as int32."""
    if not isinstance(arr, types.Array) or arr.dtype not in (types.int16, types.int32):
        return None
    width = arr.dtype.bitwidth

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        vec_t = llir.VectorType(llir.IntType(width), 16)
        vec = builder.load(builder.bitcast(ptr, vec_t.as_pointer()), align=width // 8)
        return builder.sext(vec, _LL_V16I32) if width < 32 else vec
    return _vec16(arr, idx), codegen


@intrinsic
def _vterm(typingctx, arr, idx, w):
    """The 16 products arr[idx + i] * w (int32 lanes; w a splat). For int16 arrays (and w
    known to fit int16) by VPMADDWD on (value, 0) pairs, one uop where VPMULLD takes two."""
    if not isinstance(arr, types.Array) or arr.dtype not in (types.int16, types.int32):
        return None
    width = arr.dtype.bitwidth

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        vec_t = llir.VectorType(llir.IntType(width), 16)
        vec = builder.load(builder.bitcast(ptr, vec_t.as_pointer()), align=width // 8)
        if width == 32:
            return builder.mul(vec, args[2])
        pairs = builder.bitcast(builder.zext(vec, _LL_V16I32), _LL_V32I16)       # (x, 0)
        low = builder.and_(args[2], llir.Constant(_LL_V16I32, [0xFFFF] * 16))
        fnty = llir.FunctionType(_LL_V16I32, [_LL_V32I16, _LL_V32I16])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.pmaddw.d.512")
        return builder.call(fn, [pairs, builder.bitcast(low, _LL_V32I16)])           # x*w + 0*0
    return _vec16(arr, idx, _vec16), codegen


def _vector_binary(op):
    def make(typingctx, a, b):
        def codegen(context, builder, sig, args):
            if op == "add":
                return builder.add(args[0], args[1])
            fnty = llir.FunctionType(_LL_V16I32, [_LL_V16I32, _LL_V16I32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.{op}.v16i32")
            return builder.call(fn, args)
        return _vec16(_vec16, _vec16), codegen
    return intrinsic(make)


_vadd = _vector_binary("add")   # wrapping, as int32 addition is (callers prove no overflow)
_vmin = _vector_binary("smin")
_vmax = _vector_binary("smax")


def _avx512_available() -> bool:
    if numba.config.CPU_NAME not in (None, "", "host") or numba.config.CPU_FEATURES:
        return False
    try:
        features = llvm_binding.get_host_cpu_features()
    except Exception:  # noqa: BLE001 - any failure to ask means: do not use it
        return False
    return all(features.get(f, False) for f in ("avx512f", "avx512bw"))


AVX512_AVAILABLE = _avx512_available()
ZMM_LANES = 64   # outputs per task of the 512-bit per-MAC engine (4 vectors of 16)


# ============================================================================ MAC engines

VNNI_POSITIONS = 6   # output positions per VNNI micro-tile (x 64 output channels)


@njit(**_JIT)
def _pack_nhwc16(b0, b1, x, zx, pt, pl, xh):
    """Images b0..b1: xh[b, pt + t, pl + ix, c] = x[b, c, t, ix] - zx as int16 (the rest of xh
    stays 0). The caller has checked that int16 holds every value."""
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    for bi in range(b0, b1):
        for iy in range(h):
            dst = xh[bi, pt + iy, pl:pl + w]
            for c in range(c_in):
                src = x[bi, c, iy]
                for ix in range(w):
                    dst[ix, c] = src[ix] - zx


@njit(**_JIT)
def _pack_nhwc_u8(b0, b1, x, off, pt, pl, xq):
    """Images b0..b1: xq[b, pt + t, pl + ix, c] = x[b, c, t, ix] + off as uint8 (the padding
    keeps the caller's fill). The caller has checked that uint8 holds every value."""
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    for bi in range(b0, b1):
        for iy in range(h):
            dst = xq[bi, pt + iy, pl:pl + w]
            for c in range(c_in):
                src = x[bi, c, iy]
                for ix in range(w):
                    dst[ix, c] = src[ix] + off


# The epilogue of the VNNI engines, one output row of one 64-channel block at a time: ``ep``
# holds (lo, hi, bits, wrap) of the accumulator, then the requantize fused after it: rq -1 (none),
# 0..4 (integer multiplier and shift, rounding code as _ROUNDING_CODE), 5 (float32 scale); its
# result bits, the accumulator's zero point, the output zero point and the clamp [qmin, qmax].
EP_NONE, EP_FLOAT = -1, 5


@njit(inline="always", **_JIT)
def _accumulator(v, lo, hi, bits, wrap):
    """The exact value v wrapped to ``bits`` or clamped to [lo, hi] (both computed: no branch
    in a vector loop)."""
    wrapped = _wrap(v, bits)
    clamped = min(max(v, lo), hi)
    return wrapped if wrap else clamped


@njit(inline="always", **_JIT)
def _store_transposed(tile, stride, oc0, nj, oy, oh, ow, out):
    """out[((oc0 + j) * oh + oy) * ow + ox] = tile[ox * stride + j]: one output row of
    channels oc0..oc0 + nj, from positions-major to NCHW."""
    for j in range(nj):
        base = ((oc0 + j) * oh + oy) * ow
        dst = out[base:base + ow]
        src = tile[j:]
        for ox in range(ow):
            dst[ox] = src[ox * stride]


@njit(inline="always", **_JIT)
def _image(out, bi, size):
    """Image bi's part of a flattened batch output (an empty array stays empty: not asked)."""
    return out[bi * size:(bi + 1) * size] if out.size else out


@njit(inline="always", **_JIT)
def _vnni_row_out(row, tile, acc_tile, oc0, oc, oy, oh, ow, cb, ep, mult, shift, fscale,
                  acc_out, y_out, lanes=64):
    """row[ox * lanes + j] (the exact sum less cb) -> the accumulator of channel oc0 + j at (oy,
    ox), wrapped or clamped, into acc_out (if it has elements) and requantized into y_out (if
    ep asks), both [oc, oh, ow] flattened; returns (events, min, max) of the exact values, as
    fixed_point.accumulate counts them. Position by position with the channels innermost
    (contiguous views, so that the loops are vector code; ``_position_out``, the depthwise
    kernels' too), then the transposed stores. Positions past ow (computed on whatever lies
    beyond) are skipped."""
    nj = min(lanes, oc - oc0)
    c, m, s, f = cb[oc0:oc0 + nj], mult[oc0:oc0 + nj], shift[oc0:oc0 + nj], fscale[oc0:oc0 + nj]
    e = 0
    mn = np.int64(0)
    mx = np.int64(0)
    for ox in range(ow):
        p = ox * lanes
        pe, pmn, pmx = _position_out(row[p:p + nj], c, ep, m, s, f, acc_tile[p:p + nj],
                                     tile[p:p + nj])
        e += pe
        mn = min(mn, pmn)
        mx = max(mx, pmx)
    _row_store(acc_tile, tile, lanes, oc0, nj, oy, oh, ow, ep[4], acc_out, y_out)
    return e, mn, mx


@njit(**_JIT)
def _conv_vnni16(t0, t1, xf, wp, kh, kw, sh, sw, dh, dw, wpe, cwn, opad, cb, ep, mult, shift,
                 fscale, oc, oh, ow, acc_out, y_out, ev, mins, maxs, img_words):
    """An int16 conv on AVX512-VNNI (VPDPWSSD), exact in wrapping int32 lanes, then bias and
    wrap/clamp.

    xf: the padded NHWC input as int32 words (pairs of int16 channels), rows of ``wpe``
    positions and ``cwn`` words; wp: weights as int32 words [kh, kw, cwn, opad] (pairs of int16
    taps); the images lie ``img_words`` apart in xf, their outputs oc * oh * ow apart.
    Micro-tile: 6 positions x 64 channels in 24 vector registers, summed in any order (the
    caller proved every sum fits int32, so the wrapped lanes hold it exactly). Task t is image
    t // (oh * opad / 64), then its output row oy for the 64 channels of one block; the
    epilogue (``_vnni_row_out``: cb per channel added, then the accumulator and the fused
    requantize) leaves (events, min, max) of its exact values in ev/mins/maxs[t].
    """
    nxb = (ow + 5) // 6
    nob = opad // 64
    row = np.empty(nxb * 6 * 64, np.int32)   # row[ox * 64 + j]: position ox, channel oc0 + j
    tile = np.empty(nxb * 6 * 64, np.int64)
    acc_tile = np.empty(nxb * 6 * 64, np.int64)
    per_image = oh * nob
    osz = oc * oh * ow
    for t in range(t0, t1):
        bi = t // per_image
        ob = (t - bi * per_image) % nob
        oy = (t - bi * per_image) // nob
        oc0 = ob * 64
        xbase = bi * img_words
        for xb in range(nxb):
            ox0 = xb * 6
            a00 = _vzero(); a01 = _vzero(); a02 = _vzero(); a03 = _vzero()  # noqa: E702
            a10 = _vzero(); a11 = _vzero(); a12 = _vzero(); a13 = _vzero()  # noqa: E702
            a20 = _vzero(); a21 = _vzero(); a22 = _vzero(); a23 = _vzero()  # noqa: E702
            a30 = _vzero(); a31 = _vzero(); a32 = _vzero(); a33 = _vzero()  # noqa: E702
            a40 = _vzero(); a41 = _vzero(); a42 = _vzero(); a43 = _vzero()  # noqa: E702
            a50 = _vzero(); a51 = _vzero(); a52 = _vzero(); a53 = _vzero()  # noqa: E702
            step = sw * cwn
            for ky in range(kh):
                iy = oy * sh + ky * dh
                for kx in range(kw):
                    b0 = xbase + (iy * wpe + ox0 * sw + kx * dw) * cwn
                    b1 = b0 + step
                    b2 = b1 + step
                    b3 = b2 + step
                    b4 = b3 + step
                    b5 = b4 + step
                    wb = (ky * kw + kx) * cwn * opad + oc0
                    for cw in range(cwn):
                        wi = wb + cw * opad
                        w0 = _vload(wp, wi)
                        w1 = _vload(wp, wi + 16)
                        w2 = _vload(wp, wi + 32)
                        w3 = _vload(wp, wi + 48)
                        i0 = b0 + cw
                        i1 = b1 + cw
                        i2 = b2 + cw
                        i3 = b3 + cw
                        i4 = b4 + cw
                        i5 = b5 + cw
                        a00 = _vdpwssd(a00, w0, xf, i0); a01 = _vdpwssd(a01, w1, xf, i0)  # noqa
                        a02 = _vdpwssd(a02, w2, xf, i0); a03 = _vdpwssd(a03, w3, xf, i0)  # noqa
                        a10 = _vdpwssd(a10, w0, xf, i1); a11 = _vdpwssd(a11, w1, xf, i1)  # noqa
                        a12 = _vdpwssd(a12, w2, xf, i1); a13 = _vdpwssd(a13, w3, xf, i1)  # noqa
                        a20 = _vdpwssd(a20, w0, xf, i2); a21 = _vdpwssd(a21, w1, xf, i2)  # noqa
                        a22 = _vdpwssd(a22, w2, xf, i2); a23 = _vdpwssd(a23, w3, xf, i2)  # noqa
                        a30 = _vdpwssd(a30, w0, xf, i3); a31 = _vdpwssd(a31, w1, xf, i3)  # noqa
                        a32 = _vdpwssd(a32, w2, xf, i3); a33 = _vdpwssd(a33, w3, xf, i3)  # noqa
                        a40 = _vdpwssd(a40, w0, xf, i4); a41 = _vdpwssd(a41, w1, xf, i4)  # noqa
                        a42 = _vdpwssd(a42, w2, xf, i4); a43 = _vdpwssd(a43, w3, xf, i4)  # noqa
                        a50 = _vdpwssd(a50, w0, xf, i5); a51 = _vdpwssd(a51, w1, xf, i5)  # noqa
                        a52 = _vdpwssd(a52, w2, xf, i5); a53 = _vdpwssd(a53, w3, xf, i5)  # noqa
            p = ox0 * 64
            _vstore(row, p, a00); _vstore(row, p + 16, a01)  # noqa: E702
            _vstore(row, p + 32, a02); _vstore(row, p + 48, a03)  # noqa: E702
            _vstore(row, p + 64, a10); _vstore(row, p + 80, a11)  # noqa: E702
            _vstore(row, p + 96, a12); _vstore(row, p + 112, a13)  # noqa: E702
            _vstore(row, p + 128, a20); _vstore(row, p + 144, a21)  # noqa: E702
            _vstore(row, p + 160, a22); _vstore(row, p + 176, a23)  # noqa: E702
            _vstore(row, p + 192, a30); _vstore(row, p + 208, a31)  # noqa: E702
            _vstore(row, p + 224, a32); _vstore(row, p + 240, a33)  # noqa: E702
            _vstore(row, p + 256, a40); _vstore(row, p + 272, a41)  # noqa: E702
            _vstore(row, p + 288, a42); _vstore(row, p + 304, a43)  # noqa: E702
            _vstore(row, p + 320, a50); _vstore(row, p + 336, a51)  # noqa: E702
            _vstore(row, p + 352, a52); _vstore(row, p + 368, a53)  # noqa: E702
        ev[t], mins[t], maxs[t] = _vnni_row_out(row, tile, acc_tile, oc0, oc, oy, oh, ow, cb,
                                                ep, mult, shift, fscale, _image(acc_out, bi, osz),
                                                _image(y_out, bi, osz))


@njit(**_JIT)
def _conv_vnni8(t0, t1, xf, wp, kh, kw, sh, sw, dh, dw, wpe, cwn, opad, cb, ep, mult, shift,
                fscale, oc, oh, ow, acc_out, y_out, ev, mins, maxs, img_words):
    """``_conv_vnni16`` for 8-bit operands on VPDPBUSD, four channels per word: twice the MACs.

    VPDPBUSD multiplies unsigned by signed bytes: the broadcast input words are the unsigned
    side, x + off (padding: zx + off), the weights the signed one, w - zw. Each lane then holds
    sum (x + off) * (w - zw) over the window, which exceeds the true sum by (zx + off) * sum (w
    - zw) over all taps, a constant per output channel that the caller folded into cb. So any
    input zero point runs here, as long as the input spans at most 256 values.
    """
    nxb = (ow + 5) // 6
    nob = opad // 64
    row = np.empty(nxb * 6 * 64, np.int32)   # row[ox * 64 + j]: position ox, channel oc0 + j
    tile = np.empty(nxb * 6 * 64, np.int64)
    acc_tile = np.empty(nxb * 6 * 64, np.int64)
    per_image = oh * nob
    osz = oc * oh * ow
    for t in range(t0, t1):
        bi = t // per_image
        ob = (t - bi * per_image) % nob
        oy = (t - bi * per_image) // nob
        oc0 = ob * 64
        xbase = bi * img_words
        for xb in range(nxb):
            ox0 = xb * 6
            a00 = _vzero(); a01 = _vzero(); a02 = _vzero(); a03 = _vzero()  # noqa: E702
            a10 = _vzero(); a11 = _vzero(); a12 = _vzero(); a13 = _vzero()  # noqa: E702
            a20 = _vzero(); a21 = _vzero(); a22 = _vzero(); a23 = _vzero()  # noqa: E702
            a30 = _vzero(); a31 = _vzero(); a32 = _vzero(); a33 = _vzero()  # noqa: E702
            a40 = _vzero(); a41 = _vzero(); a42 = _vzero(); a43 = _vzero()  # noqa: E702
            a50 = _vzero(); a51 = _vzero(); a52 = _vzero(); a53 = _vzero()  # noqa: E702
            step = sw * cwn
            for ky in range(kh):
                iy = oy * sh + ky * dh
                for kx in range(kw):
                    b0 = xbase + (iy * wpe + ox0 * sw + kx * dw) * cwn
                    b1 = b0 + step
                    b2 = b1 + step
                    b3 = b2 + step
                    b4 = b3 + step
                    b5 = b4 + step
                    wb = (ky * kw + kx) * cwn * opad + oc0
                    for cw in range(cwn):
                        wi = wb + cw * opad
                        w0 = _vload(wp, wi)
                        w1 = _vload(wp, wi + 16)
                        w2 = _vload(wp, wi + 32)
                        w3 = _vload(wp, wi + 48)
                        i0 = b0 + cw
                        i1 = b1 + cw
                        i2 = b2 + cw
                        i3 = b3 + cw
                        i4 = b4 + cw
                        i5 = b5 + cw
                        a00 = _vdpbusd(a00, w0, xf, i0); a01 = _vdpbusd(a01, w1, xf, i0)  # noqa
                        a02 = _vdpbusd(a02, w2, xf, i0); a03 = _vdpbusd(a03, w3, xf, i0)  # noqa
                        a10 = _vdpbusd(a10, w0, xf, i1); a11 = _vdpbusd(a11, w1, xf, i1)  # noqa
                        a12 = _vdpbusd(a12, w2, xf, i1); a13 = _vdpbusd(a13, w3, xf, i1)  # noqa
                        a20 = _vdpbusd(a20, w0, xf, i2); a21 = _vdpbusd(a21, w1, xf, i2)  # noqa
                        a22 = _vdpbusd(a22, w2, xf, i2); a23 = _vdpbusd(a23, w3, xf, i2)  # noqa
                        a30 = _vdpbusd(a30, w0, xf, i3); a31 = _vdpbusd(a31, w1, xf, i3)  # noqa
                        a32 = _vdpbusd(a32, w2, xf, i3); a33 = _vdpbusd(a33, w3, xf, i3)  # noqa
                        a40 = _vdpbusd(a40, w0, xf, i4); a41 = _vdpbusd(a41, w1, xf, i4)  # noqa
                        a42 = _vdpbusd(a42, w2, xf, i4); a43 = _vdpbusd(a43, w3, xf, i4)  # noqa
                        a50 = _vdpbusd(a50, w0, xf, i5); a51 = _vdpbusd(a51, w1, xf, i5)  # noqa
                        a52 = _vdpbusd(a52, w2, xf, i5); a53 = _vdpbusd(a53, w3, xf, i5)  # noqa
            p = ox0 * 64
            _vstore(row, p, a00); _vstore(row, p + 16, a01)  # noqa: E702
            _vstore(row, p + 32, a02); _vstore(row, p + 48, a03)  # noqa: E702
            _vstore(row, p + 64, a10); _vstore(row, p + 80, a11)  # noqa: E702
            _vstore(row, p + 96, a12); _vstore(row, p + 112, a13)  # noqa: E702
            _vstore(row, p + 128, a20); _vstore(row, p + 144, a21)  # noqa: E702
            _vstore(row, p + 160, a22); _vstore(row, p + 176, a23)  # noqa: E702
            _vstore(row, p + 192, a30); _vstore(row, p + 208, a31)  # noqa: E702
            _vstore(row, p + 224, a32); _vstore(row, p + 240, a33)  # noqa: E702
            _vstore(row, p + 256, a40); _vstore(row, p + 272, a41)  # noqa: E702
            _vstore(row, p + 288, a42); _vstore(row, p + 304, a43)  # noqa: E702
            _vstore(row, p + 320, a50); _vstore(row, p + 336, a51)  # noqa: E702
            _vstore(row, p + 352, a52); _vstore(row, p + 368, a53)  # noqa: E702
        ev[t], mins[t], maxs[t] = _vnni_row_out(row, tile, acc_tile, oc0, oc, oy, oh, ow, cb,
                                                ep, mult, shift, fscale, _image(acc_out, bi, osz),
                                                _image(y_out, bi, osz))


@njit(**_JIT)
def _conv_vnni8_n32(t0, t1, xf, wp, kh, kw, sh, sw, dh, dw, wpe, cwn, opad, cb, ep, mult, shift,
                    fscale, oc, oh, ow, acc_out, y_out, ev, mins, maxs, img_words):
    """``_conv_vnni8`` for at most 32 output channels (opad 32): a micro-tile of 12 positions x
    32 channels in the same 24 registers, so that no lane computes a padded channel. Task t
    is image t // oh, output row t % oh. (The register tiles are unrolled by hand: numba keeps
    named vector variables in registers, not arrays of them.)"""
    nxb = (ow + 11) // 12
    row = np.empty(nxb * 12 * 32, np.int32)   # row[ox * 32 + j]: position ox, channel j
    tile = np.empty(nxb * 12 * 32, np.int64)
    acc_tile = np.empty(nxb * 12 * 32, np.int64)
    osz = oc * oh * ow
    for t in range(t0, t1):
        bi = t // oh
        oy = t - bi * oh
        xbase = bi * img_words
        for xb in range(nxb):
            ox0 = xb * 12
            a000 = _vzero(); a001 = _vzero(); a010 = _vzero(); a011 = _vzero()  # noqa: E702
            a020 = _vzero(); a021 = _vzero(); a030 = _vzero(); a031 = _vzero()  # noqa: E702
            a040 = _vzero(); a041 = _vzero(); a050 = _vzero(); a051 = _vzero()  # noqa: E702
            a060 = _vzero(); a061 = _vzero(); a070 = _vzero(); a071 = _vzero()  # noqa: E702
            a080 = _vzero(); a081 = _vzero(); a090 = _vzero(); a091 = _vzero()  # noqa: E702
            a100 = _vzero(); a101 = _vzero(); a110 = _vzero(); a111 = _vzero()  # noqa: E702
            step = sw * cwn
            for ky in range(kh):
                iy = oy * sh + ky * dh
                for kx in range(kw):
                    b00 = xbase + (iy * wpe + ox0 * sw + kx * dw) * cwn
                    b01 = b00 + step
                    b02 = b01 + step
                    b03 = b02 + step
                    b04 = b03 + step
                    b05 = b04 + step
                    b06 = b05 + step
                    b07 = b06 + step
                    b08 = b07 + step
                    b09 = b08 + step
                    b10 = b09 + step
                    b11 = b10 + step
                    wb = (ky * kw + kx) * cwn * opad
                    for cw in range(cwn):
                        wi = wb + cw * opad
                        w0 = _vload(wp, wi)
                        w1 = _vload(wp, wi + 16)
                        i00 = b00 + cw
                        i01 = b01 + cw
                        i02 = b02 + cw
                        i03 = b03 + cw
                        i04 = b04 + cw
                        i05 = b05 + cw
                        i06 = b06 + cw
                        i07 = b07 + cw
                        i08 = b08 + cw
                        i09 = b09 + cw
                        i10 = b10 + cw
                        i11 = b11 + cw
                        a000 = _vdpbusd(a000, w0, xf, i00)
                        a001 = _vdpbusd(a001, w1, xf, i00)
                        a010 = _vdpbusd(a010, w0, xf, i01)
                        a011 = _vdpbusd(a011, w1, xf, i01)
                        a020 = _vdpbusd(a020, w0, xf, i02)
                        a021 = _vdpbusd(a021, w1, xf, i02)
                        a030 = _vdpbusd(a030, w0, xf, i03)
                        a031 = _vdpbusd(a031, w1, xf, i03)
                        a040 = _vdpbusd(a040, w0, xf, i04)
                        a041 = _vdpbusd(a041, w1, xf, i04)
                        a050 = _vdpbusd(a050, w0, xf, i05)
                        a051 = _vdpbusd(a051, w1, xf, i05)
                        a060 = _vdpbusd(a060, w0, xf, i06)
                        a061 = _vdpbusd(a061, w1, xf, i06)
                        a070 = _vdpbusd(a070, w0, xf, i07)
                        a071 = _vdpbusd(a071, w1, xf, i07)
                        a080 = _vdpbusd(a080, w0, xf, i08)
                        a081 = _vdpbusd(a081, w1, xf, i08)
                        a090 = _vdpbusd(a090, w0, xf, i09)
                        a091 = _vdpbusd(a091, w1, xf, i09)
                        a100 = _vdpbusd(a100, w0, xf, i10)
                        a101 = _vdpbusd(a101, w1, xf, i10)
                        a110 = _vdpbusd(a110, w0, xf, i11)
                        a111 = _vdpbusd(a111, w1, xf, i11)
            p = ox0 * 32
            _vstore(row, p + 0, a000); _vstore(row, p + 16, a001)  # noqa: E702
            _vstore(row, p + 32, a010); _vstore(row, p + 48, a011)  # noqa: E702
            _vstore(row, p + 64, a020); _vstore(row, p + 80, a021)  # noqa: E702
            _vstore(row, p + 96, a030); _vstore(row, p + 112, a031)  # noqa: E702
            _vstore(row, p + 128, a040); _vstore(row, p + 144, a041)  # noqa: E702
            _vstore(row, p + 160, a050); _vstore(row, p + 176, a051)  # noqa: E702
            _vstore(row, p + 192, a060); _vstore(row, p + 208, a061)  # noqa: E702
            _vstore(row, p + 224, a070); _vstore(row, p + 240, a071)  # noqa: E702
            _vstore(row, p + 256, a080); _vstore(row, p + 272, a081)  # noqa: E702
            _vstore(row, p + 288, a090); _vstore(row, p + 304, a091)  # noqa: E702
            _vstore(row, p + 320, a100); _vstore(row, p + 336, a101)  # noqa: E702
            _vstore(row, p + 352, a110); _vstore(row, p + 368, a111)  # noqa: E702
        ev[t], mins[t], maxs[t] = _vnni_row_out(row, tile, acc_tile, 0, oc, oy, oh, ow, cb, ep,
                                                mult, shift, fscale, _image(acc_out, bi, osz),
                                                _image(y_out, bi, osz), 32)


@njit(**_JIT)
def _pack_nhwc_repeat(t0, t1, x, bi, zx, mult_ch, pt, pl, xp):
    """Rows t of batch bi: xp[pt + t, pl + ix, c * mult_ch + j] = x[bi, c, t, ix] - zx for j <
    mult_ch, each input channel repeated for its output channels (the padding stays 0)."""
    c_in, w = x.shape[1], x.shape[3]
    for iy in range(t0, t1):
        # one input row at a time (contiguous reads), scattered into an L1-sized block
        dst = xp[pt + iy, pl:pl + w]
        for c in range(c_in):
            src = x[bi, c, iy]
            for j in range(mult_ch):
                o = c * mult_ch + j
                for ix in range(w):
                    dst[ix, o] = src[ix] - zx


@njit(inline="always", **_JIT)
def _position_out(sums, cb, ep, mult, shift, fscale, acc_tile, tile):
    """One output position's channels o: sums[o] + cb[o] (exact), their accumulators into
    acc_tile[o] and (if ep asks) requantized into tile[o]; returns (events, min, max)."""
    lo, hi, bits, wrap, rq, rbits, azp, yzp, qmin, qmax = ep
    e = 0
    mn = np.int64(0)
    mx = np.int64(0)
    for o in range(acc_tile.size):
        v = np.int64(sums[o]) + cb[o]
        mn = min(mn, v)
        mx = max(mx, v)
        e += (v < lo) | (v > hi)
        acc_tile[o] = _accumulator(v, lo, hi, bits, wrap)
    if rq == EP_FLOAT:
        for o in range(acc_tile.size):
            tile[o] = _requant_one_float(acc_tile[o] - azp, fscale[o], yzp, qmin, qmax)
    elif rq != EP_NONE:
        for o in range(acc_tile.size):
            tile[o] = _requant_one(acc_tile[o] - azp, mult[o], shift[o], rq, rbits, yzp, qmin,
                                   qmax)
    return e, mn, mx


@njit(inline="always", **_JIT)
def _row_store(acc_tile, tile, stride, oc0, nj, oy, oh, ow, rq, acc_out, y_out):
    """One output row's accumulators (if acc_out has elements) and requantized values (if
    any) from positions-major tiles to NCHW."""
    if acc_out.size:
        _store_transposed(acc_tile, stride, oc0, nj, oy, oh, ow, acc_out)
    if rq != EP_NONE:
        _store_transposed(tile, stride, oc0, nj, oy, oh, ow, y_out)


@njit(**_JIT)
def _depthwise(t0, t1, xp, wk, sh, sw, dh, dw, oh, ow, cb, ep, mult, shift, fscale, acc_out,
               y_out, ev, mins, maxs):
    """Output rows t0..t1 of a depthwise conv on the padded NHWC input xp [hp, wp, oc] (each
    input channel repeated for its output channels), vector code across the channels: for
    each output position the taps' products with wk [kh, kw, oc] summed in lanes of xp's
    dtype (int32 where the caller proved every partial sum fits, else int64: exact either
    way, in any order), then cb, the accumulator and the fused requantize per channel as the
    VNNI epilogue does them, and the row stored transposed into [oc, oh, ow]."""
    kh, kw, oc = wk.shape
    sums = np.empty(oc, xp.dtype)
    tile = np.empty(ow * oc, np.int64)
    acc_tile = np.empty(ow * oc, np.int64)
    for oy in range(t0, t1):
        e = 0
        mn = np.int64(0)
        mx = np.int64(0)
        for ox in range(ow):
            sums[:] = 0
            for ky in range(kh):
                for kx in range(kw):
                    src = xp[oy * sh + ky * dh, ox * sw + kx * dw]
                    wv = wk[ky, kx]
                    for o in range(oc):
                        sums[o] += src[o] * wv[o]
            pe, pmn, pmx = _position_out(sums, cb, ep, mult, shift, fscale,
                                         acc_tile[ox * oc:(ox + 1) * oc],
                                         tile[ox * oc:(ox + 1) * oc])
            e += pe
            mn = min(mn, pmn)
            mx = max(mx, pmx)
        _row_store(acc_tile, tile, oc, 0, oc, oy, oh, ow, ep[4], acc_out, y_out)
        ev[oy], mins[oy], maxs[oy] = e, mn, mx


@njit(**_JIT)
def _depthwise_zmm(t0, t1, xp, wk, sh, sw, dh, dw, oh, ow, cb, ep, mult, shift, fscale,
                   acc_out, y_out, ev, mins, maxs):
    """``_depthwise`` on 512-bit vectors for int16 operands whose every partial sum fits int32
    (the caller checked): xp and wk int16 with oc padded to a multiple of 16 (zeros), the
    products by VPMADDWD, 16 channels per vector, every tap of a position summed in registers
    (int32 lanes) before the epilogue."""
    kh, kw, opad = wk.shape
    oc = cb.size
    xf = xp.reshape(-1)
    wf = wk.reshape(-1)
    wp, cp = xp.shape[1], opad
    sums = np.empty(opad, np.int32)
    tile = np.empty(ow * oc, np.int64)
    acc_tile = np.empty(ow * oc, np.int64)
    for oy in range(t0, t1):
        e = 0
        mn = np.int64(0)
        mx = np.int64(0)
        for ox in range(ow):
            for o0 in range(0, opad, 16):
                a = _vzero()
                for ky in range(kh):
                    row = ((oy * sh + ky * dh) * wp + ox * sw) * cp + o0
                    for kx in range(kw):
                        a = _vadd(a, _vterm(xf, row + kx * dw * cp,
                                            _vlanes(wf, (ky * kw + kx) * opad + o0)))
                _vstore(sums, o0, a)
            pe, pmn, pmx = _position_out(sums, cb, ep, mult, shift, fscale,
                                         acc_tile[ox * oc:(ox + 1) * oc],
                                         tile[ox * oc:(ox + 1) * oc])
            e += pe
            mn = min(mn, pmn)
            mx = max(mx, pmx)
        _row_store(acc_tile, tile, oc, 0, oc, oy, oh, ow, ep[4], acc_out, y_out)
        ev[oy], mins[oy], maxs[oy] = e, mn, mx


@njit(**_JIT)
def _im2col(r0, r1, x, bi, zx, row_c, row_ky, row_kx, sh, sw, dh, dw, pt, pl, oy0, oy1, ow,
            col):
    """Rows r0..r1 of col: col[r, (oy - oy0) * ow + ox] = x[bi, c, iy, ix] - zx, 0 where (iy,
    ix) is padding.

    Row r is the tap (row_c[r], row_ky[r], row_kx[r]); ``col``'s dtype (float32, float64,
    int32, int64) is the GEMM's. Serial before a BLAS call (its idle workers spin), on the
    pool's threads before the lane engines.
    """
    h, w = x.shape[2], x.shape[3]
    for r in range(r0, r1):
        c, ky, kx = row_c[r], row_ky[r], row_kx[r]
        for oy in range(oy0, oy1):
            base = (oy - oy0) * ow
            iy = oy * sh + ky * dh - pt
            if iy < 0 or iy >= h:
                for ox in range(ow):
                    col[r, base + ox] = 0
            else:
                for ox in range(ow):
                    ix = ox * sw + kx * dw - pl
                    col[r, base + ox] = x[bi, c, iy, ix] - zx if 0 <= ix < w else 0


@njit(**_JIT)
def _finish_exact(g, bias_r, bias_j, lo, hi, bits, wrap, out, r0, c0):
    """Exact sums g[r, j] (float holding integers, or int64) + bias -> wrapped / clamped.

    Writes out[r0 + r, c0 + j]; returns (events, min, max) of the exact values (min/max with 0),
    as fixed_point.accumulate does for order-independent specs. Single-threaded (runs after BLAS).
    """
    events = 0
    seen_lo = np.int64(0)
    seen_hi = np.int64(0)
    for r in range(g.shape[0]):
        br = bias_r[r]
        for j in range(g.shape[1]):
            v = np.int64(g[r, j]) + br + bias_j[j]
            seen_lo = min(seen_lo, v)
            seen_hi = max(seen_hi, v)
            if v < lo or v > hi:
                events += 1
            out[r0 + r, c0 + j] = _wrap(v, bits) if wrap else min(max(v, lo), hi)
    return events, seen_lo, seen_hi


@njit(**_JIT)
def _gemm_exact(t0, t1, a, col, rows_per_group, out):
    """out[r, j] = sum_k a[r, k] * col[g(r) * K + k, j] in int64 (wraps as NumPy does).

    Task t covers row r = t % R and the lane block t // R of LANE columns.
    """
    rr, kk = a.shape
    jj = col.shape[1]
    for t in range(t0, t1):
        jb = t // rr
        r = t - jb * rr
        j0 = jb * LANE
        j1 = min(jj, j0 + LANE)
        krow = (r // rows_per_group) * kk
        lane = np.zeros(j1 - j0, np.int64)
        for k in range(kk):
            wk = a[r, k]
            src = col[krow + k, j0:j1]
            for q in range(j1 - j0):
                lane[q] += src[q] * wk
        out[r, j0:j1] = lane


# The order-dependent engine. For every output lane q it keeps the saturated accumulator
# ``acc``, the exact running sum ``run`` and its extremes ``rmin``/``rmax`` over the points where
# the policy applies. The clipped-ever flag needs no state of its own: until the first clip the
# accumulator equals the exact sum, so an output is clipped at some point if and only if one of
# those running sums (bias included) leaves [lo, hi], i.e. iff rmin < lo or rmax > hi.

@njit(inline="always", **_JIT)
def _lanes_start(bias_r, bias_j, r, j0, n, lo, hi, acc, run, rmin, rmax):
    for q in range(n):
        b = bias_r[r] + bias_j[j0 + q]
        acc[q] = min(max(b, lo), hi)
        run[q] = b
        rmin[q] = min(b, 0)
        rmax[q] = max(b, 0)


@njit(inline="always", **_JIT)
def _lanes_end(out, r0, r, c0, j0, n, lo, hi, acc, rmin, rmax):
    e = 0
    mn = np.int64(0)
    mx = np.int64(0)
    for q in range(n):
        out[r0 + r, c0 + j0 + q] = acc[q]
        lo_q = np.int64(rmin[q])
        hi_q = np.int64(rmax[q])
        if lo_q < lo or hi_q > hi:
            e += 1
        mn = min(mn, lo_q)
        mx = max(mx, hi_q)
    return e, mn, mx


@njit(**_JIT)
def _saturating_lanes(t0, t1, a, col, rows_per_group, bias_r, bias_j, lo, hi, step, out, r0, c0,
                      ev, mins, maxs):
    """Saturation per MAC (step 1) or per tile of ``step`` products, in the declared order.

    Output (r, j): acc = clip(bias_r[r] + bias_j[j]); for each tile of k in order,
    acc = clip(acc + sum of a[r, k] * col[g(r) * K + k, j] over the tile). ``a``/``col`` dtype
    is the lane type (int64 here, or int32 when the caller proved it safe). Task t covers row
    r = t % R and the lane block t // R; it leaves its (events, min, max) in ev/mins/maxs[t].
    """
    rr, kk = a.shape
    jj = col.shape[1]
    for t in range(t0, t1):
        jb = t // rr
        r = t - jb * rr
        j0 = jb * LANE
        j1 = min(jj, j0 + LANE)
        n = j1 - j0
        krow = (r // rows_per_group) * kk
        acc = np.empty(n, col.dtype)
        run = np.empty(n, col.dtype)
        rmin = np.empty(n, col.dtype)
        rmax = np.empty(n, col.dtype)
        part = np.empty(n, col.dtype)
        _lanes_start(bias_r, bias_j, r, j0, n, lo, hi, acc, run, rmin, rmax)
        for k0 in range(0, kk, step):
            part[:] = 0
            for k in range(k0, min(k0 + step, kk)):
                wk = a[r, k]
                src = col[krow + k, j0:j1]
                for q in range(n):
                    part[q] += src[q] * wk
            for q in range(n):
                acc[q] = min(max(acc[q] + part[q], lo), hi)
                s = run[q] + part[q]
                run[q] = s
                rmin[q] = min(rmin[q], s)
                rmax[q] = max(rmax[q], s)
        ev[t], mins[t], maxs[t] = _lanes_end(out, r0, r, c0, j0, n, lo, hi, acc, rmin, rmax)


@njit(inline="always", **_JIT)
def _mac8_i32(c0, c1, c2, c3, c4, c5, c6, c7, a, r, k, lo, hi, acc, run, rmin, rmax):
    """Eight per-MAC saturating steps k..k+7 on int32 lanes, state in registers meanwhile."""
    w0 = I32(a[r, k])
    w1 = I32(a[r, k + 1])
    w2 = I32(a[r, k + 2])
    w3 = I32(a[r, k + 3])
    w4 = I32(a[r, k + 4])
    w5 = I32(a[r, k + 5])
    w6 = I32(a[r, k + 6])
    w7 = I32(a[r, k + 7])
    for q in range(acc.size):
        v = acc[q]
        s = run[q]
        mn = rmin[q]
        mx = rmax[q]
        t = I32(c0[q] * w0)
        v = min(max(I32(v + t), lo), hi)
        s = I32(s + t)
        mn = min(mn, s)
        mx = max(mx, s)
        t = I32(c1[q] * w1)
        v = min(max(I32(v + t), lo), hi)
        s = I32(s + t)
        mn = min(mn, s)
        mx = max(mx, s)
        t = I32(c2[q] * w2)
        v = min(max(I32(v + t), lo), hi)
        s = I32(s + t)
        mn = min(mn, s)
        mx = max(mx, s)
        t = I32(c3[q] * w3)
        v = min(max(I32(v + t), lo), hi)
        s = I32(s + t)
        mn = min(mn, s)
        mx = max(mx, s)
        t = I32(c4[q] * w4)
        v = min(max(I32(v + t), lo), hi)
        s = I32(s + t)
        mn = min(mn, s)
        mx = max(mx, s)
        t = I32(c5[q] * w5)
        v = min(max(I32(v + t), lo), hi)
        s = I32(s + t)
        mn = min(mn, s)
        mx = max(mx, s)
        t = I32(c6[q] * w6)
        v = min(max(I32(v + t), lo), hi)
        s = I32(s + t)
        mn = min(mn, s)
        mx = max(mx, s)
        t = I32(c7[q] * w7)
        v = min(max(I32(v + t), lo), hi)
        s = I32(s + t)
        mn = min(mn, s)
        mx = max(mx, s)
        acc[q] = v
        run[q] = s
        rmin[q] = mn
        rmax[q] = mx


@njit(**_JIT)
def _per_mac_lanes_i32(t0, t1, a, col, rows_per_group, bias_r, bias_j, lo, hi, out, r0, c0, ev,
                       mins, maxs):
    """``_saturating_lanes`` with step 1 on int32 lanes (the caller proved nothing leaves
    int32), eight MACs per pass over the lane so the state stays in registers meanwhile.
    ``a``/``col`` may be int16 or int32 (the operands); the lanes are int32."""
    rr, kk = a.shape
    jj = col.shape[1]
    lo32 = I32(lo)
    hi32 = I32(hi)
    k8 = kk - kk % 8
    for t in range(t0, t1):
        jb = t // rr
        r = t - jb * rr
        j0 = jb * LANE
        j1 = min(jj, j0 + LANE)
        n = j1 - j0
        kr = (r // rows_per_group) * kk
        acc = np.empty(n, np.int32)
        run = np.empty(n, np.int32)
        rmin = np.empty(n, np.int32)
        rmax = np.empty(n, np.int32)
        _lanes_start(bias_r, bias_j, r, j0, n, lo, hi, acc, run, rmin, rmax)
        for k in range(0, k8, 8):
            _mac8_i32(col[kr + k, j0:j1], col[kr + k + 1, j0:j1], col[kr + k + 2, j0:j1],
                      col[kr + k + 3, j0:j1], col[kr + k + 4, j0:j1], col[kr + k + 5, j0:j1],
                      col[kr + k + 6, j0:j1], col[kr + k + 7, j0:j1], a, r, k, lo32, hi32,
                      acc, run, rmin, rmax)
        for k in range(k8, kk):
            wk = I32(a[r, k])
            src = col[kr + k, j0:j1]
            for q in range(n):
                term = I32(src[q] * wk)
                acc[q] = min(max(I32(acc[q] + term), lo32), hi32)
                s = I32(run[q] + term)
                run[q] = s
                rmin[q] = min(rmin[q], s)
                rmax[q] = max(rmax[q], s)
        ev[t], mins[t], maxs[t] = _lanes_end(out, r0, r, c0, j0, n, lo, hi, acc, rmin, rmax)


@njit(inline="always", **_JIT)
def _mac16(acc, run, mn, mx, colf, base, w, lov, hiv):
    term = _vterm(colf, base, w)
    acc = _vmin(_vmax(_vadd(acc, term), lov), hiv)
    run = _vadd(run, term)
    return acc, run, _vmin(mn, run), _vmax(mx, run)


@njit(**_JIT)
def _per_mac_lanes_zmm(t0, t1, a, colf, jp, jj, rows_per_group, bias_r, bias_j, lo, hi, out,
                       r0, c0, ev, mins, maxs):
    """``_per_mac_lanes_i32`` on 512-bit vectors: 64 outputs per task in 16 registers (the
    saturated accumulator, the exact running sum and its min and max, 4 x 16 lanes each),
    kept there for the whole reduction. colf is col [G * K, jp] flattened, jp a multiple of
    64 (columns jj.. are padding whose outputs are not kept). With int16 operands (a and
    colf both int16, as the plan chooses only when both fit) the products use VPMADDWD."""
    rr, kk = a.shape
    lov = _vsplat(lo)
    hiv = _vsplat(hi)
    buf = np.empty(4 * ZMM_LANES, np.int32)
    for t in range(t0, t1):
        jb = t // rr
        r = t - jb * rr
        j0 = jb * ZMM_LANES
        n = min(ZMM_LANES, jj - j0)
        kr = (r // rows_per_group) * kk
        for q in range(ZMM_LANES):
            b = bias_r[r] + (bias_j[j0 + q] if q < n else 0)
            buf[q] = min(max(b, lo), hi)
            buf[ZMM_LANES + q] = b
            buf[2 * ZMM_LANES + q] = min(b, 0)
            buf[3 * ZMM_LANES + q] = max(b, 0)
        acc0 = _vlanes(buf, 0)
        acc1 = _vlanes(buf, 16)
        acc2 = _vlanes(buf, 32)
        acc3 = _vlanes(buf, 48)
        run0 = _vlanes(buf, 64)
        run1 = _vlanes(buf, 80)
        run2 = _vlanes(buf, 96)
        run3 = _vlanes(buf, 112)
        mn0 = _vlanes(buf, 128)
        mn1 = _vlanes(buf, 144)
        mn2 = _vlanes(buf, 160)
        mn3 = _vlanes(buf, 176)
        mx0 = _vlanes(buf, 192)
        mx1 = _vlanes(buf, 208)
        mx2 = _vlanes(buf, 224)
        mx3 = _vlanes(buf, 240)
        for k in range(kk):
            w = _vsplat(a[r, k])
            base = (kr + k) * jp + j0
            acc0, run0, mn0, mx0 = _mac16(acc0, run0, mn0, mx0, colf, base, w, lov, hiv)
            acc1, run1, mn1, mx1 = _mac16(acc1, run1, mn1, mx1, colf, base + 16, w, lov, hiv)
            acc2, run2, mn2, mx2 = _mac16(acc2, run2, mn2, mx2, colf, base + 32, w, lov, hiv)
            acc3, run3, mn3, mx3 = _mac16(acc3, run3, mn3, mx3, colf, base + 48, w, lov, hiv)
        _vstore(buf, 0, acc0); _vstore(buf, 16, acc1)  # noqa: E702
        _vstore(buf, 32, acc2); _vstore(buf, 48, acc3)  # noqa: E702
        _vstore(buf, 128, mn0); _vstore(buf, 144, mn1)  # noqa: E702
        _vstore(buf, 160, mn2); _vstore(buf, 176, mn3)  # noqa: E702
        _vstore(buf, 192, mx0); _vstore(buf, 208, mx1)  # noqa: E702
        _vstore(buf, 224, mx2); _vstore(buf, 240, mx3)  # noqa: E702
        ev[t], mins[t], maxs[t] = _lanes_end(out, r0, r, c0, j0, n, lo, hi, buf[:ZMM_LANES],
                                             buf[2 * ZMM_LANES:3 * ZMM_LANES],
                                             buf[3 * ZMM_LANES:])


# ============================================================================ MAC planning

def _i64(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.int64))


@njit(**_JIT)
def _min_max(a):
    lo = a[0]
    hi = a[0]
    for v in a:
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi


def _max_abs(a: np.ndarray, offset: int = 0) -> int:
    """max |a - offset| over a (0 for an empty array), without forming a - offset."""
    if a.size == 0:
        return 0
    lo, hi = _min_max(_i64(a).ravel())
    return max(abs(int(hi) - offset), abs(int(lo) - offset))


@njit(**_JIT)
def _row_stats(w2):
    """min, max and the largest row sum of |w|, for w2 [rows, k] whose sums the caller knows
    fit int64."""
    lo = w2[0, 0]
    hi = w2[0, 0]
    l1 = np.int64(0)
    for r in range(w2.shape[0]):
        a = np.int64(0)
        for k in range(w2.shape[1]):
            v = w2[r, k]
            lo = min(lo, v)
            hi = max(hi, v)
            a += abs(v)
        l1 = max(l1, a)
    return lo, hi, l1


@njit(**_JIT)
def _pack_weights(wz, width, cwn, opad, wp):
    """wp[((ky * kw + kx) * cwn + cw) * opad + o] = the int32 word of channels
    cw * per_word .. + per_word of tap (ky, kx) for output o: int16 pairs for width 16, int8
    quads for width 8 (two's complement); channels past C pad with w = 0."""
    oc, c_in, kh, kw = wz.shape
    per_word = 32 // width
    mask = (1 << width) - 1
    for ky in range(kh):
        for kx in range(kw):
            for cw in range(cwn):
                base = ((ky * kw + kx) * cwn + cw) * opad
                for o in range(opad):
                    word = np.int64(0)
                    for i in range(per_word):
                        c = cw * per_word + i
                        v = wz[o, c, ky, kx] if (o < oc and c < c_in) else 0
                        word |= (v & mask) << (i * width)
                    wp[base + o] = np.int32(word - (1 << 32) if word >= (1 << 31) else word)


def _max_l1(rows: np.ndarray) -> int:
    """max over rows (last axis summed) of sum |row|, exactly."""
    if rows.size == 0:
        return 0
    k = rows.shape[-1]
    if _max_abs(rows) * max(k, 1) < (1 << 62):
        return int(np.abs(rows).sum(axis=-1).max())
    return max(sum(abs(int(v)) for v in row) for row in rows.reshape(-1, k))


# Paths a test may switch off (monkeypatch) to exercise the ones behind them.
DISABLED_PATHS: set[str] = set()
INT16_MAX = (1 << 15) - 1


def gemm_path(bound: int, max_operand: int = INT16_MAX + 1, vnni_shape: bool = False,
              int8_bound: int | None = None) -> str:
    """The exact GEMM for order-independent sums whose every partial sum is at most ``bound``.

    ``vnni8``: uint8 inputs by int8 weights (the caller passes ``int8_bound``, the bound of the
    offset sum VPDPBUSD forms, only when the operands fit) and ``vnni16``: int16 operands
    (``max_operand`` <= 32767), both summed in wrapping int32 lanes, exact when the sum fits
    int32 (its residue mod 2**32 is then the sum); ``float32`` / ``float64``: BLAS, exact
    below 2**24 / 2**53; ``int64``: the numba loop, always exact.
    """
    vnni = vnni_shape and VNNI_AVAILABLE
    if (vnni and int8_bound is not None and int8_bound < INT32_LANE
            and "vnni8" not in DISABLED_PATHS):
        return "vnni8"
    if (vnni and max_operand <= INT16_MAX and bound < INT32_LANE
            and "vnni16" not in DISABLED_PATHS):
        return "vnni16"
    if bound < FLOAT32_EXACT and "float32" not in DISABLED_PATHS:
        return "float32"
    if bound < FLOAT64_EXACT and "float64" not in DISABLED_PATHS:
        return "float64"
    return "int64"


_GEMM_DTYPE = {"vnni8": np.int8, "vnni16": np.int16, "float32": np.float32,
               "float64": np.float64, "int64": np.int64}


class MacPlan:
    """How one MAC op is computed, decided from the spec and bounds on the operands.

    ``kind`` 'gemm' (order-independent: any exact GEMM, then wrap/clamp) or 'lanes'
    (order-dependent saturation in the declared order); ``path`` the engine.
    """

    def __init__(self, acc: AccumulatorSpec, bound: int, max_x: int, max_w: int, max_bias: int,
                 vnni_shape: bool = False, int8_bound: int | None = None, x_offset: int = 0):
        self.lo, self.hi, self.bits = acc.lo, acc.hi, acc.bits
        self.x_offset = x_offset   # vnni8: what makes the input unsigned
        self.bound = bound         # of |any partial sum of the products|
        self.max_operand = max(max_x, max_w)
        self.wrap = acc.overflow is Overflow.WRAP
        if acc.order_independent:
            self.kind = "gemm"
            self.step = 0
            self.path = gemm_path(bound, max(max_x, max_w), vnni_shape, int8_bound)
        else:
            self.kind = "lanes"
            self.step = 1 if acc.saturation_point is SaturationPoint.PER_MAC else acc.tile_k
            fits32 = (bound + max_bias < INT32_LANE
                      and max(-acc.lo, acc.hi) + bound < INT32_LANE
                      and "int32" not in DISABLED_PATHS)
            self.path = "int32" if fits32 else "int64"
        self.dtype = np.int32 if self.path == "int32" else _GEMM_DTYPE.get(self.path, np.int64)
        if self.path == "int32" and self.step == 1 and max(max_x, max_w) <= INT16_MAX:
            self.dtype = np.int16  # operands only: half the memory traffic; lanes stay int32

    def run(self, a, col, rows_per_group, bias_r, bias_j, out, r0, c0):
        """Accumulate one block into out[r0 + r, c0 + j]; returns (events, min, max)."""
        rr, kk = a.shape
        ntask = rr * -(-col.shape[1] // LANE)
        work = rr * kk * col.shape[1]
        if self.kind == "lanes":
            ev, mins, maxs = (np.zeros(ntask, np.int64) for _ in range(3))
            if (self.path == "int32" and self.step == 1 and AVX512_AVAILABLE
                    and "zmm" not in DISABLED_PATHS):
                jj = col.shape[1]
                jp = -(-jj // ZMM_LANES) * ZMM_LANES
                if jp != jj or not col.flags.c_contiguous:
                    padded = np.zeros((col.shape[0], jp), col.dtype)
                    padded[:, :jj] = col
                    col = padded
                ntask = rr * (jp // ZMM_LANES)
                ev, mins, maxs = (np.zeros(ntask, np.int64) for _ in range(3))
                run_tasks(_per_mac_lanes_zmm, ntask, 8 * work, a, col.reshape(-1), jp, jj,
                           rows_per_group, bias_r, bias_j, self.lo, self.hi, out, r0, c0, ev,
                           mins, maxs)
            elif self.path == "int32" and self.step == 1:
                run_tasks(_per_mac_lanes_i32, ntask, 8 * work, a, col, rows_per_group, bias_r,
                           bias_j, self.lo, self.hi, out, r0, c0, ev, mins, maxs)
            else:
                run_tasks(_saturating_lanes, ntask, 8 * work, a, col, rows_per_group, bias_r,
                           bias_j, self.lo, self.hi, self.step, out, r0, c0, ev, mins, maxs)
            if ntask == 0:
                return 0, 0, 0
            return int(ev.sum()), int(mins.min()), int(maxs.max())
        if self.path == "int64":
            g = np.empty((a.shape[0], col.shape[1]), np.int64)
            run_tasks(_gemm_exact, ntask, 2 * work, a, col, rows_per_group, g)
        else:
            groups = a.shape[0] // rows_per_group
            kk = a.shape[1]
            if groups == 1:
                g = a @ col
            else:
                g = np.matmul(a.reshape(groups, rows_per_group, kk),
                              col.reshape(groups, kk, col.shape[1]))
                g = g.reshape(a.shape[0], col.shape[1])
        ev, mn, mx = _finish_exact(g, bias_r, bias_j, self.lo, self.hi, self.bits, self.wrap,
                                   out, r0, c0)
        return int(ev), int(mn), int(mx)


class _Stats:
    def __init__(self):
        self.events, self.lo, self.hi = 0, 0, 0

    def add(self, ev, lo, hi):
        self.events += int(ev)
        self.lo, self.hi = min(self.lo, int(lo)), max(self.hi, int(hi))

    def result(self, outputs: int) -> OverflowStats:
        return OverflowStats(self.events, outputs, signed_bits_needed(self.lo, self.hi))


class _VnniConv:
    """A conv (groups 1) prepared for a VNNI engine of ``width`` 8 or 16 bits: weights packed
    once, then batch by batch the input is packed and convolved."""

    def __init__(self, width, wz, x_shape, strides, pads, dilations, oh, ow):
        _, c, h, w = x_shape
        oc, _, kh, kw = wz.shape
        per_word = 32 // width
        self.width = width
        self.geometry = (kh, kw, *strides, *dilations)
        self.pads = pads
        self.oc, self.oh, self.ow = oc, oh, ow
        self.cwn = -(-c // per_word)               # int32 words per position
        # at most 32 channels (8-bit): the 12-position tile of 32 lanes, no padded channels
        self.n32 = width == 8 and oc <= 32
        self.opad = 32 if self.n32 else -(-oc // 64) * 64
        positions = 2 * VNNI_POSITIONS if self.n32 else VNNI_POSITIONS
        owe = -(-ow // positions) * positions
        (sh, sw), (dh, dw) = strides, dilations
        self.hp = max(pads[0] + h, (oh - 1) * sh + (kh - 1) * dh + 1)
        self.wpe = max(pads[1] + w, (owe - 1) * sw + (kw - 1) * dw + 1)
        self.wp = np.empty(kh * kw * self.cwn * self.opad, np.int32)
        _pack_weights(_i64(wz), width, self.cwn, self.opad, self.wp)
        # width 8 reads x + off against w - zw: each sum is (zx + off) * wsum too large
        self.wsum = _i64(wz).reshape(oc, -1).sum(axis=1)
        self.ntask = oh * -(-self.opad // 64)
        self.work = oh * owe * self.opad * kh * kw * self.cwn

    def run(self, x, zx, b, plan, acc_out, fused: "_FusedRequant | None" = None, b0: int = 0):
        """Pack the images x [n, c, h, w] and convolve them all in one call: the accumulators
        into acc_out [n, oc, oh, ow] (or none, if it is empty), the fused requantize's output
        into ``fused.y[b0:b0 + n]``; the caller has checked that the operands fit and the sums
        are exact. Returns (events, min, max)."""
        n = x.shape[0]
        ep = (plan.lo, plan.hi, plan.bits, int(plan.wrap)) + (
            fused.ep if fused is not None else _NO_REQUANT)
        arrays = fused.arrays(b0, b0 + n) if fused is not None else _NO_REQUANT_ARRAYS
        ntask = n * self.ntask
        ev, mins, maxs = (np.zeros(ntask, np.int64) for _ in range(3))
        if self.width == 8:
            off = plan.x_offset
            xq = np.full((n, self.hp, self.wpe, 4 * self.cwn), zx + off, np.uint8)
            if 4 * self.cwn > x.shape[1]:
                xq[..., x.shape[1]:] = 0      # channels past C: their weights are 0
            run_tasks(_pack_nhwc_u8, n, 2 * x.size, x, off, self.pads[0], self.pads[1], xq)
            cb = b - (zx + off) * self.wsum
            kernel = _conv_vnni8_n32 if self.n32 else _conv_vnni8
        else:
            xq = np.zeros((n, self.hp, self.wpe, 2 * self.cwn), np.int16)
            run_tasks(_pack_nhwc16, n, 2 * x.size, x, zx, self.pads[0], self.pads[1], xq)
            cb = b
            kernel = _conv_vnni16
        run_tasks(kernel, ntask, n * self.work, xq.view(np.int32).ravel(), self.wp,
                   *self.geometry, self.wpe, self.cwn, self.opad, cb, ep, *arrays[:3], self.oc,
                   self.oh, self.ow, acc_out.reshape(-1), arrays[3], ev, mins, maxs,
                   self.hp * self.wpe * self.cwn)
        return int(ev.sum()), int(mins.min()), int(maxs.max())


_NO_REQUANT = (EP_NONE, 64, 0, 0, 0, 0)
_NO_REQUANT_ARRAYS = (np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.float32),
                      np.zeros(0, np.int64))
_NO_ACC = np.zeros(0, np.int64)


class _FusedRequant:
    """A requantize computed in a MAC engine's epilogue: its constants per output channel and
    its output y [n, oc, ...] (int64)."""

    def __init__(self, prepared: PreparedScale, oc: int, acc_zp: int, y_zp: int, qmin: int,
                 qmax: int, y: np.ndarray):
        m = np.asarray(prepared.multiplier).ravel()
        sh = np.asarray(prepared.shift).ravel()
        if prepared.mode is RequantMode.FLOAT_SCALE:
            rq = EP_FLOAT
            self.fscale = np.ascontiguousarray(np.broadcast_to(m.astype(np.float32), (oc,)))
            self.mult = self.shift = np.zeros(oc, np.int64)
        else:
            rq = _ROUNDING_CODE[prepared.rounding]
            self.mult = np.ascontiguousarray(np.broadcast_to(m.astype(np.int64), (oc,)))
            self.shift = np.ascontiguousarray(np.broadcast_to(sh.astype(np.int64), (oc,)))
            self.fscale = np.zeros(oc, np.float32)
        bits = min(max(int(prepared.result_bits), 1), 64)
        self.ep = (rq, bits, int(acc_zp), int(y_zp), int(qmin), int(qmax))
        self.y = y

    @staticmethod
    def applies(prepared: PreparedScale, oc: int, axis: int) -> bool:
        """The epilogue's form of requantize: one scale, or one per output channel (axis 1);
        integer shifts within 0..62, as the requantize kernel's."""
        m, sh = np.asarray(prepared.multiplier), np.asarray(prepared.shift)
        if m.size != sh.size or m.size not in (1, oc) or (m.size > 1 and axis != 1):
            return False
        return prepared.mode is RequantMode.FLOAT_SCALE or bool(
            sh.size and sh.min() >= 0 and sh.max() <= 62)

    def arrays(self, b0: int, b1: int):
        """The constants and the output of images b0..b1, flattened."""
        return self.mult, self.shift, self.fscale, self.y[b0:b1].reshape(-1)


def conv_plan(x, w, bias, x_zp, w_zp, groups, acc: AccumulatorSpec) -> MacPlan:
    """The plan conv2d would use for these operands (all batches at once; for tests and the
    benchmark)."""
    prepared = PreparedConv(w, bias, w_zp, (1, 1), (0, 0, 0, 0), (1, 1), groups)
    return prepared.weights.plan(_i64(x).ravel(), int(x_zp), acc)


class _Weights:
    """What the plan needs to know of the weights and bias."""

    def __init__(self, wz, b, groups):
        self.wz = wz
        w2 = _i64(wz).reshape(wz.shape[0], -1)
        self.w_lo = self.w_hi = self.l1 = 0
        if w2.size and _max_abs(w2) * w2.shape[1] < (1 << 60):  # int64 sums are exact
            self.w_lo, self.w_hi, self.l1 = (int(v) for v in _row_stats(w2))
        elif w2.size:
            self.w_lo, self.w_hi = (int(v) for v in _min_max(w2.ravel()))
            self.l1 = _max_l1(w2)
        self.max_w = max(-self.w_lo, self.w_hi, 0)
        self.max_b = _max_abs(b)
        self.vnni_shape = groups == 1

    def plan(self, xs, zx, acc, x_range: tuple[int, int] | None = None) -> MacPlan:
        """The plan for inputs xs (any shape) with zero point zx; ``x_range``: bounds the
        inputs are known to lie within (their type's), which spares the scan of xs."""
        lo, hi = x_range if x_range is not None else _min_max(xs) if xs.size else (zx, zx)
        x_lo, x_hi = int(lo) - zx, int(hi) - zx
        max_x = max(-x_lo, x_hi, 0)
        int8, off = None, 0
        if self.vnni_shape and VNNI_AVAILABLE and -128 <= self.w_lo and self.w_hi <= 127:
            # the smallest offset making the input and the padding (zx) unsigned bytes
            off = -min(int(lo), zx)
            top = max(int(hi), zx) + off
            if top <= 255:
                int8 = top * self.l1   # bound of |sum (x + off) * (w - zw)|
        return MacPlan(acc, max_x * self.l1, max_x, self.max_w, self.max_b, self.vnni_shape,
                       int8, off)


class PreparedConv:
    """A conv's constant operands made ready once (a Program node's weights): the zero-point
    corrected weights and bias, their statistics for the plans, and each VNNI engine's packed
    weights, kept for every input shape it meets."""

    def __init__(self, w, bias, w_zp, strides, pads, dilations, groups):
        w = np.asarray(w, dtype=np.int64)
        oc = w.shape[0]
        self.wz = w - reference._channel_zero_points(w_zp, oc)[:, None, None, None]
        self.b = np.zeros(oc, np.int64) if bias is None else _i64(bias).reshape(oc)
        self.strides, self.dilations = tuple(strides), tuple(dilations)
        self.pads, self.groups = tuple(int(p) for p in pads), groups
        self.weights = _Weights(self.wz, self.b, groups)
        # VNNI engines, GEMM matrices and depthwise weights, by shape and dtype
        self._engines: dict[tuple, object] = {}

    @property
    def depthwise(self) -> bool:
        """Each output channel reads one input plane (groups = input channels)."""
        return self.groups > 1 and self.wz.shape[1] == 1

    def run_depthwise(self, x, bi, zx, plan, oh, ow, acc_out, fused: "_FusedRequant | None"):
        """Batch bi through the depthwise kernel (order-independent plans): returns (events,
        min, max); the accumulators into acc_out [oc, oh, ow] (if it has elements), the fused
        requantize's output into ``fused.y[bi]``."""
        c, h, w = x.shape[1:]
        oc, _, kh, kw = self.wz.shape
        (sh, sw), (dh, dw) = self.strides, self.dilations
        pt, pl, pb, pr = self.pads
        hp = max(pt + h + pb, (oh - 1) * sh + (kh - 1) * dh + 1)
        wp = max(pl + w + pr, (ow - 1) * sw + (kw - 1) * dw + 1)
        # int32 where every partial sum fits (then every product with a nonzero weight does);
        # int16 operands on 512-bit vectors where they fit too
        dtype = np.int32 if plan.bound < INT32_LANE else np.int64
        zmm = (dtype == np.int32 and AVX512_AVAILABLE and "zmm" not in DISABLED_PATHS
               and plan.max_operand <= INT16_MAX)
        opad = -(-oc // 16) * 16 if zmm else oc
        if zmm:
            dtype = np.int16
        xp = np.zeros((hp, wp, opad), dtype)
        run_tasks(_pack_nhwc_repeat, h, 8 * x[bi].size, x, bi, zx, oc // c, pt, pl, xp)
        ep = (plan.lo, plan.hi, plan.bits, int(plan.wrap)) + (
            fused.ep if fused is not None else _NO_REQUANT)
        mult, shift, fscale, y = fused.arrays(bi, bi + 1) if fused is not None else \
            _NO_REQUANT_ARRAYS
        ev, mins, maxs = (np.zeros(oh, np.int64) for _ in range(3))
        key = ("depthwise", np.dtype(dtype).str, opad)   # weights [kh, kw, opad]
        if key not in self._engines:
            wk = np.zeros((kh, kw, opad), dtype)
            wk[:, :, :oc] = self.wz.reshape(oc, kh, kw).transpose(1, 2, 0)
            self._engines[key] = wk
        kernel = _depthwise_zmm if zmm else _depthwise
        run_tasks(kernel, oh, 4 * oc * oh * ow * kh * kw, xp, self._engines[key], sh, sw, dh,
                   dw, oh, ow, self.b, ep, mult, shift, fscale, acc_out.reshape(-1), y, ev,
                   mins, maxs)
        return int(ev.sum()), int(mins.min()), int(maxs.max())

    def columns(self, dtype) -> np.ndarray:
        """The weights as the [C * kh * kw, oc] matrix of a GEMM, in ``dtype`` (kept)."""
        key = ("columns", np.dtype(dtype).str)
        if key not in self._engines:
            self._engines[key] = np.ascontiguousarray(self.wz.reshape(self.wz.shape[0], -1).T,
                                                      dtype=dtype)
        return self._engines[key]

    def engine(self, path: str, x_shape, oh: int, ow: int) -> _VnniConv:
        key = (path, tuple(x_shape[1:]))
        if key not in self._engines:
            pt, pl = self.pads[:2]
            self._engines[key] = _VnniConv(8 if path == "vnni8" else 16, self.wz, x_shape,
                                           self.strides, (pt, pl), self.dilations, oh, ow)
        return self._engines[key]


# ============================================================================ MAC ops

def conv2d(x, w, bias, x_zp, w_zp, strides, pads, dilations, groups,
           acc: AccumulatorSpec, prepared: PreparedConv | None = None
           ) -> tuple[np.ndarray, OverflowStats]:
    """acc[n, o, y, x] = bias[o] + sum over (c, ky, kx) of (x - x_zp) * (w - w_zp[o]).

    Planned batch by batch (the exactness bounds use that batch's input range), so one call
    may use different engines for different batches; each is exact. ``prepared``: the same
    weights, bias and geometry made ready beforehand (``PreparedConv``), w and bias unread.
    """
    if prepared is None:
        prepared = PreparedConv(w, bias, w_zp, strides, pads, dilations, groups)
    out, _, stats = _conv(x, prepared, x_zp, acc)
    return out, stats


def conv2d_requantize(x, prepared: PreparedConv, x_zp, acc: AccumulatorSpec,
                      scale: PreparedScale, axis: int, acc_zp: int, y_zp: int, qmin: int,
                      qmax: int, keep_acc: bool = True, wide: bool = False,
                      x_range: tuple[int, int] | None = None):
    """``requantize(conv2d(...), acc_zp, scale, axis, y_zp, qmin, qmax)`` in one pass where the
    engine can requantize in its epilogue (the VNNI and depthwise engines), else the two in
    turn; returns (y, the accumulators or None unless ``keep_acc``, the conv's statistics).

    x may be any integer dtype (the VNNI engines read it as it is); y is the smallest of int8,
    uint8 and int16 that holds [qmin, qmax] (an eighth or a quarter of int64's memory traffic,
    for the epilogue's stores and the next layer's packing) unless ``wide``, else int64, and
    holds the same values as the unfused ops' int64 result. ``x_range``: bounds of x's type, planned
    on instead of scanning x."""
    x = _ints(x)
    oc = prepared.wz.shape[0]
    fuse = x.ndim == 4 and _FusedRequant.applies(scale, oc, axis)
    out, y, stats = _conv(x, prepared, x_zp, acc,
                          (scale, acc_zp, y_zp, qmin, qmax, wide) if fuse else None,
                          keep_acc or not fuse, x_range)
    if y is None:   # not fused, or an engine that does not requantize: the two ops in turn
        y = requantize(out, acc_zp, scale, axis, y_zp, qmin, qmax)
        if not wide:
            y = y.astype(narrow_dtype(qmin, qmax))
    return y, out if keep_acc else None, stats


def narrow_dtype(lo: int, hi: int) -> np.dtype:
    """The smallest of int8, uint8, int16 holding [lo, hi], else int64."""
    for t in (np.int8, np.uint8, np.int16):
        info = np.iinfo(t)
        if info.min <= lo and hi <= info.max:
            return np.dtype(t)
    return np.dtype(np.int64)


def _ints(x) -> np.ndarray:
    """x as a C-contiguous integer array of its own dtype (int64 for anything else)."""
    x = np.asarray(x)
    return np.ascontiguousarray(x) if x.dtype.kind in "iu" and x.dtype.itemsize < 8 else _i64(x)


def _conv(x, prepared: PreparedConv, x_zp, acc, requant=None, keep_acc=True, x_range=None):
    """The conv ``prepared``, with the requantize ``requant`` (scale, acc_zp, y_zp, qmin, qmax,
    wide) after it when given: returns (accumulators or None, y or None, stats). x: any
    integer dtype (see ``_ints``), read as it is by the VNNI engines' packing, as int64 by the
    others."""
    x = _ints(x)
    zx = int(x_zp)
    n, c, h, wd = x.shape
    oc, icg, kh, kw = prepared.wz.shape
    groups = prepared.groups
    (sh, sw), (dh, dw) = prepared.strides, prepared.dilations
    pt, pl, pb, pr = prepared.pads
    if min(prepared.pads) < 0 or oc % groups or c != icg * groups:
        out, stats = reference.conv2d(_i64(x), prepared.wz, prepared.b, x_zp, 0,
                                      prepared.strides, prepared.pads, prepared.dilations,
                                      groups, acc)
        return out, None, stats
    if n > 1 and kh == kw == 1 and sh == sw == 1 and not any(prepared.pads):
        # a pointwise conv (a Transformer's per-channel requantize over [tokens, C, 1, 1] among
        # them) reads each position alone: run the batch as one image, its positions side by
        # side, instead of thousands of one-position batches; each output's MACs and their
        # order are unchanged, and the plan's bounds cover every batch (unfused: the caller
        # requantizes the result)
        one = np.ascontiguousarray(_i64(x).transpose(1, 0, 2, 3)).reshape(1, c, n * h, wd)
        out, _, stats = _conv(one, prepared, x_zp, acc)
        return np.ascontiguousarray(out.reshape(oc, n, h, wd).transpose(1, 0, 2, 3)), None, stats
    oh = conv_output_size(h, kh, sh, pt, pb, dh)
    ow = conv_output_size(wd, kw, sw, pl, pr, dw)
    out = np.empty((n, oc, oh, ow), np.int64) if keep_acc or requant is None else None
    y = None
    if requant is not None:
        y = np.empty((n, oc, oh, ow), np.int64 if requant[5] else narrow_dtype(*requant[3:5]))
    if n * oc * oh * ow == 0:
        return out, y, OverflowStats(0, 0, 1)
    fused = None if requant is None else _FusedRequant(requant[0], oc, *requant[1:5], y)
    stats = _Stats()
    # the whole batch in one VNNI call where its range allows (one pack, one task list: small
    # images would otherwise pay a call's overhead per image); else batch by batch, each on
    # the engine its own range allows
    whole = prepared.weights.plan(x.reshape(-1), zx, acc, x_range) if n > 1 else None
    if whole is not None and whole.path in ("vnni8", "vnni16"):
        engine = prepared.engine(whole.path, x.shape, oh, ow)
        stats.add(*engine.run(x, zx, prepared.b, whole, out if out is not None else _NO_ACC,
                              fused))
        return out, y, stats.result(n * oc * oh * ow)
    x64 = None   # x as int64, made only for a batch an im2col engine takes
    for bi in range(n):
        plan = prepared.weights.plan(x[bi].reshape(-1), zx, acc, x_range)
        acc_bi = out[bi] if out is not None else _NO_ACC
        if plan.path in ("vnni8", "vnni16"):
            engine = prepared.engine(plan.path, x.shape, oh, ow)
            stats.add(*engine.run(x[bi:bi + 1], zx, prepared.b, plan,
                                  _NO_ACC if out is None else out[bi:bi + 1], fused, bi))
            continue
        if (prepared.depthwise and plan.kind == "gemm" and plan.path != "int64"
                and "depthwise" not in DISABLED_PATHS):
            stats.add(*prepared.run_depthwise(x, bi, zx, plan, oh, ow, acc_bi, fused))
            continue
        if out is None:
            acc_bi = np.empty((oc, oh, ow), np.int64)
        x64 = _i64(x) if x64 is None else x64
        _conv_batch(x64, bi, prepared.wz, prepared.b, zx, (sh, sw), (pt, pl), (dh, dw), groups,
                    oh, ow, acc, plan, acc_bi.reshape(oc, oh * ow), stats)
        if requant is not None:
            y[bi] = requantize(acc_bi, requant[1], requant[0], 0, *requant[2:5])
    return out, y, stats.result(n * oc * oh * ow)


def _conv_batch(x, bi, wz, b, zx, strides, pads, dilations, groups, oh, ow, acc, plan, out2,
                stats):
    """One batch through im2col and a GEMM or lane engine, row chunk by row chunk."""
    oc, icg, kh, kw = wz.shape
    (sh, sw), (pt, pl), (dh, dw) = strides, pads, dilations
    per_group = oc // groups
    kg = icg * kh * kw
    # rows of each group's K in the declared order (any order serves order-independent plans)
    cc, yy, xx = np.meshgrid(np.arange(icg), np.arange(kh), np.arange(kw), indexing="ij")
    wmat = wz.reshape(oc, kg)
    if plan.kind == "lanes" and acc.mac_order is MacOrder.KH_KW_CIN:
        cc, yy, xx = (v.transpose(1, 2, 0) for v in (cc, yy, xx))
        wmat = wz.transpose(0, 2, 3, 1).reshape(oc, kg)
    row_c = np.concatenate([cc.ravel() + g * icg for g in range(groups)]).astype(np.int64)
    row_ky = np.tile(yy.ravel(), groups).astype(np.int64)
    row_kx = np.tile(xx.ravel(), groups).astype(np.int64)
    a = np.ascontiguousarray(wmat, dtype=plan.dtype)
    itemsize = np.dtype(plan.dtype).itemsize
    rows_per_chunk = max(1, min(oh, COL_BUDGET_BYTES // max(1, groups * kg * ow * itemsize)))
    for oy0 in range(0, oh, rows_per_chunk):
        oy1 = min(oh, oy0 + rows_per_chunk)
        col = np.empty((groups * kg, (oy1 - oy0) * ow), plan.dtype)
        im2col_args = (x, bi, zx, row_c, row_ky, row_kx, sh, sw, dh, dw, pt, pl, oy0, oy1, ow,
                       col)
        if plan.kind == "lanes":
            run_tasks(_im2col, col.shape[0], col.size, *im2col_args)
        else:
            _im2col(0, col.shape[0], *im2col_args)
        stats.add(*plan.run(a, col, per_group, b, np.zeros(col.shape[1], np.int64), out2, 0,
                            oy0 * ow))


def fully_connected(x, w, bias, x_zp, w_zp, acc: AccumulatorSpec,
                    prepared: PreparedConv | None = None):
    """acc[n, m] = bias[m] + sum over k of (x[n, k] - x_zp) * (w[m, k] - w_zp[m]).

    ``prepared``: the same weights and bias made ready beforehand, as the 1x1 conv
    ``PreparedConv(w[:, :, None, None], ...)`` (w and bias unread)."""
    x = _i64(x)
    zx = int(x_zp)
    if prepared is None:
        w = np.asarray(w, dtype=np.int64)
        prepared = PreparedConv(w.reshape(*w.shape, 1, 1), bias, w_zp, (1, 1), (0, 0, 0, 0),
                                (1, 1), 1)
    m_out, k = prepared.wz.shape[:2]
    wz, b = prepared.wz.reshape(m_out, k), prepared.b
    out = np.empty((x.shape[0], m_out), np.int64)
    if out.size == 0:
        return out, OverflowStats(0, 0, 1)
    sparse = _sparse_fully_connected(x, zx, wz, b, acc)
    if sparse is not None:
        return sparse
    plan = prepared.weights.plan(x.reshape(-1), zx, acc)
    stats = _Stats()
    if plan.path in ("vnni8", "vnni16"):
        # a 1 x N "image" of K channels and a 1x1 kernel: the output [M, 1, N] is out transposed
        x4 = np.ascontiguousarray(x.T).reshape(1, k, 1, x.shape[0])
        conv = prepared.engine(plan.path, x4.shape, 1, x.shape[0])
        out_t = np.empty((m_out, 1, x.shape[0]), np.int64)
        stats.add(*conv.run(x4, zx, b, plan, out_t))
        out[:] = out_t.reshape(m_out, -1).T
        return out, stats.result(out.size)
    xz = x - np.int64(zx)
    a = np.ascontiguousarray(xz, dtype=plan.dtype)
    col = prepared.columns(plan.dtype)
    stats.add(*plan.run(a, col, a.shape[0], np.zeros(a.shape[0], np.int64), b, out, 0, 0))
    return out, stats.result(out.size)


def _sparse_fully_connected(x, zx, wz, b, acc: AccumulatorSpec):
    """One-hot and other mostly-zero inputs (a Transformer's two-hot embedding rows): a zero
    product adds nothing, so only the nonzero columns are summed. Exact for order-independent
    accumulators (wrap, or saturation of the final sum); None where the dense path must run."""
    if not acc.order_independent or x.shape[1] < 256:
        return None
    rows, cols = np.nonzero(x != zx)
    if len(rows) * 32 > x.size:
        return None
    per_row = np.bincount(rows, minlength=x.shape[0])
    width = max(int(per_row.max(initial=0)), 1)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    coef = np.zeros((x.shape[0], width), np.int64)
    index = np.zeros((x.shape[0], width), np.int64)
    coef[rows, slot] = x[rows, cols] - zx
    index[rows, slot] = cols
    # terms[n, m, j] = coef[n, j] * w[m, index[n, j]]: the contract's accumulate sees P = N*M outputs
    terms = coef[:, None, :] * wz[:, index].transpose(1, 0, 2)
    values, stats = fp.accumulate(terms.reshape(-1, width), np.broadcast_to(b, terms.shape[:2]).reshape(-1), acc)
    return values.reshape(x.shape[0], -1), stats


def matmul(a, b, a_zp, b_zp, acc: AccumulatorSpec):
    """acc[..., n, m] = sum over k of (a[..., n, k] - a_zp) * (b[..., k, m] - b_zp)."""
    a = np.asarray(a, dtype=np.int64) - np.int64(a_zp)
    b = np.asarray(b, dtype=np.int64) - np.int64(b_zp)
    b = np.broadcast_to(b, a.shape[:-2] + b.shape[-2:])
    batch = a.shape[:-2]
    a2 = np.ascontiguousarray(a.reshape(-1, *a.shape[-2:]))
    b2 = np.ascontiguousarray(b.reshape(-1, *b.shape[-2:]))
    nb, rows, kk = a2.shape
    cols = b2.shape[2]
    out = np.empty((nb, rows, cols), np.int64)
    if out.size == 0:
        return out.reshape(*batch, a.shape[-2], b.shape[-1]), OverflowStats(0, 0, 1)
    amax = _max_abs(a2)
    plan = MacPlan(acc, amax * _max_l1(b2.transpose(0, 2, 1)), amax, _max_abs(b2), 0)
    a2t = a2.astype(plan.dtype)
    b2t = b2.astype(plan.dtype)
    zero_r, zero_j = np.zeros(rows, np.int64), np.zeros(cols, np.int64)
    stats = _Stats()
    if plan.kind == "gemm" and plan.path != "int64" and nb > 1:
        g = np.matmul(a2t, b2t).reshape(nb * rows, cols)
        stats.add(*_finish_exact(g, np.zeros(nb * rows, np.int64), zero_j, plan.lo, plan.hi,
                                 plan.bits, plan.wrap, out.reshape(nb * rows, cols), 0, 0))
    else:
        for i in range(nb):
            stats.add(*plan.run(a2t[i], b2t[i], rows, zero_r, zero_j, out[i], 0, 0))
    return out.reshape(*batch, a.shape[-2], b.shape[-1]), stats.result(out.size)


# ============================================================================ requantize

@njit(inline="always", **_JIT)
def _requant_one(d, m, s, rnd, bits, yzp, qmin, qmax):
    y = _tflite_multiply(d, m, s) if rnd == 4 else _round_shift(d * m, s, rnd)
    return min(max(_wrap(y, bits) + yzp, qmin), qmax)


@njit(inline="always", **_JIT)
def _requant_one_float(d, f, yzp, qmin, qmax):
    y = np.int64(np.rint(np.float32(d) * f))  # float32 product, ties to even
    return min(max(y + yzp, qmin), qmax)


SEGMENT = 4096  # elements per requantize task: one channel's scale throughout


@njit(inline="always", **_JIT)
def _segment(t, size, inner, ch):
    """Task t -> (start, end, channel): runs of ``inner`` elements share a channel (i // inner
    % ch) and are cut into SEGMENT-long pieces, so a task's loop has one scale throughout."""
    per_run = (inner + SEGMENT - 1) // SEGMENT
    run = t // per_run
    start = run * inner + (t - run * per_run) * SEGMENT
    end = min(start + SEGMENT, (run + 1) * inner, size)
    return start, end, run % ch


@njit(**_JIT)
def _requant_int(t0, t1, v, inner, zx, mult, shift, rnd, bits, yzp, qmin, qmax, out):
    """Segments t0..t1 of v (flat): integer (M, S) requantization, the scaled value wrapped to
    ``bits`` (64: untouched)."""
    for t in range(t0, t1):
        start, end, c = _segment(t, v.size, inner, mult.size)
        m, s = mult[c], shift[c]
        src, dst = v[start:end], out[start:end]  # indexes known >= 0: no wraparound checks
        for i in range(src.size):
            dst[i] = _requant_one(src[i] - zx, m, s, rnd, bits, yzp, qmin, qmax)


@njit(**_JIT)
def _requant_float(t0, t1, v, inner, zx, scale, yzp, qmin, qmax, out):
    """Segments t0..t1 of v (flat): float32 scale, ties to even."""
    for t in range(t0, t1):
        start, end, c = _segment(t, v.size, inner, scale.size)
        f = scale[c]
        src, dst = v[start:end], out[start:end]
        for i in range(src.size):
            dst[i] = _requant_one_float(src[i] - zx, f, yzp, qmin, qmax)


def requantize(x, x_zp, prepared: PreparedScale, axis: int, y_zp: int, qmin: int, qmax: int):
    """y = clamp(round((x - x_zp) * scale) + y_zp, qmin, qmax), per channel along axis."""
    v = _i64(x)
    m, s = np.asarray(prepared.multiplier), np.asarray(prepared.shift)
    if m.size > 1:
        if v.ndim == 0 or m.size != v.shape[axis] or s.size != m.size:
            return reference.requantize(x, x_zp, prepared, axis, y_zp, qmin, qmax)
        inner = math.prod(v.shape[axis + 1:])  # elements per channel run
    elif m.size == 1 and s.size == 1:
        inner = v.size
    else:
        return reference.requantize(x, x_zp, prepared, axis, y_zp, qmin, qmax)
    flat = v.reshape(-1)
    out = np.empty(flat.size, np.int64)
    if flat.size == 0:
        return out.reshape(v.shape)
    ntask = (flat.size // inner) * -(-inner // SEGMENT)
    zx, yzp, lo, hi = int(x_zp), int(y_zp), int(qmin), int(qmax)
    if prepared.mode is RequantMode.FLOAT_SCALE:
        f = np.ascontiguousarray(m, dtype=np.float32).ravel()
        run_tasks(_requant_float, ntask, flat.size, flat, inner, zx, f, yzp, lo, hi, out)
    else:
        mult = np.ascontiguousarray(m, dtype=np.int64).ravel()
        shift = np.ascontiguousarray(s, dtype=np.int64).ravel()
        if shift.size and (shift.min() < 0 or shift.max() > 62):
            return reference.requantize(x, x_zp, prepared, axis, y_zp, qmin, qmax)
        rnd = _ROUNDING_CODE[prepared.rounding]
        bits = min(max(int(prepared.result_bits), 1), 64)
        run_tasks(_requant_int, ntask, flat.size, flat, inner, zx, mult, shift, rnd, bits, yzp,
                   lo, hi, out)
    return out.reshape(v.shape)


# ============================================================================ pooling

@njit(**_JIT)
def _pool(t0, t1, x, zx, kh, kw, sh, sw, pt, pl, oh, ow, kind, include_pad, rnd, out):
    """Planes t = (n, c): kind 0, max of the in-bounds taps (INT64_MIN if none); kind 1, the
    mean of (x - zx) over the window, padding counted only with ``include_pad``, rounded."""
    n, c, h, w = x.shape
    for t in range(t0, t1):
        bi = t // c
        ci = t - bi * c
        for oy in range(oh):
            for ox in range(ow):
                best = np.int64(-9223372036854775807 - 1)
                total = np.int64(0)
                count = np.int64(0)
                for ky in range(kh):
                    iy = oy * sh + ky - pt
                    if iy < 0 or iy >= h:
                        continue
                    for kx in range(kw):
                        ix = ox * sw + kx - pl
                        if ix < 0 or ix >= w:
                            continue
                        v = x[bi, ci, iy, ix]
                        best = max(best, v)
                        total += v - zx
                        count += 1
                if kind == 0:
                    out[bi, ci, oy, ox] = best
                else:
                    d = np.int64(kh * kw) if include_pad else count
                    out[bi, ci, oy, ox] = _round_div(total, d, rnd) + zx


def maxpool2d(x, kernel, strides, pads):
    """Max of the integers in each window; padding never wins. The result keeps x's dtype
    (a max is one of its inputs) unless a window can lie wholly in the padding."""
    x = _ints(x)
    if not any(pads) and x.ndim == 4:
        return _maxpool_unpadded(x, kernel, strides)
    if max(pads[0], pads[2]) >= kernel[0] or max(pads[1], pads[3]) >= kernel[1]:
        x = _i64(x)
    return _pool_call(x, 0, kernel, strides, pads, 0, False, 0, x.dtype)


def _maxpool_unpadded(x, kernel, strides):
    """Every window inside the map: the elementwise max of its kh * kw taps' strided views
    (NumPy's vector loops, twice as fast as a window-by-window kernel on 2x2 windows)."""
    (kh, kw), (sh, sw) = kernel, strides
    oh = conv_output_size(x.shape[2], kh, sh, 0, 0, 1)
    ow = conv_output_size(x.shape[3], kw, sw, 0, 0, 1)
    if min(oh, ow) <= 0 or 0 in x.shape[:2]:
        return np.empty((*x.shape[:2], max(oh, 0), max(ow, 0)), x.dtype)
    out = None
    for ky in range(kh):
        for kx in range(kw):
            tap = x[:, :, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw]
            out = tap.copy() if out is None else np.maximum(out, tap, out=out)
    return out


def concat(xs, axis: int):
    """The inputs joined along ``axis``, in the narrowest dtype holding every input's."""
    xs = [_ints(v) for v in xs]
    return np.concatenate(xs, axis=axis, dtype=np.result_type(*xs))


def avgpool2d(x, x_zp, kernel, strides, pads, count_include_pad: bool, rounding: RoundingMode):
    """Mean of (x - zp) over each window, divided with ``rounding``, plus zp."""
    x = _i64(x)
    return _pool_call(x, int(x_zp), kernel, strides, pads, 1, bool(count_include_pad),
                      _ROUNDING_CODE[rounding])


def _pool_call(x, zx, kernel, strides, pads, kind, include_pad, rnd, dtype=np.int64):
    (kh, kw), (sh, sw) = kernel, strides
    pt, pl, pb, pr = (int(p) for p in pads)
    oh = conv_output_size(x.shape[2], kh, sh, pt, pb, 1)
    ow = conv_output_size(x.shape[3], kw, sw, pl, pr, 1)
    out = np.empty((x.shape[0], x.shape[1], oh, ow), dtype)
    if out.size:
        run_tasks(_pool, x.shape[0] * x.shape[1], out.size * kh * kw * 2, x, zx, int(kh),
                   int(kw), int(sh), int(sw), pt, pl, oh, ow, kind, include_pad, rnd, out)
    return out


def global_avgpool2d(x, x_zp, rounding: RoundingMode):
    x = _i64(x)
    h, w = x.shape[2], x.shape[3]
    return avgpool2d(x, x_zp, (h, w), (1, 1), (0, 0, 0, 0), False, rounding)


# ============================================================================ elementwise

@njit(inline="always", **_JIT)
def _add_one(da, db, ma, mb, shift, rnd, yzp, qmin, qmax):
    y = _round_shift(da * ma + db * mb, shift, rnd)
    return min(max(y + yzp, qmin), qmax)


@njit(**_JIT)
def _add_int(t0, t1, a, za, b, zb, ma, mb, shift, rnd, yzp, qmin, qmax, out):
    sa, sb, dst = a[t0:t1], b[t0:t1], out[t0:t1]
    for i in range(dst.size):
        dst[i] = _add_one(sa[i] - za, sb[i] - zb, ma, mb, shift, rnd, yzp, qmin, qmax)


@njit(**_JIT)
def _add_float(a, za, b, zb, fa, fb, yzp, qmin, qmax, out):
    for i in range(a.size):
        total = np.float32(a[i] - za) * fa + np.float32(b[i] - zb) * fb
        y = np.int64(np.rint(total))
        out[i] = min(max(y + yzp, qmin), qmax)


def add(a, a_zp, b, b_zp, multiplier_a, multiplier_b, shift, mode: RequantMode,
        rounding: RoundingMode, y_zp, qmin, qmax):
    """y = clamp(round((a - za) * ra + (b - zb) * rb) + zy): one rounding of the exact sum."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
    shape = a.shape
    a1, b1 = _i64(a).ravel(), _i64(b).ravel()
    out = np.empty(a1.size, np.int64)
    za, zb, yzp, lo, hi = int(a_zp), int(b_zp), int(y_zp), int(qmin), int(qmax)
    if mode is RequantMode.FLOAT_SCALE:
        _add_float(a1, za, b1, zb, np.float32(multiplier_a), np.float32(multiplier_b), yzp, lo,
                   hi, out)
        return out.reshape(shape)
    if not 0 <= int(shift) <= 62:
        return reference.add(a, a_zp, b, b_zp, multiplier_a, multiplier_b, shift, mode,
                             rounding, y_zp, qmin, qmax)
    single = RoundingMode.HALF_AWAY if rounding is RoundingMode.TFLITE else rounding
    run_tasks(_add_int, a1.size, 8 * a1.size, a1, za, b1, zb, int(multiplier_a),
               int(multiplier_b), int(shift), _ROUNDING_CODE[single], yzp, lo, hi, out)
    return out.reshape(shape)


def mul(a, a_zp, b, b_zp, prepared: PreparedScale, y_zp, qmin, qmax):
    """y = clamp(round((a - za) * (b - zb) * scale) + zy), b broadcast to a: the product is one
    NumPy pass (exact in int64 for operands up to 31 bits), its rescale the requantize kernel."""
    if np.asarray(prepared.multiplier).size != 1:
        return reference.mul(a, a_zp, b, b_zp, prepared, y_zp, qmin, qmax)
    product = (_i64(a) - np.int64(a_zp)) * (_i64(b) - np.int64(b_zp))
    return requantize(product, 0, prepared, 0, y_zp, qmin, qmax)


def mean(x, x_zp, axes, keepdims: bool, prepared: PreparedScale, y_zp, qmin, qmax):
    """sum(x - x_zp) over ``axes`` rescaled once: the sums in one NumPy pass (exact in int64),
    their rescale the requantize kernel."""
    sums = (_i64(x) - np.int64(x_zp)).sum(axis=tuple(axes), keepdims=keepdims)
    return requantize(sums, 0, prepared, 0, y_zp, qmin, qmax)


def global_mean(x, x_zp, prepared: PreparedScale, y_zp, qmin, qmax):
    """TFLite's int8 MEAN over height and width (``mean`` over axes 2 and 3)."""
    return mean(x, x_zp, (2, 3), True, prepared, y_zp, qmin, qmax)


@njit(inline="always", **_JIT)
def _rescale_one(v, m, s, rnd):
    return _tflite_multiply(v, m, s) if rnd == 4 else _round_shift(v * m, s, rnd)


@njit(**_JIT)
def _add_per_operand(t0, t1, a, za, b, zb, p, rnd, ls, yzp, qmin, qmax, out):
    """fixed_point.add_per_operand, one element at a time; p = (Ma, Sa, Mb, Sb, My, Sy), each
    operand shifted left ``ls`` bits first."""
    sa, sb, dst = a[t0:t1], b[t0:t1], out[t0:t1]
    for i in range(dst.size):
        ra = _rescale_one((sa[i] - za) << ls, p[0], p[1], rnd)
        rb = _rescale_one((sb[i] - zb) << ls, p[2], p[3], rnd)
        y = _rescale_one(ra + rb, p[4], p[5], rnd)
        dst[i] = min(max(y + yzp, qmin), qmax)


def add_per_operand(a, a_zp, b, b_zp, prepared, rounding: RoundingMode, y_zp, qmin, qmax,
                    left_shift: int = fp.ADD_LEFT_SHIFT):
    """TFLite's ADD: each operand rescaled on its own, the sum rescaled again."""
    p = np.asarray(prepared, dtype=np.int64)
    shifts = p[1::2]
    if shifts.min() < 0 or shifts.max() > 62 or not 0 <= int(left_shift) <= 62:
        return reference.add_per_operand(a, a_zp, b, b_zp, prepared, rounding, y_zp, qmin, qmax,
                                         left_shift)
    a, b = np.broadcast_arrays(_i64(a), _i64(b))
    shape = a.shape
    a1, b1 = np.ascontiguousarray(a).ravel(), np.ascontiguousarray(b).ravel()
    out = np.empty(a1.size, np.int64)
    run_tasks(_add_per_operand, a1.size, 16 * a1.size, a1, int(a_zp), b1, int(b_zp), p,
               _ROUNDING_CODE[rounding], int(left_shift), int(y_zp), int(qmin), int(qmax), out)
    return out.reshape(shape)


@njit(**_JIT)
def _requant_f64(t0, t1, v, inner, zx, scale, yzp, qmin, qmax, out):
    """Segments t0..t1 of v (flat): float64 scale, ties away from zero (C's round)."""
    for t in range(t0, t1):
        start, end, c = _segment(t, v.size, inner, scale.size)
        f = scale[c]
        src, dst = v[start:end], out[start:end]
        for i in range(src.size):
            prod = np.float64(src[i] - zx) * f
            y = -np.floor(-prod + 0.5) if prod < 0 else np.floor(prod + 0.5)
            dst[i] = min(max(np.int64(y) + yzp, qmin), qmax)


def requantize_float64(x, x_zp, scales, axis: int, y_zp: int, qmin: int, qmax: int):
    """y = clamp(round((x - x_zp) * scale) + y_zp) with float64 scales, ties away from zero."""
    v = _i64(x)
    f = np.ascontiguousarray(np.atleast_1d(np.asarray(scales, dtype=np.float64))).ravel()
    if f.size > 1 and (v.ndim == 0 or f.size != v.shape[axis]):
        return reference.requantize_float64(x, x_zp, scales, axis, y_zp, qmin, qmax)
    inner = math.prod(v.shape[axis + 1:]) if f.size > 1 else max(v.size, 1)
    flat = v.reshape(-1)
    out = np.empty(flat.size, np.int64)
    if flat.size:
        ntask = (flat.size // inner) * -(-inner // SEGMENT)
        run_tasks(_requant_f64, ntask, flat.size, flat, inner, int(x_zp), f, int(y_zp),
                   int(qmin), int(qmax), out)
    return out.reshape(v.shape)


def gather(table, indices):
    """The table's rows at ``indices``: one NumPy fancy-indexing pass (a copy, nothing to round)."""
    return reference.gather(table, indices)


def minimum(a, b):
    """The smaller integer of each pair, b broadcast to a: one NumPy pass (a comparison has
    nothing to round)."""
    return np.minimum(_i64(a), _i64(b))


@njit(**_JIT)
def _clamp(x, lo, hi, out):
    for i in range(x.size):
        out[i] = min(max(x[i], lo), hi)


def clamp(x, lo: int, hi: int):
    x = _i64(x)
    out = np.empty(x.size, np.int64)
    _clamp(x.ravel(), int(lo), int(hi), out)
    return out.reshape(x.shape)


@njit(**_JIT)
def _lookup(x, table, offset, out):
    """out = table[x - offset] with NumPy's negative-index wrap; False if an index is out."""
    size = table.size
    for i in range(x.size):
        idx = x[i] - offset
        if idx < 0:
            idx += size
        if idx < 0 or idx >= size:
            return False
        out[i] = table[idx]
    return True


def lookup_table(x, table, offset: int):
    """y = table[x - offset]; offset is the input type's qmin."""
    x = _i64(x)
    t = _i64(table).ravel()
    out = np.empty(x.size, np.int64)
    if not _lookup(x.ravel(), t, int(offset), out):
        raise IndexError(f"lookup_table: an index x - {offset} is outside the {t.size}-entry table")
    return out.reshape(x.shape)


@njit(**_JIT)
def _lookup_interpolated(x, table, fraction_bits, out):
    """fixed_point.lookup_interpolated one element at a time; False if x is not s16."""
    low = (1 << fraction_bits) - 1
    for i in range(x.size):
        u = x[i] + 32768
        if u < 0 or u > 65535:
            return False
        index = u >> fraction_bits
        base = table[index]
        out[i] = (base << fraction_bits) + (table[index + 1] - base) * (u & low)
    return True


def lookup_interpolated(x, table):
    """TOSA's TABLE on a signed 16-bit x (see ``fixed_point.lookup_interpolated``)."""
    x = _i64(x)
    t = _i64(table).ravel()
    if t.size != INTERPOLATED_TABLE_ENTRIES:
        raise IndexError(f"lookup_interpolated: the table has {t.size} entries, needs "
                         f"{INTERPOLATED_TABLE_ENTRIES}")
    out = np.empty(x.size, np.int64)
    if not _lookup_interpolated(x.ravel(), t, INTERPOLATION_FRACTION_BITS, out):
        raise IndexError("lookup_interpolated: an input is outside s16")
    return out.reshape(x.shape)


@njit(**_JIT)
def _softmax_rows(r0, r1, x, valid, masked, table, out_shift, yzp, qmin, qmax, rnd, out, bad):
    """Rows r0..r1 of x [R, L]; ``valid`` [R, L] (read only when ``masked``) is 1 at the
    positions that take part. bad[0] = 1 if an exp_table index is out of range."""
    length = x.shape[1]
    e = np.empty(length, np.int64)
    for r in range(r0, r1):
        # a row with no valid position keeps every e at 0: its mx is never used
        mx = np.int64(0)
        seen = False
        for i in range(length):
            if (not masked or valid[r, i] != 0) and (not seen or x[r, i] > mx):
                mx = x[r, i]
                seen = True
        total = np.int64(0)
        for i in range(length):
            if masked and valid[r, i] == 0:
                e[i] = 0
                continue
            idx = mx - x[r, i]
            if idx >= table.size:
                bad[0] = 1
                return
            e[i] = table[idx]
            total += e[i]
        total = max(total, 1)
        for i in range(length):
            y = _round_div(e[i] << out_shift, total, rnd) + yzp
            out[r, i] = min(max(y, qmin), qmax)


def softmax(x, axis: int, exp_table, out_shift: int, y_zp: int, qmin: int, qmax: int,
            rounding: RoundingMode, mask=None):
    """Integer softmax over the valid positions along ``axis`` (``mask`` nonzero, broadcast to
    x; all of them without a mask); masked positions give y_zp. See ``reference.softmax``."""
    x = np.asarray(x, dtype=np.int64)
    if x.ndim == 0 or x.size == 0 or not 0 <= int(out_shift) <= 62:
        return reference.softmax(x, axis, exp_table, out_shift, y_zp, qmin, qmax, rounding, mask)
    moved = np.moveaxis(x, axis, -1)
    x2 = np.ascontiguousarray(moved).reshape(-1, moved.shape[-1])
    if mask is None:
        valid = np.zeros((1, 1), np.uint8)
    else:
        broadcast = np.broadcast_to(np.asarray(mask) != 0, x.shape)
        valid = np.ascontiguousarray(np.moveaxis(broadcast, axis, -1), dtype=np.uint8)
        valid = valid.reshape(x2.shape)
    out = np.empty(x2.shape, np.int64)
    bad = np.zeros(1, np.uint8)
    run_tasks(_softmax_rows, x2.shape[0], 8 * x2.size, x2, valid, mask is not None,
               _i64(exp_table).ravel(), int(out_shift), int(y_zp), int(qmin), int(qmax),
               _ROUNDING_CODE[rounding], out, bad)
    if bad[0]:
        raise IndexError("softmax: max - x is outside exp_table")
    return np.ascontiguousarray(np.moveaxis(out.reshape(moved.shape), -1, axis))
