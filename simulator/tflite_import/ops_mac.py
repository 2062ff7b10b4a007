"""CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, BATCH_MATMUL (a MAC op, then a requantize), and
PAD, which is folded into the convolution that reads it.

Requantization scales are TFLite's Prepare arithmetic in double:
``input_scale * filter_scale[c] / output_scale`` (PopulateConvolutionQuantizationParams, and
the reference FULLY_CONNECTED's own expression); the chip profile decides how they are applied.

16x8 (int16 activations with zero point 0, int8 filters, an int64 bias): the same nodes with
an s16 input and an s64 bias; the profile's ``int16_accumulator_bits`` and ``int16_requantize``
give them TFLite's int64 accumulator and its 16-bit requantize multiplier.
"""

from __future__ import annotations

import numpy as np

from simulator.ir.ops import OpKind
from simulator.tflite_import.translate import TflOp, Translator, accumulator_kwargs

SAME, VALID = 0, 1


def same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite's SAME padding: out = ceil(size / stride), the odd pixel at the end."""
    extent = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def window_pads(t: Translator, op: TflOp, in_hw, k_hw, strides, dilations) -> list[int]:
    padding = t.option(op, "Padding", SAME)
    if padding == VALID:
        return [0, 0, 0, 0]
    if padding != SAME:
        raise t.fail(op, f"padding {padding} is neither SAME nor VALID")
    (top, bottom), (left, right) = (same_pads(in_hw[i], k_hw[i], strides[i], dilations[i])
                                    for i in range(2))
    return [top, left, bottom, right]


def _weights(t: Translator, op: TflOp, index: int, channels_axis: int):
    w = t.constant(op, index, "filter")
    if w.dtype != "INT8":
        raise t.fail(op, f"filter {w.name!r} is {w.dtype}; the simulator reads int8 filters",
                     index)
    if w.scale is None:
        raise t.fail(op, f"filter {w.name!r} carries no quantization", index)
    if any(z != 0 for z in w.zero_point):
        raise t.fail(op, f"filter {w.name!r} has nonzero zero points (TFLite's int8 filters "
                         f"are symmetric)", index)
    channels = w.shape[channels_axis]
    if w.per_channel and (len(w.scale) != channels or w.quantized_dimension != channels_axis):
        raise t.fail(op, f"filter {w.name!r}: {len(w.scale)} scales along dimension "
                         f"{w.quantized_dimension}, expected {channels} along "
                         f"{channels_axis}", index)
    return w, (list(w.scale) if w.per_channel else [w.scale[0]] * channels)


def _activation_in(t: Translator, op: TflOp, index: int) -> str:
    """The MAC's activation type: INT8, or INT16 (TFLite's 16x8: int16 activations, int8
    weights, an int64 bias); its output has the same type."""
    return t.activation_types(op, [index, op.outputs[0]], "activation")


# the bias TFLite's kernels read for each activation type: 16x8 kernels read int64 (an int32
# bias reaches them only where the op's quantized_bias_type says so; LiteRT 2.3 then reads it
# as int64 regardless)
BIAS_TYPE = {"INT8": ("INT32", "s32"), "INT16": ("INT64", "s64")}


def _bias(t: Translator, op: TflOp, acc_scales: list[float]) -> list[str]:
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return []
    b = t.constant(op, op.inputs[2], "bias")
    tfl_type, program_type = BIAS_TYPE[t.tensor(op.inputs[0]).dtype]
    if b.dtype != tfl_type or b.data.shape != (len(acc_scales),):
        raise t.fail(op, f"bias {b.name!r} must be {tfl_type.lower()} of shape "
                         f"[{len(acc_scales)}] for {t.tensor(op.inputs[0]).dtype.lower()} "
                         f"activations, is {b.dtype} {list(b.data.shape)}", op.inputs[2])
    per_channel = len(set(acc_scales)) > 1
    name = t.b.constant(t._fresh(b.name), np.asarray(b.data, np.int64), program_type,
                        scale=acc_scales if per_channel else acc_scales[0], zero_point=0,
                        axis=0 if per_channel else None)
    return [name]


def _requantize(t: Translator, op: TflOp, acc: str, out: int, scales: list[float],
                fused: int, layout: str) -> str:
    xs, ys = t.scale(op.inputs[0]), t.scale(out)
    multipliers = [xs * ws / ys for ws in scales]  # double, left to right, as TFLite
    if len(set(multipliers)) == 1:
        multipliers = multipliers[:1]
    return t.emit_to(op, OpKind.REQUANTIZE, [acc], out, layout, suffix="/requantize",
                     real_multiplier=multipliers, axis=1,
                     **t.activation_range(op, out, fused))


def _conv(t: Translator, op: TflOp, depthwise: bool) -> None:
    x, out = op.inputs[0], op.outputs[0]
    _activation_in(t, op, x)
    w, scales = _weights(t, op, op.inputs[1], 3 if depthwise else 0)
    _, h, wd, c = t.tensor(x).shape
    if depthwise:
        kh, kw, oc = w.shape[1], w.shape[2], w.shape[3]
        weights = w.data.transpose(3, 0, 1, 2)          # [1, H, W, C*m] -> [C*m, 1, H, W]
        groups = c
        if oc % c:
            raise t.fail(op, f"{oc} output channels are not a multiple of {c} input channels")
    else:
        oc, kh, kw, ic = w.shape
        weights = w.data.transpose(0, 3, 1, 2)          # OHWI -> OIHW
        if c % ic:
            raise t.fail(op, f"{c} input channels are not a multiple of the filter's {ic}")
        groups = c // ic
    strides = [t.option(op, "StrideH", 1), t.option(op, "StrideW", 1)]
    dilations = [t.option(op, "DilationHFactor", 1), t.option(op, "DilationWFactor", 1)]
    pads = window_pads(t, op, (h, wd), (kh, kw), strides, dilations)
    if x in t.pads:  # a PAD before the conv: its rows and columns become the conv's padding
        x, extra = t.pads[x]
        pads = [p + e for p, e in zip(pads, extra)]
    xs = t.scale(op.inputs[0])
    acc_scales = [xs * s for s in scales]
    w_name = t.b.constant(t._fresh(w.name), np.asarray(weights, np.int64), "s8",
                          scale=scales if w.per_channel else scales[0], zero_point=0,
                          axis=0 if w.per_channel else None)
    acc = t._fresh(f"{t.tensor(out).name}:acc")
    t.emit(op, OpKind.CONV2D, [t.view(x, "nchw", op), w_name] + _bias(t, op, acc_scales), acc,
           suffix="/conv", strides=strides, pads=pads, dilations=dilations, groups=groups,
           **accumulator_kwargs(acc_scales))
    _requantize(t, op, acc, out, scales, t.option(op, "FusedActivationFunction", 0), "nchw")


def conv_2d(t: Translator, op: TflOp) -> None:
    _conv(t, op, depthwise=False)


def depthwise_conv_2d(t: Translator, op: TflOp) -> None:
    _conv(t, op, depthwise=True)


def fully_connected(t: Translator, op: TflOp) -> None:
    x, out = op.inputs[0], op.outputs[0]
    _activation_in(t, op, x)
    if t.option(op, "WeightsFormat", 0) != 0:
        raise t.fail(op, "shuffled FULLY_CONNECTED weights are not supported")
    w, scales = _weights(t, op, op.inputs[1], 0)
    if len(w.shape) != 2:
        raise t.fail(op, f"filter {w.name!r} must be 2-D, is {list(w.shape)}", op.inputs[1])
    m, k = w.shape
    total = int(np.prod(t.tensor(x).shape))
    if total % k:
        raise t.fail(op, f"input of {total} values is not a whole number of rows of {k}", x)
    rows = total // k
    src = t.view(x, "tfl", op)  # TFLite flattens its own (NHWC) layout
    if tuple(t.b.tensors[src].shape) != (rows, k):
        flat = t._fresh(f"{t.tensor(x).name}:rows")
        src = t.emit(op, OpKind.RESHAPE, [src], flat, suffix="/rows", shape=[rows, k])
    xs = t.scale(x)
    acc_scales = [xs * s for s in scales]
    w_name = t.b.constant(t._fresh(w.name), np.asarray(w.data, np.int64), "s8",
                          scale=scales if w.per_channel else scales[0], zero_point=0,
                          axis=0 if w.per_channel else None)
    acc = t._fresh(f"{t.tensor(out).name}:acc")
    t.emit(op, OpKind.FULLY_CONNECTED, [src, w_name] + _bias(t, op, acc_scales), acc,
           suffix="/fc", **accumulator_kwargs(acc_scales))
    fused = t.option(op, "FusedActivationFunction", 0)
    if tuple(t.tensor(out).shape) == (rows, m):
        _requantize(t, op, acc, out, scales, fused, "tfl")
        return
    flat_out = t._fresh(f"{t.tensor(out).name}:rows")
    multipliers = [xs * s / t.scale(out) for s in scales]
    t.emit(op, OpKind.REQUANTIZE, [acc], flat_out, suffix="/requantize",
           real_multiplier=multipliers if len(set(multipliers)) > 1 else multipliers[:1],
           axis=1, **t._out_kwargs(out, op), **t.activation_range(op, out, fused))
    t.emit_to(op, OpKind.RESHAPE, [flat_out], out, "tfl", suffix="/unrows",
              shape=list(t.tensor(out).shape))


def pad(t: Translator, op: TflOp) -> None:
    """PAD/PADV2 with the zero point as the pad value, read only by a convolution, is that
    convolution's padding (a padded zero point contributes nothing to ``x - zp``)."""
    x, out = op.inputs[0], op.outputs[0]
    paddings = t.constant(op, op.inputs[1], "paddings").data
    readers = [o for o in t.m.ops if out in o.inputs]
    if len(t.tensor(x).shape) != 4 or paddings.shape != (4, 2) or \
            np.any(paddings[[0, 3]] != 0) or np.any(paddings < 0):
        raise t.fail(op, f"padding {paddings.tolist()} pads more than height and width")
    if t.consumers[out] != 1 or len(readers) != 1 or \
            readers[0].opcode not in ("CONV_2D", "DEPTHWISE_CONV_2D") or \
            readers[0].inputs[0] != out:
        raise t.fail(op, "a PAD is supported only where a CONV_2D or DEPTHWISE_CONV_2D is its "
                         "only reader (it becomes that convolution's padding)")
    if (t.scale(x), t.zero_point(x)) != (t.scale(out), t.zero_point(out)):
        raise t.fail(op, "PAD changes the quantization of its input")
    if op.opcode == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
        value = t.constant(op, op.inputs[2], "pad value").data
        if np.any(np.asarray(value).ravel() != t.zero_point(out)):
            raise t.fail(op, f"pad value {np.asarray(value).ravel().tolist()} is not the zero "
                             f"point {t.zero_point(out)}: not a convolution's zero padding")
    (top, bottom), (left, right) = paddings[1].tolist(), paddings[2].tolist()
    t.pads[out] = (x, [top, left, bottom, right])


def batch_matmul(t: Translator, op: TflOp) -> None:
    """BATCH_MATMUL of int8 operands: the Program's matmul (zero points subtracted, int32
    sums), then a requantize by ``lhs_scale * rhs_scale / out_scale`` (batch_matmul.cc)."""
    a, b, out = op.inputs[0], op.inputs[1], op.outputs[0]
    for i in (a, b):
        if t.tensor(i).dtype != "INT8":
            raise t.fail(op, f"operand {t.tensor(i).name!r} is {t.tensor(i).dtype}; the "
                             f"simulator runs int8 BATCH_MATMUL", i)
    views = []
    for i, adjoint in ((a, t.option(op, "AdjX", False)), (b, t.option(op, "AdjY", False))):
        v = t.view(i, "tfl", op)
        if adjoint:  # the transposed operand: swap its last two axes
            rank = len(t.tensor(i).shape)
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            v = t.emit(op, OpKind.TRANSPOSE, [v], t._fresh(f"{t.tensor(i).name}:adjoint"),
                       suffix="/adjoint", perm=perm)
        views.append(v)
    scale = t.scale(a) * t.scale(b)
    acc = t._fresh(f"{t.tensor(out).name}:acc")
    t.emit(op, OpKind.MATMUL, views, acc, suffix="/matmul", **accumulator_kwargs([scale]))
    t.emit_to(op, OpKind.REQUANTIZE, [acc], out, "tfl", suffix="/requantize",
              real_multiplier=[scale / t.scale(out)], axis=-1)


HANDLERS = {"BATCH_MATMUL": batch_matmul, "CONV_2D": conv_2d, "DEPTHWISE_CONV_2D": depthwise_conv_2d,
            "FULLY_CONNECTED": fully_connected, "PAD": pad, "PADV2": pad}
