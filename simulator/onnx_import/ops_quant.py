"""The ONNX integer ops: QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul,
ConvInteger, MatMulInteger, and onnxruntime's QGemm (com.microsoft).

QLinear* become a MAC op (int32 accumulator, wrap) followed by a requantize whose real
multiplier per output channel is computed in float32 exactly as onnxruntime does,
``float32(x_scale) * float32(w_scale[c]) / float32(y_scale)`` (left to right, each step rounded
to float32), and stored as the float64 holding that float32 value. The onnx-qlinear arithmetic
then multiplies the int32 accumulator (converted to float32) by it and rounds half to even.

A requantize followed by DequantizeLinear -> QuantizeLinear that maps every integer the
requantize can produce back to itself (the same scale, up to float32 rounding that never moves an
integer) is one requantize to the QuantizeLinear's type, zero point and range: onnxruntime's
QLinearConv and QGemm write their input's type, so this pair is how an ONNX graph changes the
type (u8 -> s8) or narrows the range (ReLU) of a requantized output.
"""

from __future__ import annotations

import numpy as np

from simulator.contract import IntType
from simulator.errors import ModelImportError
from simulator.ir.ops import OpKind
from simulator.ir.program import make_node
from simulator.onnx_import import mac
from simulator.onnx_import.attributes import attr
from simulator.onnx_import.quant_params import QParams


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


def _declare_bias(t, node, bias: str | None, scale, axis) -> None:
    """An int32 bias is quantized with the accumulator's scale (x_scale * w_scale), zero point 0."""
    if bias and not t.estimate and t.is_const(bias) and t.resolve(bias) not in t.b.tensors:
        t.declare_constant(t.resolve(bias), node,
                           params=QParams(scale, (0,), 0 if axis is not None else None))


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

def _fold_requantize_retype(t, node) -> bool:
    """requantize -> DequantizeLinear -> QuantizeLinear as one requantize (see the module doc);
    False (nothing changed) unless each link is the only reader of the one before and the pair
    maps every integer the requantize can produce to itself."""
    x, y = node.input[0], node.output[0]
    i_dq = t.producer.get(t.resolve(x))
    if i_dq is None or t.b.nodes[i_dq].op is not OpKind.DEQUANTIZE or not t.sole_consumer(node):
        return False
    mid = t.b.nodes[i_dq].inputs[0]
    i_rq = t.producer.get(mid)
    if i_rq is None or t.b.nodes[i_rq].op is not OpKind.REQUANTIZE or \
            t.consumers[mid] != 1 or mid in t.graph_outputs:
        return False
    src, q, dtype = t.b.tensors[mid], t.qp(y), t.elem_dtype(y, node)
    if not isinstance(dtype, IntType) or q.scale is None or len(q.scale) != 1 or \
            len(q.zero_point) != 1 or src.scale is None or len(src.scale) != 1 or \
            len(src.zero_point) != 1:
        return False
    rq = t.b.nodes[i_rq]
    z1, z = src.zero_point[0], q.zero_point[0]
    a1 = max(src.dtype.qmin, rq.attrs["clamp_min"] if rq.attrs["clamp_min"] is not None else
             src.dtype.qmin)
    b1 = min(src.dtype.qmax, rq.attrs["clamp_max"] if rq.attrs["clamp_max"] is not None else
             src.dtype.qmax)
    k = np.arange(a1 - z1, b1 - z1 + 1, dtype=np.int64)
    real = k.astype(np.float32) * np.float32(src.scale[0])       # DequantizeLinear, float32
    back = (np.rint(real / np.float32(q.scale[0])),              # QuantizeLinear (divide)
            np.rint(real * (np.float32(1) / np.float32(q.scale[0]))))  # (or reciprocal)
    if not all(np.array_equal(b.astype(np.int64), k) for b in back):
        return False
    lo, hi = max(dtype.qmin, a1 - z1 + z), min(dtype.qmax, b1 - z1 + z)
    if lo > hi:
        return False
    attrs = dict(rq.attrs, clamp_min=lo if lo > dtype.qmin else None,
                 clamp_max=hi if hi < dtype.qmax else None)
    t.b.tensor(y, src.shape, dtype, q.scale, q.zero_point, None)
    t.b.nodes[i_rq] = make_node(rq.name, OpKind.REQUANTIZE, rq.inputs, [y], attrs)
    t.producer[y] = i_rq  # the DequantizeLinear and the old output are dead: dropped at the end
    t.meta.setdefault("requantize_retyped", []).append(
        {"node": rq.name, "through": [t.b.nodes[i_dq].name, node.name or y], "output": y})
    return True


def quantize_linear(t, node) -> None:
    x, y = node.input[0], node.output[0]
    if int(attr(node, "block_size", 0)):
        return t.unsupported(node, "blocked quantization (block_size)")
    if not t.estimate and _fold_requantize_retype(t, node):
        return
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
    _declare_bias(t, node, bias, scale, axis)
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


def qgemm(t, node) -> None:
    """onnxruntime's QGemm (com.microsoft): A[N,K] x B (constant; [M,K] with transB) + int32 C,
    requantized like QLinearMatMul (``alpha * a_scale * b_scale / y_scale`` in float32, alpha 1):
    fully_connected with bias, then requantize."""
    a, b, y, bias = node.input[0], node.input[3], node.output[0], _opt(node, 6)
    if _opt(node, 7) is None:
        return t.unsupported(node, "QGemm with a float output (no y_scale)")
    if float(attr(node, "alpha", 1.0)) != 1.0 or int(attr(node, "transA", 0)):
        return t.unsupported(node, "QGemm with alpha != 1 or transA")
    trans_b = bool(int(attr(node, "transB", 0)))
    a_shape, b_shape = t.shape(a, node), t.shape(b, node)
    if len(a_shape) != 2 or len(b_shape) != 2 or not t.is_const(b):
        return t.unsupported(node, "QGemm other than a 2-D input times constant 2-D weights")
    _check_activation_per_tensor(t, node, a)
    channels = b_shape[0] if trans_b else b_shape[1]
    if bias and t.shape(bias, node) != (channels,):
        return t.unsupported(node, f"QGemm bias of shape {t.shape(bias, node)} (only "
                                   f"({channels},))")
    scale, axis = _accumulator_scale(t, node, node.input[1], node.input[4])
    _declare_bias(t, node, bias, scale, axis)
    w = mac.weight_matrix(t, node, b, transpose=not trans_b)
    acc = t.fresh(f"{y}_acc")
    ins = [t.use(a, node), w] + ([t.use(bias, node)] if bias else [])
    t.emit(node, OpKind.FULLY_CONNECTED, ins, acc, **mac.accumulator_kwargs(t, scale, axis),
           check_onnx_shape=False)
    dtype = t.elem_dtype(_opt(node, 8) or y, node)  # onnx shape inference does not know QGemm
    t.emit(node, OpKind.REQUANTIZE, [acc], y, suffix="/requantize",
           real_multiplier=real_multipliers(t, node, node.input[1], node.input[4],
                                            node.input[7], channels),
           axis=1, **t.output_kwargs(y, node, dtype))


# ------------------------------------------------------------------ activations and gates

def _scalar(t, node, name: str, what: str):
    v = np.asarray(t.value(name, node))
    if v.size != 1:
        raise ModelImportError(f"{t.where(node)}: {what} {name!r} must be one value, has "
                               f"{v.size}")
    return v.ravel()[0]


def _float_function(op_type: str, node):
    if op_type == "QLinearSigmoid":
        return "sigmoid", lambda f: (1.0 / (1.0 + np.exp(-f.astype(np.float64)))
                                     ).astype(np.float32)
    alpha = np.float32(attr(node, "alpha", 0.01))
    return "leaky_relu", lambda f: np.where(f >= 0, f, f * alpha).astype(np.float32)


def qlinear_lookup(t, node) -> None:
    """onnxruntime's QLinearSigmoid / QLinearLeakyRelu: 8-bit in, 8-bit out, as onnxruntime
    runs them, a table over every input value: ``x`` dequantized in float32, the function,
    divided by the output scale in float32, rounded half to even, zero point added, clamped."""
    x, y = node.input[0], node.output[0]
    if t.estimate:
        return t.fallback(t, node)
    xt, yt = t.elem_dtype(x, node), t.elem_dtype(y, node)
    if not isinstance(xt, IntType) or xt.bits != 8 or yt != xt:
        return t.unsupported(node, f"{node.op_type} from {xt} to {yt}")
    xs = np.float32(_scalar(t, node, node.input[1], "x_scale"))
    xz = int(_scalar(t, node, node.input[2], "x_zero_point")) if _opt(node, 2) else 0
    ys = np.float32(_scalar(t, node, node.input[3], "y_scale"))
    yz = int(_scalar(t, node, node.input[4], "y_zero_point")) if _opt(node, 4) else 0
    function, fn = _float_function(node.op_type, node)
    values = np.arange(xt.qmin, xt.qmax + 1, dtype=np.int64)
    real = fn((values - xz).astype(np.float32) * xs)
    table = np.clip(np.rint(real / ys).astype(np.int64) + yz, yt.qmin, yt.qmax)
    t.emit(node, OpKind.LOOKUP_TABLE, [t.use(x, node)], y, table=[int(v) for v in table],
           function=function, **t.output_kwargs(y, node))


def qlinear_mul(t, node) -> None:
    """onnxruntime's QLinearMul of two activations, b broadcast to a: the elementwise mul."""
    a, b, y = node.input[0], node.input[3], node.output[0]
    if t.estimate:
        return t.fallback(t, node)
    if any(t.is_const(n) for n in (a, b)):
        return t.unsupported(node, "QLinearMul by a constant")
    if tuple(t.shape(a, node)) != tuple(t.onnx_shape(y) or ()):
        a, b = b, a
    t.emit(node, OpKind.MUL, [t.use(a, node), t.use(b, node)], y, **t.output_kwargs(y, node))


HANDLERS = {
    "QuantizeLinear": quantize_linear, "DequantizeLinear": dequantize_linear,
    "QLinearConv": qlinear_conv, "ConvInteger": conv_integer,
    "QLinearMatMul": qlinear_matmul, "MatMulInteger": matmul_integer,
    "com.microsoft.QGemm": qgemm, "com.microsoft.QLinearSigmoid": qlinear_lookup,
    "com.microsoft.QLinearLeakyRelu": qlinear_lookup, "com.microsoft.QLinearMul": qlinear_mul,
}
