"""MAC ops shared by the integer and the float mappings: conv2d, fully_connected, matmul."""

from __future__ import annotations

import math

import numpy as np

from simulator.contract import ACCUMULATOR
from simulator.errors import ModelImportError
from simulator.ir.ops import OpKind
from simulator.onnx_import.attributes import attr, window_geometry
from simulator.onnx_import.quant_params import QParams


def conv2d(t, node, x: str, w: str, bias: str | None, out: str, **out_kw) -> bool:
    """Emit conv2d for a 2-D Conv-like node; False when the node is not 2-D (caller decides)."""
    x_shape, w_shape = t.shape(x, node), t.shape(w, node)
    if len(x_shape) != 4 or len(w_shape) != 4:
        return False
    kernel = tuple(w_shape[2:])
    declared = attr(node, "kernel_shape", None)
    if declared is not None and tuple(int(k) for k in declared) != kernel:
        raise ModelImportError(f"{t.where(node)}: kernel_shape {list(declared)} does not match "
                               f"weights {w_shape}")
    if not t.estimate and not t.is_const(w):
        raise ModelImportError(f"{t.where(node)}: weights {w!r} must be a constant (an "
                               f"initializer or computed from initializers only)")
    group = int(attr(node, "group", 1))
    if group < 1:
        raise ModelImportError(f"{t.where(node)}: group {group} must be >= 1")
    extra = t.folded_pads.pop(x, (0, 0, 0, 0))  # a Pad before the conv, folded by ops_layout
    in_hw = (x_shape[2] + extra[0] + extra[2], x_shape[3] + extra[1] + extra[3])
    strides, pads, dilations = window_geometry(node, in_hw, kernel, t.where(node),
                                               allow_ceil=False)
    pads = tuple(p + e for p, e in zip(pads, extra))
    inputs = [t.use(x, node), t.use(w, node)]
    if bias:
        inputs.append(t.use(bias, node))
    t.emit(node, OpKind.CONV2D, inputs, out, strides=list(strides), pads=list(pads),
           dilations=list(dilations), groups=group, **out_kw)
    return True


def weight_matrix(t, node, name: str, transpose: bool, params: QParams | None = None) -> str:
    """An ONNX matrix as fully_connected weights [out, in]: ``name`` itself or its transpose
    (a new constant; per-column parameters of B become per-row ones of the transpose)."""
    shape = t.shape(name, node)
    if len(shape) != 2:
        raise ModelImportError(f"{t.where(node)}: weights {name!r} must be 2-D, got {shape}")
    if not transpose:
        return t.use(name, node)
    key = ("T", t.resolve(name))
    cache = t.__dict__.setdefault("_transposed", {})
    if key in cache:
        return cache[key]
    new = t.fresh(f"{t.resolve(name)}_transposed")
    t.g.elem_types[new] = t.g.elem_types.get(t.resolve(name), t.g.elem_types.get(name))
    if t.estimate:
        t.b.tensor(new, (shape[1], shape[0]), t.elem_dtype(name, node))
    else:
        q = params or t.qp(t.resolve(name))
        axis = None if q.axis is None else 1 - q.axis
        data = np.ascontiguousarray(np.asarray(t.value(name, node)).T)
        t.declare_constant(new, node, data=data, params=QParams(q.scale, q.zero_point, axis))
    cache[key] = new
    return new


def flatten_rows(t, node, a: str) -> tuple[str, tuple[int, ...] | None]:
    """``a`` as a matrix [rows, K] for fully_connected (a reshape when ``a`` has rank > 2)."""
    shape = t.shape(a, node)
    prog = t.use(a, node)
    if len(shape) == 2:
        return prog, None
    rows = math.prod(shape[:-1])
    flat = t.fresh(f"{t.resolve(a)}_rows")
    t.emit(node, OpKind.RESHAPE, [prog], flat, suffix="/rows", shape=[rows, shape[-1]],
           check_onnx_shape=False)
    return flat, tuple(shape[:-1])


def unflatten_rows(t, node, value: str, out: str, lead: tuple[int, ...], **out_kw) -> None:
    cols = t.b.tensors[value].shape[-1]
    t.emit(node, OpKind.RESHAPE, [value], out, suffix="/unrows", shape=[*lead, cols], **out_kw)


def matmul_ok(a_shape, b_shape) -> bool:
    """Shapes the Program's matmul takes: both rank >= 2, b's batch empty or equal to a's."""
    return len(a_shape) >= 2 and len(b_shape) >= 2 and a_shape[-1] == b_shape[-2] and \
        (len(b_shape) == 2 or tuple(a_shape[:-2]) == tuple(b_shape[:-2]))


def accumulator_kwargs(t, scale=None, axis=None) -> dict:
    if t.estimate:
        return {"dtype": ACCUMULATOR}
    return {"dtype": ACCUMULATOR, "scale": scale, "qaxis": axis}
