"""Float ops of any ONNX graph, mapped for cost estimation (the Program is estimate-only).

Conv -> conv2d, Gemm/MatMul -> fully_connected or matmul, pools, Concat, Add/Sum -> add,
Softmax -> softmax, BatchNormalization right after a Conv folded into it, a bias Add right after
a MatMul by weights folded into its fully_connected, Relu and Clip fused into the MAC or add that
feeds it, Mul of two activations (a squeeze-and-excitation gate) -> mul, ReduceMean over H and W
-> global average pool, PRelu -> the activation unit; activation functions however spelled
(Sigmoid, HardSwish, SiLU as Sigmoid and Mul, GELU as Erf or Tanh arithmetic) are found by
``functions`` before the walk. Every other op is a ``fallback`` node that names the ONNX op and
keeps its attributes, with the output shapes from shape inference.
"""

from __future__ import annotations

import math

from simulator.errors import ModelImportError
from simulator.ir.ops import OpKind
from simulator.onnx_import import mac
from simulator.onnx_import.attributes import attr, attributes


def _opt(node, i: int) -> str | None:
    return node.input[i] if len(node.input) > i and node.input[i] else None


def fallback(t, node) -> None:
    """Any op: a host fallback node per used output, shapes from shape inference."""
    if not t.estimate:
        raise ModelImportError(
            f"{t.where(node)}: {node.op_type} is not supported in an integer graph; import with "
            f"estimate_only=True to estimate its cost")
    inputs = []
    for name in node.input:
        if not name:
            continue
        r = t.resolve(name)
        if r in t.constants and r not in t.b.tensors:
            shape = t.onnx_shape(r)
            if shape is None:
                raise ModelImportError(f"{t.where(node)}: shape of constant input {name!r} is "
                                       f"unknown")
            if any(d < 1 for d in shape):
                continue  # an empty constant (e.g. Resize's unused roi) costs nothing
        inputs.append(t.use(name, node))
    op_type = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    attrs = attributes(node)
    used = [(i, o) for i, o in enumerate(node.output) if t.used(o)]
    for i, out in used:
        shape = t.onnx_shape(out)
        if shape is None:
            hint = f"; strict shape inference said: {t.g.inference_error}" \
                if t.g.inference_error else ""
            raise ModelImportError(f"{t.where(node)}: shape inference gives no static shape for "
                                   f"output {out!r} (give input_shapes with static sizes{hint})")
        extra = {} if len(node.output) == 1 else {"output_index": i}
        t.emit(node, OpKind.FALLBACK, inputs, out, suffix="" if len(used) == 1 else f":{i}",
               out_shape=shape, op_type=op_type, attributes={**attrs, **extra},
               dtype=t.elem_dtype(out, node))


def conv(t, node) -> None:
    if not t.estimate:
        return t.unsupported(node, "float Conv")
    y = node.output[0]
    if not mac.conv2d(t, node, node.input[0], node.input[1], _opt(node, 2), y,
                      **t.output_kwargs(y, node)):
        fallback(t, node)


def batch_normalization(t, node) -> None:
    """Folded into the conv2d that feeds it (inference form only), else a fallback."""
    src = t.resolve(node.input[0])
    index = t.producer.get(src)
    if index is None or t.b.nodes[index].op is not OpKind.CONV2D or not t.sole_consumer(node) \
            or any(t.used(o) for o in node.output[1:]) or int(attr(node, "training_mode", 0)):
        return fallback(t, node)
    conv_node = t.b.nodes[index]
    if len(conv_node.inputs) == 2 and _opt(node, 2):
        channels = t.b.tensors[conv_node.outputs[0]].shape[1]
        beta = t.use(node.input[2], node)
        if t.b.tensors[beta].shape != (channels,):
            return fallback(t, node)
        t.replace_node(index, inputs=(*conv_node.inputs, beta))
    t.alias[node.output[0]] = src
    t.meta.setdefault("folded_batchnorm", []).append(
        {"node": node.name or node.output[0], "into": conv_node.name,
         "epsilon": float(attr(node, "epsilon", 1e-5))})


def gemm(t, node) -> None:
    if not t.estimate:
        return t.unsupported(node, "float Gemm")
    a, b, c, y = node.input[0], node.input[1], _opt(node, 2), node.output[0]
    if int(attr(node, "transA", 0)) or len(t.shape(a, node)) != 2:
        return fallback(t, node)
    trans_b = bool(int(attr(node, "transB", 0)))
    kw = t.output_kwargs(y, node)
    if t.is_const(b):
        w = mac.weight_matrix(t, node, b, transpose=not trans_b)
        n_out = t.b.tensors[w].shape[0]
        inputs = [t.use(a, node), w]
        if c is not None:
            if not t.is_const(c):
                return fallback(t, node)
            c_shape = t.shape(c, node)
            if tuple(c_shape) == (n_out,):
                inputs.append(t.use(c, node))
            else:  # a broadcast bias (scalar or [1, N]): the chip holds it as [N]
                bias = t.fresh(f"{t.resolve(c)}_bias")
                t.b.tensor(bias, (n_out,), t.elem_dtype(c, node))
                inputs.append(bias)
        t.emit(node, OpKind.FULLY_CONNECTED, inputs, y, **kw)
        return
    if c is not None:
        return fallback(t, node)
    rhs = t.use(b, node)
    if trans_b:
        rhs = t.fresh(f"{t.resolve(b)}_transposed")
        t.emit(node, OpKind.TRANSPOSE, [t.use(b, node)], rhs, suffix="/transpose_b", perm=[1, 0],
               check_onnx_shape=False)
    if not mac.matmul_ok(t.shape(a, node), t.b.tensors[rhs].shape):
        return fallback(t, node)
    t.emit(node, OpKind.MATMUL, [t.use(a, node), rhs], y, **kw)


def matmul(t, node) -> None:
    if not t.estimate:
        return t.unsupported(node, "float MatMul")
    a, b, y = node.input[0], node.input[1], node.output[0]
    a_shape, b_shape = t.shape(a, node), t.shape(b, node)
    kw = t.output_kwargs(y, node)
    if t.is_const(b) and len(b_shape) == 2 and len(a_shape) >= 2:
        w = mac.weight_matrix(t, node, b, transpose=True)
        rows, lead = mac.flatten_rows(t, node, a)
        if lead is None:
            t.emit(node, OpKind.FULLY_CONNECTED, [rows, w], y, **kw)
        else:
            flat = t.fresh(f"{y}_rows")
            t.emit(node, OpKind.FULLY_CONNECTED, [rows, w], flat, check_onnx_shape=False, **kw)
            mac.unflatten_rows(t, node, flat, y, lead, **kw)
        return
    if not mac.matmul_ok(a_shape, b_shape):
        return fallback(t, node)
    t.emit(node, OpKind.MATMUL, [t.use(a, node), t.use(b, node)], y, **kw)


def _fold_affine(t, node) -> bool:
    """Mul or Add of a conv2d's output by a per-channel (or scalar) constant, the conv's only
    reader: folded into the conv's weights or bias, as BatchNormalization is."""
    names = [n for n in node.input if n]
    if len(names) != 2 or t.is_const(names[0]) == t.is_const(names[1]):
        return False
    act, const = (names[0], names[1]) if t.is_const(names[1]) else (names[1], names[0])
    src = t.resolve(act)
    index = t.producer.get(src)
    if index is None or t.b.nodes[index].op is not OpKind.CONV2D or \
            not t.sole_consumer(node, act):
        return False
    out_shape = t.b.tensors[src].shape
    channels = out_shape[1]
    c_shape = t.onnx_shape(t.resolve(const)) or t.onnx_shape(const)
    if c_shape is None or len(c_shape) > 4:
        return False
    c4 = (1,) * (4 - len(c_shape)) + tuple(c_shape)
    if c4[0] != 1 or c4[2:] != (1, 1) or c4[1] not in (1, channels):
        return False
    expected = t.onnx_shape(node.output[0])
    if expected is not None and tuple(expected) != tuple(out_shape):
        return False
    conv_node = t.b.nodes[index]
    if node.op_type == "Add" and len(conv_node.inputs) == 2:
        bias = t.fresh(f"{t.resolve(const)}_bias")
        t.b.tensor(bias, (channels,), t.elem_dtype(src, node))
        t.replace_node(index, inputs=(*conv_node.inputs, bias))
    t.alias[node.output[0]] = src
    t.meta.setdefault("folded_affine", []).append(
        {"node": node.name or node.output[0], "op_type": node.op_type, "into": conv_node.name})
    return True


def _fold_fc_bias(t, node) -> bool:
    """Add of a constant bias over the last axis to a bias-less fully_connected's output (as
    exporters write nn.Linear on rank-3 inputs: MatMul, then Add): folded into the layer's bias,
    as every chip's fully connected layer adds it; else the host would be charged for it."""
    names = [n for n in node.input if n]
    if len(names) != 2 or t.is_const(names[0]) == t.is_const(names[1]):
        return False
    act, const = (names[0], names[1]) if t.is_const(names[1]) else (names[1], names[0])
    src = t.resolve(act)
    index = t.producer.get(src)
    if index is None or not t.sole_consumer(node, act):
        return False
    made = t.b.nodes[index]
    if made.op is OpKind.RESHAPE:  # matmul's /unrows: the layer's rows back in the input's shape
        inner = t.producer.get(made.inputs[0])
        readers = sum(made.inputs[0] in n.inputs for n in t.b.nodes)
        if inner is None or readers != 1 or made.inputs[0] in t.b.outputs:
            return False
        index, made = inner, t.b.nodes[inner]
    if made.op is not OpKind.FULLY_CONNECTED or len(made.inputs) != 2:
        return False
    n_out = t.b.tensors[made.inputs[1]].shape[0]
    if t.b.tensors[src].shape[-1] != n_out:
        return False
    c_shape = t.onnx_shape(t.resolve(const)) or t.onnx_shape(const)
    if c_shape is None or not c_shape or c_shape[-1] != n_out or any(d != 1 for d in c_shape[:-1]) \
            or len(c_shape) > len(t.b.tensors[src].shape):
        return False
    expected = t.onnx_shape(node.output[0])
    if expected is not None and tuple(expected) != tuple(t.b.tensors[src].shape):
        return False
    if tuple(c_shape) == (n_out,):
        bias = t.use(const, node)
    else:
        bias = t.fresh(f"{t.resolve(const)}_bias")
        t.b.tensor(bias, (n_out,), t.elem_dtype(const, node))
    t.replace_node(index, inputs=(*made.inputs, bias))
    t.alias[node.output[0]] = src
    t.meta.setdefault("folded_bias", []).append(
        {"node": node.name or node.output[0], "into": made.name})
    return True


def mul(t, node) -> None:
    """A per-channel or scalar constant after a conv folds into it; two activations, one
    broadcast to the other (a squeeze-and-excitation gate [N, C, 1, 1] times the feature map),
    are the elementwise mul; anything else is a fallback."""
    if not t.estimate:
        return t.unsupported(node, "Mul")
    if _fold_affine(t, node):
        return
    names = [n for n in node.input if n]
    if len(names) == 2 and t.is_const(names[0]) != t.is_const(names[1]):
        return _scale_by_constant(t, node)
    if len(names) != 2 or any(t.is_const(n) for n in names):
        return fallback(t, node)
    a, b = names
    y_shape = t.onnx_shape(node.output[0])
    if y_shape is not None and tuple(t.shape(a, node)) != tuple(y_shape):
        a, b = b, a  # the operand with the output's shape first: the other broadcasts to it
    y = node.output[0]
    if y_shape is None or tuple(t.shape(a, node)) != tuple(y_shape):
        return fallback(t, node)
    t.emit(node, OpKind.MUL, [t.use(a, node), t.use(b, node)], y, **t.output_kwargs(y, node))


def _scale_by_constant(t, node) -> None:
    """An activation times (or, for Div, over) one constant value, where no conv takes it into
    its weights (attention's 1/sqrt(d) after a split): the elementwise mul by a scalar, a
    rescale every chip's elementwise unit runs."""
    names = [n for n in node.input if n]
    act, const = (names[1], names[0]) if t.is_const(names[0]) else (names[0], names[1])
    if node.op_type == "Div" and act != names[0]:
        return fallback(t, node)   # c / x is a reciprocal, not a rescale
    shape = t.onnx_shape(t.resolve(const)) or t.onnx_shape(const)
    y = node.output[0]
    if shape is None or math.prod(shape) != 1 or \
            tuple(t.onnx_shape(y) or ()) != tuple(t.shape(act, node)):
        return fallback(t, node)
    t.emit(node, OpKind.MUL, [t.use(act, node), t.use(const, node)], y,
           **t.output_kwargs(y, node))


def div(t, node) -> None:
    if not t.estimate:
        return t.unsupported(node, "Div")
    names = [n for n in node.input if n]
    if len(names) == 2 and t.is_const(names[1]) and not t.is_const(names[0]):
        return _scale_by_constant(t, node)
    fallback(t, node)


def prelu(t, node) -> None:
    """PRelu with a constant slope: the activation unit's prelu (leaky_relu for one slope)."""
    slope = node.input[1] if len(node.input) > 1 else ""
    x, y = node.input[0], node.output[0]
    if not t.estimate or not slope or not t.is_const(slope) or \
            tuple(t.onnx_shape(y) or ()) != tuple(t.shape(x, node)):
        return fallback(t, node) if t.estimate else t.unsupported(node, "PRelu")
    shape = t.onnx_shape(t.resolve(slope)) or t.onnx_shape(slope) or ()
    function = "leaky_relu" if math.prod(shape) == 1 else "prelu"
    t.emit(node, OpKind.LOOKUP_TABLE, [t.use(x, node)], y, table=[], function=function,
           **t.output_kwargs(y, node))


def reduce_mean(t, node) -> None:
    """ReduceMean over H and W of an NCHW tensor (how torchvision's MobileNets pool): the
    global average pool, then a reshape when the reduced axes are dropped."""
    if not t.estimate:
        return t.unsupported(node, "ReduceMean")
    shape = t.shape(node.input[0], node)
    if t.g.opset >= 18 and len(node.input) > 1 and node.input[1]:
        axes = t.maybe_value(node.input[1])
        axes = None if axes is None else [int(a) for a in axes.ravel()]
    else:
        axes = attr(node, "axes", None)
    if axes is None or len(shape) != 4 or sorted(a % 4 for a in axes) != [2, 3]:
        return fallback(t, node)
    y = node.output[0]
    x = t.use(node.input[0], node)
    if int(attr(node, "keepdims", 1)):
        t.emit(node, OpKind.GLOBAL_AVGPOOL2D, [x], y, **t.output_kwargs(y, node))
        return
    pooled = t.fresh(f"{y}_pooled")
    t.emit(node, OpKind.GLOBAL_AVGPOOL2D, [x], pooled, check_onnx_shape=False,
           **t.output_kwargs(y, node))
    t.emit(node, OpKind.RESHAPE, [pooled], y, suffix="/squeeze", shape=list(shape[:2]),
           **t.output_kwargs(y, node))


def add(t, node) -> None:
    """Add/Sum of two same-shape activations -> add; a per-channel constant after a conv, or a
    bias after a fully_connected, is folded into its bias; other broadcasting or constants ->
    fallback."""
    if not t.estimate:
        return t.unsupported(node, f"{node.op_type} of integer or float tensors")
    if node.op_type == "Add" and (_fold_affine(t, node) or _fold_fc_bias(t, node)):
        return
    names = [n for n in node.input if n]
    if node.op_type == "Sum" and len(names) == 1:
        t.use(names[0], node)
        return t.remove(node, "Sum of one input")
    if len(names) != 2 or any(t.is_const(n) for n in names):
        return fallback(t, node)
    if tuple(t.shape(names[0], node)) != tuple(t.shape(names[1], node)):
        return fallback(t, node)
    y = node.output[0]
    t.emit(node, OpKind.ADD, [t.use(n, node) for n in names], y, **t.output_kwargs(y, node))


def softmax(t, node) -> None:
    if not t.estimate:
        return t.unsupported(node, "float Softmax")
    shape = t.shape(node.input[0], node)
    rank = len(shape)
    axis = int(attr(node, "axis", 1 if t.g.opset < 13 else -1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        return fallback(t, node)
    if t.g.opset < 13 and any(d != 1 for d in shape[axis + 1:]):
        return fallback(t, node)  # opset < 13 normalises over all axes from `axis` on
    y = node.output[0]
    t.emit(node, OpKind.SOFTMAX, [t.use(node.input[0], node)], y, axis=axis, exp_table=[],
           **t.output_kwargs(y, node))


HANDLERS = {
    "Conv": conv, "BatchNormalization": batch_normalization, "Gemm": gemm, "MatMul": matmul,
    "Add": add, "Sum": add, "Mul": mul, "Div": div, "Softmax": softmax, "PRelu": prelu,
    "ReduceMean": reduce_mean,
}
