"""ONNX attributes and types in our vocabulary: dtypes, JSON-able attributes, window geometry."""

from __future__ import annotations

import math

from simulator.contract import FLOAT32, DType, IntType
from simulator.errors import ModelImportError

# ONNX TensorProto element types (numbers fixed by onnx.proto)
FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64, STRING, BOOL = 1, 2, 3, 4, 5, 6, 7, 8, 9
FLOAT16, DOUBLE, UINT32, UINT64, BFLOAT16, UINT4, INT4 = 10, 11, 12, 13, 16, 21, 22

_INT_TYPES = {UINT8: IntType(8, False), INT8: IntType(8, True), UINT16: IntType(16, False),
              INT16: IntType(16, True), INT32: IntType(32, True), INT64: IntType(64, True),
              UINT32: IntType(32, False), UINT64: IntType(64, False), BOOL: IntType(1, False),
              UINT4: IntType(4, False), INT4: IntType(4, True)}
INTEGER_ELEM_TYPES = frozenset(_INT_TYPES)


def elem_type_name(elem_type: int) -> str:
    try:
        from onnx import TensorProto
        return TensorProto.DataType.Name(elem_type)
    except Exception:
        return f"type#{elem_type}"


def dtype_of(elem_type: int | None, shape_only: bool, where: str) -> DType:
    """Our dtype for an ONNX element type; float types become f32 (estimation only needs sizes)."""
    if elem_type in _INT_TYPES:
        return _INT_TYPES[elem_type]
    if elem_type == FLOAT or shape_only:
        return FLOAT32
    raise ModelImportError(f"{where}: element type {elem_type_name(elem_type or 0)} is not "
                           f"supported in an executable graph (float32 and 1..32-bit integers)")


def attributes(node) -> dict:
    """A node's attributes as JSON-able values (tensors and graphs summarised, not copied)."""
    from onnx import AttributeProto as A

    out = {}
    for a in node.attribute:
        if a.type == A.FLOAT:
            out[a.name] = float(a.f)
        elif a.type == A.INT:
            out[a.name] = int(a.i)
        elif a.type == A.STRING:
            out[a.name] = a.s.decode("utf-8", "replace")
        elif a.type == A.FLOATS:
            out[a.name] = [float(v) for v in a.floats]
        elif a.type == A.INTS:
            out[a.name] = [int(v) for v in a.ints]
        elif a.type == A.STRINGS:
            out[a.name] = [v.decode("utf-8", "replace") for v in a.strings]
        elif a.type == A.TENSOR:
            out[a.name] = {"tensor": {"dims": [int(d) for d in a.t.dims],
                                      "dtype": elem_type_name(a.t.data_type)}}
        elif a.type == A.GRAPH:
            out[a.name] = {"graph": a.g.name, "nodes": len(a.g.node)}
        elif a.type == A.GRAPHS:
            out[a.name] = [{"graph": g.name, "nodes": len(g.node)} for g in a.graphs]
        else:
            out[a.name] = {"unsupported_attribute_type": int(a.type)}
    return out


def attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def window_geometry(node, in_hw: tuple[int, int], kernel: tuple[int, int], where: str,
                    allow_ceil: bool = True):
    """(strides, pads[t, l, b, r], dilations) of a 2-D conv/pool node, auto_pad and ceil_mode
    resolved into explicit pads (ceil_mode adds end padding, which max/avg pooling ignore)."""
    strides = tuple(int(v) for v in attr(node, "strides", [1, 1]))
    dilations = tuple(int(v) for v in attr(node, "dilations", [1, 1]))
    pads = [int(v) for v in attr(node, "pads", [0, 0, 0, 0])]
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode("utf-8", "replace") if isinstance(auto_pad, bytes) else str(auto_pad)
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        raise ModelImportError(f"{where}: strides/dilations/pads must describe 2 spatial axes, "
                               f"got {strides}, {dilations}, {pads}")
    if min(strides) < 1 or min(dilations) < 1 or min(pads) < 0:
        raise ModelImportError(f"{where}: strides {strides} and dilations {dilations} must be "
                               f">= 1 and pads {pads} >= 0")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            out = math.ceil(in_hw[i] / strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_hw[i], 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    elif auto_pad != "NOTSET":
        raise ModelImportError(f"{where}: auto_pad {auto_pad!r} unknown")
    if int(attr(node, "ceil_mode", 0)):
        if not allow_ceil:
            raise ModelImportError(f"{where}: ceil_mode is not supported here")
        for i in range(2):
            span = in_hw[i] + pads[i] + pads[i + 2] - dilations[i] * (kernel[i] - 1) - 1
            if span < 0:
                break
            out = -(-span // strides[i]) + 1
            if (out - 1) * strides[i] >= in_hw[i] + pads[i]:
                out -= 1  # the last window would start in the end padding: ONNX drops it
            extra = (out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 \
                - (in_hw[i] + pads[i] + pads[i + 2])
            pads[i + 2] += max(extra, 0)
    return strides, tuple(pads), dilations
