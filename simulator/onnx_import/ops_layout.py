"""Ops that move or select values: pooling, concat, relu, reshape family, identity.

They serve both imports. In an executable (integer) import their outputs carry the input's
quantization (see ``quant_params``); ONNX Relu on integers is ``max(x, 0)`` on the raw values
(ONNX defines it on the stored integers, not on real values), so it becomes ``clamp(0, qmax)``.
"""

from __future__ import annotations

import math

import numpy as np

from simulator.contract import IntType
from simulator.errors import ModelImportError
from simulator.ir.ops import OpKind
from simulator.onnx_import.attributes import attr, window_geometry

INT32_MAX = (1 << 31) - 1


def _norm_axis(t, node, axis: int, rank: int, extra: int = 0) -> int:
    if not -rank <= axis < rank + extra:
        raise ModelImportError(f"{t.where(node)}: axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _window_op(t, node, kind: OpKind) -> None:
    shape = t.shape(node.input[0], node)
    kernel = tuple(int(k) for k in attr(node, "kernel_shape", []))
    if len(shape) != 4 or len(kernel) != 2:
        return t.unsupported(node, f"only 2-D pooling of NCHW tensors is supported "
                                   f"(input {shape}, kernel {list(kernel)})")
    if any(t.used(o) for o in node.output[1:]):
        return t.unsupported(node, "the Indices output is not supported")
    if min(kernel) < 1:
        raise ModelImportError(f"{t.where(node)}: kernel_shape {list(kernel)} must be >= 1")
    strides, pads, dilations = window_geometry(node, shape[2:], kernel, t.where(node))
    if dilations != (1, 1):
        return t.unsupported(node, f"pooling dilations {list(dilations)} are not supported")
    x = t.use(node.input[0], node)
    attrs = {"kernel": list(kernel), "strides": list(strides), "pads": list(pads)}
    if kind is OpKind.AVGPOOL2D:
        attrs["count_include_pad"] = bool(attr(node, "count_include_pad", 0))
    t.emit(node, kind, [x], node.output[0], **attrs, **t.output_kwargs(node.output[0], node))


def maxpool(t, node) -> None:
    if not t.estimate and t.is_float(node.input[0]):
        return t.unsupported(node, "float MaxPool")
    _window_op(t, node, OpKind.MAXPOOL2D)


def averagepool(t, node) -> None:
    if not t.estimate:
        return t.unsupported(node, "AveragePool has no integer form in ONNX")
    _window_op(t, node, OpKind.AVGPOOL2D)


def global_averagepool(t, node) -> None:
    if not t.estimate:
        return t.unsupported(node, "GlobalAveragePool has no integer form in ONNX")
    if len(t.shape(node.input[0], node)) != 4:
        return t.unsupported(node, "only NCHW inputs are supported")
    t.emit(node, OpKind.GLOBAL_AVGPOOL2D, [t.use(node.input[0], node)], node.output[0],
           **t.output_kwargs(node.output[0], node))


def concat(t, node) -> None:
    names = [n for n in node.input if n]
    if not t.estimate and any(t.is_float(n) for n in names):
        return t.unsupported(node, "float Concat")
    rank = len(t.shape(names[0], node))
    axis = _norm_axis(t, node, int(attr(node, "axis", 1)), rank)
    inputs = [t.use(n, node) for n in names]
    t.emit(node, OpKind.CONCAT, inputs, node.output[0], axis=axis,
           **t.output_kwargs(node.output[0], node))


def relu(t, node) -> None:
    if t.estimate and t.is_float(node.input[0]):
        return fused_relu(t, node)
    # ONNX Relu on integers is max(x, 0) of the stored values, whatever the zero point
    _integer_clamp(t, node, 0, None)


def _integer_clamp(t, node, lo, hi) -> None:
    """A clamp of the stored integers to [lo, hi] (None: the type's end), cut to the type."""
    if t.is_float(node.input[0]):
        return t.unsupported(node, f"float {node.op_type}")
    x = t.use(node.input[0], node)
    dtype = t.b.tensors[x].dtype
    if not isinstance(dtype, IntType):
        return t.unsupported(node, f"{node.op_type} on {dtype}")
    lo = dtype.qmin if lo is None else max(dtype.qmin, int(lo))
    hi = dtype.qmax if hi is None else min(dtype.qmax, int(hi))
    t.emit(node, OpKind.CLAMP, [x], node.output[0], min=lo, max=hi,
           **t.output_kwargs(node.output[0], node))


def fused_relu(t, node) -> None:
    """Float Relu or Clip (ReLU6, any bounds) for estimation: fused into the MAC, add or mul
    that feeds it (as every NPU does, TFLite's fused RELU/RELU6: the activation is the clamp of
    the requantization), else a clamp node of its own."""
    src = t.resolve(node.input[0])
    kind = t.producing_op(src)
    if kind in (OpKind.CONV2D, OpKind.FULLY_CONNECTED, OpKind.MATMUL, OpKind.ADD, OpKind.MUL) \
            and t.sole_consumer(node):
        if kind in (OpKind.ADD, OpKind.MUL) and node.op_type == "Relu":
            t.replace_node(t.producer[src], attrs={"clamp_min": 0})
        t.alias[node.output[0]] = src
        t.meta.setdefault("fused_activations", []).append(
            {"node": node.name or node.output[0], "op_type": node.op_type,
             "into": t.b.nodes[t.producer[src]].name})
        return
    # a float clamp: the bounds are real numbers 0 and +inf; INT32_MAX stands for "none"
    t.emit(node, OpKind.CLAMP, [t.use(node.input[0], node)], node.output[0], min=0,
           max=INT32_MAX, **t.output_kwargs(node.output[0], node))


def _clip_bounds(t, node) -> tuple[object, object] | None:
    """Clip's (min, max) as constants (None where absent), or None when one is computed."""
    if t.g.opset < 11:
        return attr(node, "min", None), attr(node, "max", None)
    bounds = []
    for i in (1, 2):
        if len(node.input) <= i or not node.input[i]:
            bounds.append(None)
            continue
        v = t.maybe_value(node.input[i])
        if v is None or np.asarray(v).size != 1:
            return None
        bounds.append(np.asarray(v).ravel()[0])
    return bounds[0], bounds[1]


def clip(t, node) -> None:
    """Clip: a clamp. Float (estimation): fused like Relu. Integer: ONNX clips the stored
    values, so the clamp's bounds are the constants as given, cut to the type's range."""
    bounds = _clip_bounds(t, node)
    if bounds is None:
        return t.unsupported(node, "Clip with bounds computed at run time")
    if t.estimate and t.is_float(node.input[0]):
        return fused_relu(t, node)
    _integer_clamp(t, node, *bounds)


CONV_LIKE = frozenset({"Conv", "QLinearConv", "ConvInteger"})


def _conv_input_zero(t, conv) -> int | None:
    """The value a conv's padding holds: the zero point of its input (0 for a float Conv)."""
    index = {"QLinearConv": 2, "ConvInteger": 2}.get(conv.op_type)
    if index is None or len(conv.input) <= index or not conv.input[index]:
        return 0
    v = t.maybe_value(conv.input[index])
    return None if v is None or np.asarray(v).size != 1 else int(np.asarray(v).ravel()[0])


def pad(t, node) -> None:
    """Pad of H and W by a constant that reads as zero, read only by a conv: folded into the
    conv's own padding (chips pad in the conv's window fetch; TFLite and Vela fold PAD the same
    way). Anything else is an op of its own."""
    x, y = node.input[0], node.output[0]
    pads = _const_ints(t, node, 1) if t.g.opset >= 11 else \
        [int(v) for v in attr(node, "pads", [])]
    mode = attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    value = t.maybe_value(node.input[2]) if len(node.input) > 2 and node.input[2] else \
        attr(node, "value", 0.0) if t.g.opset < 11 else 0
    readers = [n for n in t.g.nodes if y in n.input]
    zero = _conv_input_zero(t, readers[0]) if len(readers) == 1 else None
    axes_ok = pads is not None and len(pads) == 8 and pads[0] == pads[1] == pads[4] == \
        pads[5] == 0 and min(pads) >= 0
    if mode == "constant" and axes_ok and value is not None and zero is not None and \
            np.asarray(value).size == 1 and float(np.asarray(value).ravel()[0]) == zero and \
            len(readers) == 1 and readers[0].op_type in CONV_LIKE and readers[0].input[0] == y \
            and y not in t.graph_outputs and len(t.shape(x, node)) == 4:
        t.use(x, node)
        t.folded_pads[y] = (pads[2], pads[3], pads[6], pads[7])
        t.remove(node, f"padding folded into {readers[0].name or readers[0].output[0]}")
        return
    t.unsupported(node, "Pad that is not zero padding of H and W before a conv")


def _const_ints(t, node, index: int):
    if len(node.input) <= index or not node.input[index]:
        return None
    value = t.maybe_value(node.input[index])
    return None if value is None else [int(v) for v in np.asarray(value).ravel()]


def _reshape_target(t, node, in_shape) -> tuple[int, ...] | None:
    target = _const_ints(t, node, 1)
    if target is None:
        return None
    allow_zero = int(attr(node, "allowzero", 0))
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allow_zero:
            if i >= len(in_shape):
                raise ModelImportError(f"{t.where(node)}: shape {target} copies dim {i} of a "
                                       f"rank-{len(in_shape)} input")
            d = in_shape[i]
        out.append(d)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise ModelImportError(f"{t.where(node)}: shape {target} is not a valid Reshape target")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        total = math.prod(in_shape)
        if known == 0 or total % known:
            raise ModelImportError(f"{t.where(node)}: input {in_shape} cannot become {target}")
        out[out.index(-1)] = total // known
    return tuple(out)


def _to_shape(t, node, out_shape) -> None:
    """A Reshape-like node whose output shape is known: a reshape node in the Program."""
    if not t.estimate and t.is_float(node.input[0]):
        return t.unsupported(node, f"float {node.op_type}")
    x = t.use(node.input[0], node)
    if out_shape is None:
        out_shape = t.onnx_shape(node.output[0])
    if out_shape is None:
        raise ModelImportError(f"{t.where(node)}: output shape unknown (the shape input is not "
                               f"a constant and shape inference could not tell)")
    if math.prod(out_shape) != math.prod(t.b.tensors[x].shape):
        raise ModelImportError(f"{t.where(node)}: {t.b.tensors[x].shape} cannot become "
                               f"{tuple(out_shape)}")
    t.emit(node, OpKind.RESHAPE, [x], node.output[0], shape=[int(d) for d in out_shape],
           **t.output_kwargs(node.output[0], node))


def reshape(t, node) -> None:
    in_shape = t.shape(node.input[0], node)
    _to_shape(t, node, _reshape_target(t, node, in_shape))


def squeeze_unsqueeze(t, node) -> None:
    in_shape = list(t.shape(node.input[0], node))
    axes = attr(node, "axes", None)
    if axes is None:
        axes = _const_ints(t, node, 1)
    out = None
    if node.op_type == "Squeeze":
        if axes is None and len(node.input) < 2:
            out = [d for d in in_shape if d != 1]
        elif axes is not None:
            norm = {_norm_axis(t, node, int(a), len(in_shape)) for a in axes}
            out = [d for i, d in enumerate(in_shape) if i not in norm]
    elif axes is not None:
        rank = len(in_shape) + len(axes)
        norm = sorted(_norm_axis(t, node, int(a), rank) for a in axes)
        out = list(in_shape)
        for a in norm:
            out.insert(a, 1)
    _to_shape(t, node, None if out is None else tuple(out))


def flatten(t, node) -> None:
    if not t.estimate and t.is_float(node.input[0]):
        return t.unsupported(node, "float Flatten")
    rank = len(t.shape(node.input[0], node))
    axis = _norm_axis(t, node, int(attr(node, "axis", 1)), rank, extra=1)
    t.emit(node, OpKind.FLATTEN, [t.use(node.input[0], node)], node.output[0], axis=axis,
           **t.output_kwargs(node.output[0], node))


def transpose(t, node) -> None:
    if not t.estimate and t.is_float(node.input[0]):
        return t.unsupported(node, "float Transpose")
    rank = len(t.shape(node.input[0], node))
    perm = attr(node, "perm", None)
    perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
    t.emit(node, OpKind.TRANSPOSE, [t.use(node.input[0], node)], node.output[0], perm=perm,
           **t.output_kwargs(node.output[0], node))


def identity(t, node) -> None:
    if any(t.used(o) for o in node.output[1:]):
        return t.unsupported(node, "the Dropout mask output is not supported")
    t.use(node.input[0], node)
    t.remove(node, "no-op at inference")


HANDLERS = {
    "MaxPool": maxpool, "AveragePool": averagepool, "GlobalAveragePool": global_averagepool,
    "Concat": concat, "Relu": relu, "Clip": clip, "Pad": pad, "Reshape": reshape, "Squeeze": squeeze_unsqueeze,
    "Unsqueeze": squeeze_unsqueeze, "Flatten": flatten, "Transpose": transpose,
    "Identity": identity, "Dropout": identity,
}
