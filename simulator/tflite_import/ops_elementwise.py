"""Elementwise ops: ADD, MUL, QUANTIZE, DEQUANTIZE and the activations.

Activations of one int8 value (LOGISTIC, TANH, GELU, HARD_SWISH, LEAKY_RELU, RELU, RELU6,
RELU_N1_TO_1) become a 256-entry ``lookup_table`` whose entries are TFLite's own results for
each input value (``tables``), so they are exact whatever arithmetic the kernel uses.
"""

from __future__ import annotations

import numpy as np

from simulator.ir.ops import OpKind
from simulator.tflite_import import tables
from simulator.tflite_import.translate import (ACTIVATION_RANGE, TflOp, Translator,
                                               round_half_away)


def _same_layout_pair(t: Translator, op: TflOp, a: int, b: int) -> tuple[str, str, str]:
    layout = t.layout_of(a) if len(t.tensor(a).shape) == 4 else "tfl"
    return layout, t.view(a, layout, op), t.view(b, layout, op)


def add(t: Translator, op: TflOp) -> None:
    """ADD: int8, or int16 with TFLite's general scales (the profile's per_operand add with
    its int16 left shift). With ``pot_scale_int16`` set (the schema's default) and every scale a
    power of two, TFLite takes its power-of-two int16 path (a shift and a saturating add),
    which the simulator does not model."""
    a, b, out = op.inputs[0], op.inputs[1], op.outputs[0]
    if t.activation_types(op, [a, b, out]) == "INT16" and t.option(op, "PotScaleInt16", True) \
            and all(tables.checked_log2(t.scale(i))[0] for i in (a, b, out)):
        raise t.fail(op, "int16 ADD with pot_scale_int16 and power-of-two scales takes TFLite's "
                         "power-of-two path (shift and saturating add), which the simulator "
                         "lacks; the converter writes pot_scale_int16 = false", out)
    if t.tensor(a).shape != t.tensor(b).shape:
        raise t.fail(op, f"broadcasting ADD ({list(t.tensor(a).shape)} + "
                         f"{list(t.tensor(b).shape)}) is not supported")
    layout, va, vb = _same_layout_pair(t, op, a, b)
    t.emit_to(op, OpKind.ADD, [va, vb], out, layout,
              **t.activation_range(op, out, t.option(op, "FusedActivationFunction", 0)))


def mul(t: Translator, op: TflOp) -> None:
    a, b, out = op.inputs[0], op.inputs[1], op.outputs[0]
    t.activation_types(op, [a, b, out])  # int16 x int16 -> int8 is TFLite's other kernel
    sa, sb = t.tensor(a).shape, t.tensor(b).shape
    if int(np.prod(sa)) < int(np.prod(sb)):  # the Program's mul broadcasts its second operand
        a, b, sa, sb = b, a, sb, sa
    if len(sb) > len(sa) or any(y not in (1, x) for x, y in zip(sa[::-1], sb[::-1])):
        raise t.fail(op, f"operand shapes {list(sa)} and {list(sb)} do not broadcast one way")
    layout = t.layout_of(a) if len(sa) == 4 else "tfl"
    va = t.view(a, layout, op)
    if len(sb) == len(sa):
        vb = t.view(b, layout, op)
    else:  # a lower-rank operand (per-channel gate [C]) lines up with TFLite's last axis
        full = (1,) * (len(sa) - len(sb)) + tuple(sb)
        shape = [full[p] for p in (0, 3, 1, 2)] if layout == "nchw" else list(full)
        vb = t.emit(op, OpKind.RESHAPE, [t.view(b, "tfl", op)],
                    t._fresh(f"{t.tensor(b).name}:broadcast"), suffix="/broadcast", shape=shape)
    t.emit_to(op, OpKind.MUL, [va, vb], out, layout,
              **t.activation_range(op, out, t.option(op, "FusedActivationFunction", 0)))


def quantize(t: Translator, op: TflOp) -> None:
    x, out = op.inputs[0], op.outputs[0]
    src = t.tensor(x)
    if src.dtype == "FLOAT32":  # the graph's edge: host float -> int
        t.emit_to(op, OpKind.QUANTIZE, [t.view(x, "tfl", op)], out, "tfl")
        return
    if src.dtype not in ("INT8", "INT16") or t.tensor(out).dtype not in ("INT8", "INT16"):
        raise t.fail(op, f"QUANTIZE from {src.dtype} to {t.tensor(out).dtype} is not supported")
    if src.dtype == t.tensor(out).dtype == "INT16":
        t.activation_types(op, [x, out])  # int16 -> int16: both symmetric (Prepare)
    layout = t.layout_of(x)
    # TFLite's Requantize: MultiplyByQuantizedMultiplier(x - zp, in_scale / out_scale) + zp
    t.emit_to(op, OpKind.REQUANTIZE, [t.view(x, layout, op)], out, layout,
              real_multiplier=[t.scale(x) / t.scale(out)], axis=0)


def dequantize(t: Translator, op: TflOp) -> None:
    x, out = op.inputs[0], op.outputs[0]
    if t.tensor(x).data is not None:
        raise t.fail(op, "DEQUANTIZE of a constant feeds float compute, which the simulator "
                         "does not run", x)
    if t.tensor(out).dtype != "FLOAT32" or t.tensor(x).dtype not in ("INT8", "INT16"):
        raise t.fail(op, f"DEQUANTIZE from {t.tensor(x).dtype} to {t.tensor(out).dtype} is not "
                         f"supported")
    t.emit_to(op, OpKind.DEQUANTIZE, [t.view(x, "tfl", op)], out, "tfl")


# ----------------------------------------------------------------------------- activations

def _table(t: Translator, op: TflOp, table, function: str | None) -> None:
    """``table``: the 256 entries of an int8 activation, or a callable giving the 65536 of its
    int16 kernel (LOGISTIC and TANH only), called once the types are checked."""
    x, out = op.inputs[0], op.outputs[0]
    kind = "INT16" if callable(table) else "INT8"
    for i in (x, out):
        if t.tensor(i).dtype != kind:
            what = "int8 or int16 is tabulated" if callable(table) else \
                "int8 is tabulated; of int16 activations, LOGISTIC and TANH are"
            raise t.fail(op, f"{op.opcode} on {t.tensor(i).dtype} (only {what})", i)
    if callable(table):
        table = table()
    layout = t.layout_of(x)
    attrs = {"table": [int(v) for v in table]}
    if function:
        attrs["function"] = function
    t.emit_to(op, OpKind.LOOKUP_TABLE, [t.view(x, layout, op)], out, layout, **attrs)


def _scales(t: Translator, op: TflOp):
    x, out = op.inputs[0], op.outputs[0]
    return t.scale(x), t.zero_point(x), t.scale(out), t.zero_point(out)


def _int16_table(t: Translator, op: TflOp, make, tanh: bool):
    """The 65536-entry table of TFLite's int16 LOGISTIC / TANH, after the checks of their
    Prepare: zero points 0, output scale 2**-15 (LOGISTIC: exactly 1/32768)."""
    x, out = op.inputs[0], op.outputs[0]
    t.activation_types(op, [x, out])
    out_scale = float(np.float32(t.scale(out)))
    exact = out_scale == 1 / 32768 if not tanh else tables.checked_log2(out_scale) == (True, -15)
    if not exact:
        raise t.fail(op, f"int16 {op.opcode} needs output scale 1/32768 (TFLite's Prepare), "
                         f"has {out_scale!r}", out)
    return lambda: make(t.scale(x))


def logistic(t: Translator, op: TflOp) -> None:
    if t.tensor(op.inputs[0]).dtype == "INT16":
        _table(t, op, _int16_table(t, op, tables.logistic16_table, False), "sigmoid")
        return
    _table(t, op, tables.logistic_table(*_scales(t, op)), "sigmoid")


def tanh(t: Translator, op: TflOp) -> None:
    if t.tensor(op.inputs[0]).dtype == "INT16":
        _table(t, op, _int16_table(t, op, tables.tanh16_table, True), "tanh")
        return
    _table(t, op, tables.tanh_table(*_scales(t, op)), "tanh")


def gelu(t: Translator, op: TflOp) -> None:
    approximate = bool(t.option(op, "Approximate", False))
    _table(t, op, tables.gelu_table(*_scales(t, op), approximate), "gelu")


def hard_swish(t: Translator, op: TflOp) -> None:
    try:
        table = tables.hard_swish_table(*_scales(t, op))
    except ValueError as exc:
        raise t.fail(op, str(exc)) from None
    _table(t, op, table, "hardswish")


def leaky_relu(t: Translator, op: TflOp) -> None:
    alpha = float(np.float32(t.option(op, "Alpha", 0.0)))
    _table(t, op, tables.leaky_relu_table(*_scales(t, op), alpha), "leaky_relu")
    # kept for --check, which rebuilds the table the way other kernels compute it
    t.meta.setdefault("tflite_alpha", {})[t.tensor(op.outputs[0]).name] = alpha


def relu(t: Translator, op: TflOp) -> None:
    """QuantizedReluX: rescale by the float32 ratio of the scales, clamp to the activation's
    range ``zp + roundf(bound / scale)``."""
    si, zi, so, zo = _scales(t, op)
    lo_f, hi_f = ACTIVATION_RANGE[{"RELU": "RELU", "RELU6": "RELU6",
                                   "RELU_N1_TO_1": "RELU_N1_TO_1"}[op.opcode]]
    lo = max(-128, zo + round_half_away(float(np.float32(lo_f) / np.float32(so))))
    hi = 127 if hi_f is None else \
        min(127, zo + round_half_away(float(np.float32(hi_f) / np.float32(so))))
    ratio = float(np.float32(si) / np.float32(so))
    _table(t, op, tables.requantize_table(ratio, zi, zo, lo, hi), None)


HANDLERS = {"ADD": add, "MUL": mul, "QUANTIZE": quantize, "DEQUANTIZE": dequantize,
            "LOGISTIC": logistic, "TANH": tanh, "GELU": gelu, "HARD_SWISH": hard_swish,
            "LEAKY_RELU": leaky_relu, "RELU": relu, "RELU6": relu, "RELU_N1_TO_1": relu}
