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
    if t.is_float(node.input[0]):
        return t.unsupported(node, "float Relu")
    x = t.use(node.input[0], node)
    dtype = t.b.tensors[x].dtype
    if not isinstance(dtype, IntType):
        return t.unsupported(node, f"Relu on {dtype}")
    # ONNX Relu on integers is max(x, 0) of the stored values, whatever the zero point
    t.emit(node, OpKind.CLAMP, [x], node.output[0], min=0, max=dtype.qmax,
           **t.output_kwargs(node.output[0], node))


def fused_relu(t, node) -> None:
    """Float Relu for estimation: fused into the MAC or add that feeds it (as every NPU does, the
    activation is the clamp of the requantization), else a clamp node of its own."""
    src = t.resolve(node.input[0])
    kind = t.producing_op(src)
    if kind in (OpKind.CONV2D, OpKind.FULLY_CONNECTED, OpKind.MATMUL, OpKind.ADD) \
            and t.sole_consumer(node):
        if kind is OpKind.ADD:
            t.replace_node(t.producer[src], attrs={"clamp_min": 0})
        t.alias[node.output[0]] = src
        t.meta.setdefault("fused_activations", []).append(
            {"node": node.name or node.output[0], "op_type": node.op_type,
             "into": t.b.nodes[t.producer[src]].name})
        return
    # a float clamp: the bounds are real numbers 0 and +inf; INT32_MAX stands for "none"
    t.emit(node, OpKind.CLAMP, [t.use(node.input[0], node)], node.output[0], min=0,
           max=INT32_MAX, **t.output_kwargs(node.output[0], node))


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
    "Concat": concat, "Relu": relu, "Reshape": reshape, "Squeeze": squeeze_unsqueeze,
    "Unsqueeze": squeeze_unsqueeze, "Flatten": flatten, "Transpose": transpose,
    "Identity": identity, "Dropout": identity,
}
