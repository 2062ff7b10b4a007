"""The ONNX integer ops: QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul,
ConvInteger, MatMulInteger.

QLinear* become a MAC op (int32 accumulator, wrap) followed by a requantize whose real
multiplier per output channel is computed in float32 exactly as onnxruntime does,
``float32(x_scale) * float32(w_scale[c]) / float32(y_scale)`` (left to right, each step rounded
to float32), and stored as the float64 holding that float32 value. The onnx-qlinear arithmetic
then multiplies the int32 accumulator (converted to float32) by it and rounds half to even.
"""

from __future__ import annotations

import numpy as np

from simulator.errors import ModelImportError
from simulator.ir.ops import OpKind
from simulator.onnx_import import mac
from simulator.onnx_import.attributes import attr


def _opt(node, i: int) -> str | None:
    return node.input[i] if len(node.input) > i and node.input[i] else None


def real_multipliers(t, node, x_scale: str, w_scale: str, y_scale: str,
                     channels: int) -> list[float]:
    """onnxruntime's requantization scale per output channel (float32 arithmetic)."""
    values = [t.maybe_value(n) if t.estimate else t.value(n, node)
              for n in (x_scale, w_scale, y_scale)]
    if any(v is None for v in values):
        return [1.0]  # estimation only: the scale does not change the cost
    xs, ws, ys = (np.asarray(v, dtype=np.float32).ravel() for v in values)
    if xs.size != 1 or ys.size != 1:
        raise ModelImportError(f"{t.where(node)}: input and output scales must be scalars "
                               f"(got {xs.size} and {ys.size} values)")
    if ws.size not in (1, channels):
        raise ModelImportError(f"{t.where(node)}: weight scale has {ws.size} values for "
                               f"{channels} output channels")
    m = (xs[0] * ws) / ys[0]  # float32 * float32 / float32, as onnxruntime
    if not np.all(np.isfinite(m)) or np.any(m <= 0):
        raise ModelImportError(f"{t.where(node)}: requantization scale {m.tolist()} must be "
                               f"finite and > 0")
    return [float(v) for v in m.astype(np.float32)]


def _accumulator_scale(t, node, x_scale, w_scale):
    if t.estimate:
        return None, None
    xs = np.asarray(t.value(x_scale, node), np.float32).ravel()
    ws = np.asarray(t.value(w_scale, node), np.float32).ravel()
    prod = (xs[0] * ws).astype(np.float64)
    return tuple(float(v) for v in prod), (1 if prod.size > 1 else None)


def _check_scalar_zero_point(t, node, tensor: str, what: str) -> None:
    if not t.estimate and len(t.qp(t.resolve(tensor)).zero_point) != 1:
        raise ModelImportError(f"{t.where(node)}: per-channel zero point of {what} {tensor!r} "
                               f"is not supported")


def _check_activation_per_tensor(t, node, tensor: str) -> None:
    if t.estimate:
        return
    q = t.qp(t.resolve(tensor))
    if len(q.zero_point) != 1 or (q.scale is not None and len(q.scale) != 1):
        raise ModelImportError(f"{t.where(node)}: per-channel quantization of activation "
                               f"{tensor!r} is not supported")


# ------------------------------------------------------------------ quantize / dequantize

def quantize_linear(t, node) -> None:
    x, y = node.input[0], node.output[0]
    if int(attr(node, "block_size", 0)):
        return t.unsupported(node, "blocked quantization (block_size)")
    if not t.estimate:
        if t.elem_dtype(x, node).name != "f32":
            return t.unsupported(node, f"QuantizeLinear of {t.elem_dtype(x, node)}")
        scale = np.asarray(t.value(node.input[1], node)).ravel()
        if scale.size != 1:
            return t.unsupported(node, "per-axis QuantizeLinear of an activation")
    t.emit(node, OpKind.QUANTIZE, [t.use(x, node)], y, **t.output_kwargs(y, node))


def dequantize_linear(t, node) -> None:
    x, y = node.input[0], node.output[0]
    if int(attr(node, "block_size", 0)):
        return t.unsupported(node, "blocked quantization (block_size)")
    if not t.estimate and t.elem_dtype(y, node).name != "f32":
        return t.unsupported(node, f"DequantizeLinear to {t.elem_dtype(y, node)}")
    t.emit(node, OpKind.DEQUANTIZE, [t.use(x, node)], y, **t.output_kwargs(y, node))


# ------------------------------------------------------------------ convolutions

def qlinear_conv(t, node) -> None:
    x, w, y, bias = node.input[0], node.input[3], node.output[0], _opt(node, 8)
    _check_activation_per_tensor(t, node, x)
    if len(t.shape(w, node)) != 4 or len(t.shape(x, node)) != 4:
        return t.unsupported(node, "only 2-D QLinearConv (NCHW) is supported")
    channels = t.shape(w, node)[0]
    acc = t.fresh(f"{y}_acc")
    scale, axis = _accumulator_scale(t, node, node.input[1], node.input[4])
    mac.conv2d(t, node, x, w, bias, acc, **mac.accumulator_kwargs(t, scale, axis))
    t.emit(node, OpKind.REQUANTIZE, [acc], y, suffix="/requantize",
           real_multiplier=real_multipliers(t, node, node.input[1], node.input[4],
                                            node.input[6], channels),
           axis=1, **t.output_kwargs(y, node))


def conv_integer(t, node) -> None:
    x, w, y = node.input[0], node.input[1], node.output[0]
    _check_activation_per_tensor(t, node, x)
    if not mac.conv2d(t, node, x, w, None, y, **mac.accumulator_kwargs(t)):
        return t.unsupported(node, "only 2-D ConvInteger (NCHW) is supported")


# ------------------------------------------------------------------ matrix products

def _matrix_product(t, node, a: str, b: str, out: str, requant: dict | None) -> None:
    """a @ b as fully_connected (constant 2-D b) or matmul (anything the Program's matmul
    takes), into ``out`` directly (integer product) or through a requantize (QLinearMatMul)."""
    a_shape, b_shape = t.shape(a, node), t.shape(b, node)
    _check_activation_per_tensor(t, node, a)
    if len(a_shape) < 2:
        return t.unsupported(node, f"matrix product of a rank-{len(a_shape)} input")
    if t.is_const(b) and len(b_shape) == 2:
        w = mac.weight_matrix(t, node, b, transpose=True)
        rows, lead = mac.flatten_rows(t, node, a)
        acc = out if requant is None and lead is None else t.fresh(f"{out}_acc")
        acc_kw = mac.accumulator_kwargs(t, *(requant["acc_scale"] if requant else (None, None)))
        t.emit(node, OpKind.FULLY_CONNECTED, [rows, w], acc, **acc_kw,
               check_onnx_shape=lead is None and requant is None)
        value = acc
        if requant is not None:
            value = out if lead is None else t.fresh(f"{out}_rows")
            t.emit(node, OpKind.REQUANTIZE, [acc], value, suffix="/requantize",
                   real_multiplier=requant["multiplier"], axis=1,
                   check_onnx_shape=lead is None, **t.output_kwargs(out, node))
        if lead is not None:
            mac.unflatten_rows(t, node, value, out, lead, **(
                t.output_kwargs(out, node) if requant else mac.accumulator_kwargs(t)))
        return
    if not mac.matmul_ok(a_shape, b_shape):
        return t.unsupported(node, f"matrix product of shapes {a_shape} x {b_shape}")
    # matmul subtracts one zero point per operand; per-column scales of B only reach the
    # requantization (per channel along the last axis)
    _check_scalar_zero_point(t, node, b, "B")
    ins = [t.use(a, node), t.use(b, node)]
    if requant is None:
        t.emit(node, OpKind.MATMUL, ins, out, **mac.accumulator_kwargs(t))
        return
    acc = t.fresh(f"{out}_acc")
    scale, axis = requant["acc_scale"]
    t.emit(node, OpKind.MATMUL, ins, acc,
           **mac.accumulator_kwargs(t, scale, None if axis is None else -1),
           check_onnx_shape=False)
    t.emit(node, OpKind.REQUANTIZE, [acc], out, suffix="/requantize",
           real_multiplier=requant["multiplier"], axis=-1, **t.output_kwargs(out, node))


def qlinear_matmul(t, node) -> None:
    a, b, y = node.input[0], node.input[3], node.output[0]
    b_shape = t.shape(b, node)
    channels = b_shape[-1] if b_shape else 1
    scale, axis = _accumulator_scale(t, node, node.input[1], node.input[4])
    requant = {"multiplier": real_multipliers(t, node, node.input[1], node.input[4],
                                              node.input[6], channels),
               "acc_scale": (scale, axis)}
    _matrix_product(t, node, a, b, y, requant)


def matmul_integer(t, node) -> None:
    _matrix_product(t, node, node.input[0], node.input[1], node.output[0], None)


HANDLERS = {
    "QuantizeLinear": quantize_linear, "DequantizeLinear": dequantize_linear,
    "QLinearConv": qlinear_conv, "ConvInteger": conv_integer,
    "QLinearMatMul": qlinear_matmul, "MatMulInteger": matmul_integer,
}
