"""Pools, MEAN, RESHAPE/SQUEEZE, CONCATENATION: ops that move or average integers of one scale.

TFLite's int8 and int16 pools and concatenation keep their input's quantization (Prepare
insists), so they need no rescale; a fused activation becomes a clamp. int16 pools and MEAN
compute as the int8 ones do (reference_integer_ops pooling.h, reference reduce.h), in their
16-bit range.
"""

from __future__ import annotations

from simulator.ir.ops import OpKind
from simulator.tflite_import.ops_mac import window_pads
from simulator.tflite_import.translate import TflOp, Translator

NHWC_AXIS_IN_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}


def _same_quantization(t: Translator, op: TflOp, a: int, b: int) -> None:
    ta, tb = t.tensor(a), t.tensor(b)
    if ta.dtype != tb.dtype or (t.scale(a), t.zero_point(a)) != (t.scale(b), t.zero_point(b)):
        raise t.fail(op, f"{ta.name!r} ({ta.dtype} {t.scale(a)}, {t.zero_point(a)}) and "
                         f"{tb.name!r} ({tb.dtype} {t.scale(b)}, {t.zero_point(b)}) differ in "
                         f"quantization, which {op.opcode} does not rescale", b)


def _clamp_after(t: Translator, op: TflOp, value: str, out: int, layout: str) -> None:
    """The fused activation as a clamp node writing ``out`` (or nothing to clamp)."""
    bounds = t.activation_range(op, out, t.option(op, "FusedActivationFunction", 0))
    dtype = t.b.tensors[value].dtype
    lo = bounds.get("clamp_min") if bounds.get("clamp_min") is not None else dtype.qmin
    hi = bounds.get("clamp_max") if bounds.get("clamp_max") is not None else dtype.qmax
    t.emit_to(op, OpKind.CLAMP, [value], out, layout, suffix="/activation", min=lo, max=hi)


def _pool(t: Translator, op: TflOp, kind: OpKind) -> None:
    x, out = op.inputs[0], op.outputs[0]
    t.activation_types(op, [x, out], "input")
    _same_quantization(t, op, x, out)
    _, h, w, _ = t.tensor(x).shape
    kernel = [t.option(op, "FilterHeight", 1), t.option(op, "FilterWidth", 1)]
    strides = [t.option(op, "StrideH", 1), t.option(op, "StrideW", 1)]
    pads = window_pads(t, op, (h, w), kernel, strides, (1, 1))
    attrs = {"kernel": kernel, "strides": strides, "pads": pads}
    if kind is OpKind.AVGPOOL2D:
        attrs["count_include_pad"] = False  # TFLite divides by the in-bounds taps only
    if t.option(op, "FusedActivationFunction", 0) == 0:
        t.emit_to(op, kind, [t.view(x, "nchw", op)], out, "nchw", **attrs)
        return
    pooled = t._fresh(f"{t.tensor(out).name}:pooled")
    t.emit(op, kind, [t.view(x, "nchw", op)], pooled, suffix="/pool", **attrs)
    _clamp_after(t, op, pooled, out, "nchw")


def average_pool_2d(t: Translator, op: TflOp) -> None:
    _pool(t, op, OpKind.AVGPOOL2D)


def max_pool_2d(t: Translator, op: TflOp) -> None:
    _pool(t, op, OpKind.MAXPOOL2D)


def mean(t: Translator, op: TflOp) -> None:
    """MEAN over height and width of an int8 or int16 NHWC tensor: a global_avgpool2d writing the
    output's own scale and zero point (the tflite-reference profile's ``tflite_mean`` divides
    as TFLite does: one multiplier for in/out scale and the count, see fixed_point)."""
    x, out = op.inputs[0], op.outputs[0]
    axes = t.constant(op, op.inputs[1], "axes").data.ravel().tolist()
    shape = t.tensor(x).shape
    if len(shape) != 4 or sorted(a % 4 for a in axes) != [1, 2]:
        raise t.fail(op, f"MEAN over axes {axes} of a rank-{len(shape)} tensor; the simulator "
                         f"averages height and width of NHWC tensors only")
    t.activation_types(op, [x, out], "input")
    if bool(t.option(op, "KeepDims", False)):
        t.emit_to(op, OpKind.GLOBAL_AVGPOOL2D, [t.view(x, "nchw", op)], out, "nchw")
        return
    pooled = t.emit(op, OpKind.GLOBAL_AVGPOOL2D, [t.view(x, "nchw", op)],
                    t._fresh(f"{t.tensor(out).name}:mean"), suffix="/mean",
                    **t._out_kwargs(out, op))
    t.emit_to(op, OpKind.RESHAPE, [pooled], out, "tfl", suffix="/squeeze",
              shape=list(t.tensor(out).shape))


def reshape(t: Translator, op: TflOp) -> None:
    """RESHAPE/SQUEEZE/EXPAND_DIMS act on TFLite's element order, so on the ``tfl`` view."""
    x, out = op.inputs[0], op.outputs[0]
    _same_quantization(t, op, x, out)
    t.emit_to(op, OpKind.RESHAPE, [t.view(x, "tfl", op)], out, "tfl",
              shape=list(t.tensor(out).shape))


def concatenation(t: Translator, op: TflOp) -> None:
    out = op.outputs[0]
    rank = len(t.tensor(out).shape)
    for i in op.inputs:
        _same_quantization(t, op, i, out)
    axis = t.option(op, "Axis", 0) % rank
    layout = "nchw" if rank == 4 else "tfl"
    if layout == "nchw":
        axis = NHWC_AXIS_IN_NCHW[axis]
    ins = [t.view(i, layout, op) for i in op.inputs]
    if t.option(op, "FusedActivationFunction", 0) == 0:
        t.emit_to(op, OpKind.CONCAT, ins, out, layout, axis=axis)
        return
    joined = t._fresh(f"{t.tensor(out).name}:concat")
    t.emit(op, OpKind.CONCAT, ins, joined, suffix="/concat", axis=axis)
    _clamp_after(t, op, joined, out, layout)


def softmax(t: Translator, op: TflOp) -> None:
    raise t.fail(op, "SOFTMAX is an op the simulator lacks in TFLite's form: the reference "
                     "kernel divides by a fixed-point reciprocal (gemmlowp exp and Newton-"
                     "Raphson), the simulator's softmax divides exactly")


HANDLERS = {"AVERAGE_POOL_2D": average_pool_2d, "MAX_POOL_2D": max_pool_2d, "MEAN": mean,
            "RESHAPE": reshape, "SQUEEZE": reshape, "EXPAND_DIMS": reshape,
            "CONCATENATION": concatenation, "SOFTMAX": softmax}
