"""The op vocabulary of the integer Program: each kind with its arity, attributes and shapes.

Semantics of every op are the reference implementation's (``simulator.numerics.reference``);
this module only says what a well-formed node looks like, so that a Program is validated on
load before anything runs. Layouts are NCHW, weights OIHW, as in ONNX and PyTorch.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Callable

from simulator.errors import ProgramError


class OpKind(str, enum.Enum):
    CONV2D = "conv2d"                    # x, w[, bias] -> accumulator
    FULLY_CONNECTED = "fully_connected"  # x[N,K], w[M,K][, bias] -> accumulator[N,M]
    MATMUL = "matmul"                    # a[...,N,K], b[...,K,M] (both activations) -> accumulator
    REQUANTIZE = "requantize"            # wide int -> narrow int, real scale per tensor or channel
    MAXPOOL2D = "maxpool2d"
    AVGPOOL2D = "avgpool2d"
    GLOBAL_AVGPOOL2D = "global_avgpool2d"
    CONCAT = "concat"                    # operands share dtype, scale and zero point
    ADD = "add"                          # a, b (own scales; b broadcast to a) -> y
    SUB = "sub"                          # a - b, rounded as add rounds a sum
    MINIMUM = "minimum"                  # elementwise min; operands and output share one grid
    MUL = "mul"                          # a, b (b broadcast to a, e.g. [N,C,1,1]) -> y
    CLAMP = "clamp"                      # relu is clamp(min=zero_point)
    LOOKUP_TABLE = "lookup_table"        # y = table[x - qmin(x)]; int16: TOSA's interpolated table
    MEAN = "mean"                        # mean of (x - zp) over axes, rescaled once (TFLite MEAN)
    GATHER = "gather"                    # table[indices]: rows of a table (an embedding lookup)
    SOFTMAX = "softmax"                  # x[, key mask]: exp LUT, integer normalisation
    RESHAPE = "reshape"
    FLATTEN = "flatten"
    TRANSPOSE = "transpose"
    QUANTIZE = "quantize"                # host boundary: f32 -> int (ONNX QuantizeLinear)
    DEQUANTIZE = "dequantize"            # host boundary: int -> f32 (ONNX DequantizeLinear)
    FALLBACK = "fallback"                # a float op run on the host (named by op_type)


MAC_OPS = frozenset({OpKind.CONV2D, OpKind.FULLY_CONNECTED, OpKind.MATMUL})
DATA_MOVEMENT_OPS = frozenset({OpKind.RESHAPE, OpKind.FLATTEN, OpKind.TRANSPOSE})

REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    kind: str            # int | ints | float | floats | str | bool | dict
    default: object = REQUIRED


@dataclass(frozen=True)
class OpInfo:
    min_inputs: int
    max_inputs: int
    attrs: dict[str, Attr] = field(default_factory=dict)
    shape: Callable[[list[tuple[int, ...]], dict], tuple[int, ...]] | None = None


def _pool_out(size: int, k: int, stride: int, pad_a: int, pad_b: int, dilation: int = 1) -> int:
    out = (size + pad_a + pad_b - dilation * (k - 1) - 1) // stride + 1
    if out < 1:
        raise ProgramError(f"window {k} (dilation {dilation}) does not fit input {size} "
                           f"with pads {pad_a},{pad_b}")
    return out


def _conv_shape(shapes, attrs):
    (n, c, h, w), (oc, icg, kh, kw) = shapes[0], shapes[1]
    if c != icg * attrs["groups"]:
        raise ProgramError(f"input has {c} channels, weights expect {icg} x groups {attrs['groups']}")
    if oc % attrs["groups"]:
        raise ProgramError(f"output channels {oc} not divisible by groups {attrs['groups']}")
    if len(shapes) > 2 and shapes[2] != (oc,):
        raise ProgramError(f"bias shape {shapes[2]} != ({oc},)")
    st, pd, dl = attrs["strides"], attrs["pads"], attrs["dilations"]
    return (n, oc, _pool_out(h, kh, st[0], pd[0], pd[2], dl[0]),
            _pool_out(w, kw, st[1], pd[1], pd[3], dl[1]))


def _fc_shape(shapes, attrs):
    (n, k), (m, k2) = shapes[0], shapes[1]
    if k != k2:
        raise ProgramError(f"fully_connected: input features {k} != weight columns {k2}")
    if len(shapes) > 2 and shapes[2] != (m,):
        raise ProgramError(f"bias shape {shapes[2]} != ({m},)")
    return (n, m)


def _matmul_shape(shapes, attrs):
    a, b = shapes
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        raise ProgramError(f"matmul: shapes {a} and {b} do not chain")
    batch_a, batch_b = a[:-2], b[:-2]
    if batch_b and batch_a != batch_b:
        raise ProgramError(f"matmul: batch dims {batch_a} and {batch_b} differ")
    return (*batch_a, a[-2], b[-1])


def _pool_shape(shapes, attrs):
    n, c, h, w = shapes[0]
    k, st, pd = attrs["kernel"], attrs["strides"], attrs["pads"]
    if pd[0] >= k[0] or pd[2] >= k[0] or pd[1] >= k[1] or pd[3] >= k[1]:
        raise ProgramError(f"pool pads {pd} must be smaller than the kernel {k}: a window of "
                           f"padding alone has no value")
    return (n, c, _pool_out(h, k[0], st[0], pd[0], pd[2]), _pool_out(w, k[1], st[1], pd[1], pd[3]))


def _gap_shape(shapes, attrs):
    n, c, _, _ = shapes[0]
    return (n, c, 1, 1)


def _same_shape(shapes, attrs):
    return shapes[0]


def _softmax_shape(shapes, attrs):
    x = shapes[0]
    if len(shapes) > 1:
        # to x, not with it: the output keeps x's shape, one mask flag per score
        mask = shapes[1]
        if len(mask) > len(x) or any(m not in (1, d) for m, d in zip(mask[::-1], x[::-1])):
            raise ProgramError(f"softmax: key mask shape {mask} does not broadcast to the input "
                               f"shape {x}")
    return x


def _add_shape(shapes, attrs):
    a, b = shapes
    # b broadcasts to a (NumPy rules), as mul's: a constant table read by every sample (a
    # position embedding [1, T, D]) or one value per channel
    if len(b) > len(a) or any(db not in (1, da) for da, db in zip(a[::-1], b[::-1])):
        raise ProgramError(f"add: operand shape {b} does not broadcast to {a}")
    return a


def _mul_shape(shapes, attrs):
    a, b = shapes
    # b broadcasts to a (NumPy rules), never the other way: the output is a's tensor, rescaled,
    # as a squeeze-and-excitation gate scales a feature map by one value per channel
    if len(b) > len(a) or any(db not in (1, da) for da, db in zip(a[::-1], b[::-1])):
        raise ProgramError(f"mul: operand shape {b} does not broadcast to {a}")
    return a


def reduced_axes(shape, axes) -> list[int]:
    """A mean's ``axes`` of a tensor of ``shape`` as distinct non-negative axes, in order."""
    return sorted({a % len(shape) for a in axes}) if shape else []


def _mean_shape(shapes, attrs):
    x = shapes[0]
    axes = reduced_axes(x, attrs["axes"])
    if not attrs["axes"] or len(axes) != len(attrs["axes"]) or \
            any(not -len(x) <= a < len(x) for a in attrs["axes"]):
        raise ProgramError(f"mean: axes {attrs['axes']} are not distinct axes of {x}")
    if attrs["keepdims"]:
        return tuple(1 if i in axes else d for i, d in enumerate(x))
    return tuple(d for i, d in enumerate(x) if i not in axes)


def _gather_shape(shapes, attrs):
    table, indices = shapes
    if len(table) < 2:
        raise ProgramError(f"gather: table shape {table} has no rows to gather")
    return (*indices, *table[1:])


def _concat_shape(shapes, attrs):
    axis = attrs["axis"] % len(shapes[0])
    for s in shapes[1:]:
        if len(s) != len(shapes[0]) or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0]))
                                           if i != axis):
            raise ProgramError(f"concat: shapes {shapes} differ outside axis {axis}")
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return tuple(out)


def _reshape_shape(shapes, attrs):
    total = math.prod(shapes[0])
    target = list(attrs["shape"])
    if target.count(-1) > 1:
        raise ProgramError("reshape: at most one -1")
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if known == 0 or total % known:
            raise ProgramError(f"reshape: {shapes[0]} cannot become {target}")
        target[target.index(-1)] = total // known
    if math.prod(target) != total:
        raise ProgramError(f"reshape: {shapes[0]} cannot become {target}")
    return tuple(target)


def _flatten_shape(shapes, attrs):
    s = shapes[0]
    axis = attrs["axis"] % (len(s) + 1) if s else 0
    return (math.prod(s[:axis]), math.prod(s[axis:]))


def _transpose_shape(shapes, attrs):
    perm = attrs["perm"]
    if sorted(perm) != list(range(len(shapes[0]))):
        raise ProgramError(f"transpose: perm {perm} is not a permutation of {len(shapes[0])} axes")
    return tuple(shapes[0][p] for p in perm)


_WINDOW = {"kernel": Attr("ints"), "strides": Attr("ints", [1, 1]), "pads": Attr("ints", [0, 0, 0, 0])}

OP_INFO: dict[OpKind, OpInfo] = {
    OpKind.CONV2D: OpInfo(2, 3, {"strides": Attr("ints", [1, 1]), "pads": Attr("ints", [0, 0, 0, 0]),
                                 "dilations": Attr("ints", [1, 1]), "groups": Attr("int", 1)},
                          _conv_shape),
    OpKind.FULLY_CONNECTED: OpInfo(2, 3, {}, _fc_shape),
    OpKind.MATMUL: OpInfo(2, 2, {}, _matmul_shape),
    OpKind.REQUANTIZE: OpInfo(1, 1, {"real_multiplier": Attr("floats"), "axis": Attr("int", 1),
                                     "clamp_min": Attr("int", None), "clamp_max": Attr("int", None)},
                              _same_shape),
    OpKind.MAXPOOL2D: OpInfo(1, 1, dict(_WINDOW), _pool_shape),
    OpKind.AVGPOOL2D: OpInfo(1, 1, {**_WINDOW, "count_include_pad": Attr("bool", False)}, _pool_shape),
    OpKind.GLOBAL_AVGPOOL2D: OpInfo(1, 1, {}, _gap_shape),
    OpKind.CONCAT: OpInfo(1, 64, {"axis": Attr("int", 1)}, _concat_shape),
    OpKind.ADD: OpInfo(2, 2, {"clamp_min": Attr("int", None), "clamp_max": Attr("int", None)},
                       _add_shape),
    OpKind.SUB: OpInfo(2, 2, {"clamp_min": Attr("int", None), "clamp_max": Attr("int", None)},
                       _add_shape),
    OpKind.MUL: OpInfo(2, 2, {"clamp_min": Attr("int", None), "clamp_max": Attr("int", None)},
                       _mul_shape),
    OpKind.MINIMUM: OpInfo(2, 2, {}, _add_shape),
    OpKind.CLAMP: OpInfo(1, 1, {"min": Attr("int"), "max": Attr("int")}, _same_shape),
    # function: what the table holds ("sigmoid", "hardswish" ...), for the chip's activation
    # unit and the reports; the table alone defines the values. interpolated: a 16-bit input
    # reads a 513-entry table between entries, as TOSA's TABLE (reference.lookup_interpolated)
    OpKind.LOOKUP_TABLE: OpInfo(1, 1, {"table": Attr("ints"), "function": Attr("str", None),
                                       "interpolated": Attr("bool", False)}, _same_shape),
    OpKind.MEAN: OpInfo(1, 1, {"axes": Attr("ints"), "keepdims": Attr("bool", True)},
                        _mean_shape),
    OpKind.GATHER: OpInfo(2, 2, {}, _gather_shape),
    OpKind.SOFTMAX: OpInfo(1, 2, {"axis": Attr("int", -1), "exp_table": Attr("ints")},
                           _softmax_shape),
    OpKind.RESHAPE: OpInfo(1, 1, {"shape": Attr("ints")}, _reshape_shape),
    OpKind.FLATTEN: OpInfo(1, 1, {"axis": Attr("int", 1)}, _flatten_shape),
    OpKind.TRANSPOSE: OpInfo(1, 1, {"perm": Attr("ints")}, _transpose_shape),
    OpKind.QUANTIZE: OpInfo(1, 1, {}, _same_shape),
    OpKind.DEQUANTIZE: OpInfo(1, 1, {}, _same_shape),
    OpKind.FALLBACK: OpInfo(0, 64, {"op_type": Attr("str"), "attributes": Attr("dict", {})}, None),
}


def _check_value(op: str, name: str, attr: Attr, value):
    ok = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "ints": lambda v: isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                      for i in v),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "floats": lambda v: isinstance(v, list) and len(v) > 0
        and all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in v),
        "str": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "dict": lambda v: isinstance(v, dict),
    }[attr.kind]
    if value is None and attr.default is None:
        return
    if not ok(value):
        raise ProgramError(f"{op}: attribute {name!r} must be {attr.kind}, got {value!r}")


def normalise_attrs(kind: OpKind, attrs: dict, where: str) -> dict:
    """Fill defaults, reject unknown or missing attributes, check types."""
    info = OP_INFO[kind]
    unknown = set(attrs) - set(info.attrs)
    if unknown:
        raise ProgramError(f"{where}: unknown attribute(s) {sorted(unknown)} for {kind.value}; "
                           f"allowed: {sorted(info.attrs)}")
    out = {}
    for name, attr in info.attrs.items():
        if name in attrs:
            value = attrs[name]
        elif attr.default is REQUIRED:
            raise ProgramError(f"{where}: {kind.value} needs attribute {name!r}")
        else:
            value = attr.default
        _check_value(f"{where} ({kind.value})", name, attr, value)
        out[name] = list(value) if isinstance(value, (list, tuple)) else value
    for name, length in (("strides", 2), ("pads", 4), ("dilations", 2), ("kernel", 2)):
        if name in out and len(out[name]) != length:
            raise ProgramError(f"{where}: {name} must have {length} values, got {out[name]}")
        if name in out and name != "pads" and any(v < 1 for v in out[name]):
            raise ProgramError(f"{where}: {name} must be >= 1, got {out[name]}")
    if "pads" in out and any(v < 0 for v in out["pads"]):
        raise ProgramError(f"{where}: pads must be >= 0, got {out['pads']}")
    if kind is OpKind.CONV2D and out["groups"] < 1:
        raise ProgramError(f"{where}: groups must be >= 1")
    return out


def infer_shape(kind: OpKind, shapes: list[tuple[int, ...]], attrs: dict, where: str):
    """Output shape of a node from its input shapes, or a ProgramError naming the node."""
    info = OP_INFO[kind]
    if info.shape is None:
        return None
    rank = {OpKind.CONV2D: 4, OpKind.MAXPOOL2D: 4, OpKind.AVGPOOL2D: 4,
            OpKind.GLOBAL_AVGPOOL2D: 4, OpKind.FULLY_CONNECTED: 2}.get(kind)
    if rank and len(shapes[0]) != rank:
        raise ProgramError(f"{where}: {kind.value} needs a rank-{rank} input, got {shapes[0]}")
    if kind is OpKind.CONV2D and len(shapes[1]) != 4:
        raise ProgramError(f"{where}: conv2d weights must be OIHW, got {shapes[1]}")
    if kind is OpKind.FULLY_CONNECTED and len(shapes[1]) != 2:
        raise ProgramError(f"{where}: fully_connected weights must be [out, in], got {shapes[1]}")
    try:
        return tuple(int(d) for d in info.shape(shapes, attrs))
    except ProgramError as exc:
        raise ProgramError(f"{where}: {exc}") from None
    except (IndexError, ValueError, TypeError, KeyError, ZeroDivisionError) as exc:
        raise ProgramError(f"{where}: {kind.value} cannot take input shapes {shapes} ({exc})") from None
