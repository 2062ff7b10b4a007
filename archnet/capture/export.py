"""Capture: any ``torch.nn.Module`` with example inputs -> a ``TeacherGraph``.

The module is traced by ``torch.export`` (ATen's training-level ops: ``conv2d``, ``batch_norm``,
``linear``, ``layer_norm`` ... one node per PyTorch call), and each ATen call becomes a node of
the converter's vocabulary with its settings spelled out (defaults filled, ints made pairs).
Calls with no family here keep their ATen name, so that planning lists them with their module
path instead of failing at the first one. Nothing of the model changes: it is traced in eval mode
and put back in the mode it had.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, Sequence

import torch
from torch import nn

from archnet.capture.graph import TeacherGraph, TeacherNode
from archnet.capture.masks import call, key_masks
from archnet.errors import ConversionError

_IDENTITY_OPS = {"dropout", "feature_dropout", "alpha_dropout", "clone", "contiguous", "alias",
                 "detach", "lift_fresh_copy"}


def _pair(v) -> list[int]:
    if isinstance(v, (list, tuple)):
        return [int(v[0]), int(v[-1])] if v else []
    return [int(v), int(v)]


def _arg(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _conv(args, kw):
    padding = _arg(args, kw, 4, "padding", [0, 0])
    weight_shape = args[1].meta["val"].shape
    dilation = _pair(_arg(args, kw, 5, "dilation", [1, 1]))
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        else:   # 'same' at stride 1: symmetric where the dilated kernel is odd
            spans = [d * (k - 1) for d, k in zip(dilation, weight_shape[2:])]
            if any(s % 2 for s in spans):
                return None
            padding = [s // 2 for s in spans]
    return {"stride": _pair(_arg(args, kw, 3, "stride", [1, 1])), "padding": _pair(padding),
            "dilation": dilation, "groups": int(_arg(args, kw, 6, "groups", 1))}


def _pool(args, kw, avg: bool):
    kernel = _pair(args[1])
    stride = _arg(args, kw, 2, "stride", [])
    attrs = {"kernel": kernel, "stride": _pair(stride) if stride else list(kernel),
             "padding": _pair(_arg(args, kw, 3, "padding", 0))}
    if avg:
        attrs.update(ceil_mode=bool(_arg(args, kw, 4, "ceil_mode", False)),
                     count_include_pad=bool(_arg(args, kw, 5, "count_include_pad", True)),
                     divisor=_arg(args, kw, 6, "divisor_override", None), dilation=[1, 1])
    else:
        attrs.update(dilation=_pair(_arg(args, kw, 4, "dilation", 1)),
                     ceil_mode=bool(_arg(args, kw, 5, "ceil_mode", False)))
    return attrs


def _dims(dims, rank: int) -> list[int]:
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted(d % rank for d in dims)


# ATen op name (no overload) -> (family, attrs from (args, kwargs, input rank)); attrs None means
# "this call is outside the family" (kept under its ATen name)
_FAMILIES: dict[str, tuple[str, Callable]] = {
    "conv2d": ("conv2d", lambda a, k, r: _conv(a, k)),
    "linear": ("linear", lambda a, k, r: {}),
    "batch_norm": ("batch_norm", lambda a, k, r: {"eps": float(_arg(a, k, 7, "eps", 1e-5))}),
    "layer_norm": ("layer_norm", lambda a, k, r: {
        "normalized_shape": [int(d) for d in a[1]], "eps": float(_arg(a, k, 4, "eps", 1e-5))}),
    "relu": ("relu", lambda a, k, r: {}),
    "relu6": ("clamp", lambda a, k, r: {"min": 0.0, "max": 6.0}),
    "hardtanh": ("clamp", lambda a, k, r: {"min": float(_arg(a, k, 1, "min_val", -1.0)),
                                           "max": float(_arg(a, k, 2, "max_val", 1.0))}),
    "clamp": ("clamp", lambda a, k, r: {"min": _arg(a, k, 1, "min"), "max": _arg(a, k, 2, "max")}),
    "gelu": ("gelu", lambda a, k, r: {"approximate": k.get("approximate", "none")}),
    "silu": ("silu", lambda a, k, r: {}),
    "sigmoid": ("sigmoid", lambda a, k, r: {}),
    "tanh": ("tanh", lambda a, k, r: {}),
    "hardswish": ("hardswish", lambda a, k, r: {}),
    "hardsigmoid": ("hardsigmoid", lambda a, k, r: {}),
    "leaky_relu": ("leaky_relu", lambda a, k, r: {
        "negative_slope": float(_arg(a, k, 1, "negative_slope", 0.01))}),
    "max_pool2d": ("max_pool2d", lambda a, k, r: _pool(a, k, False)),
    "avg_pool2d": ("avg_pool2d", lambda a, k, r: _pool(a, k, True)),
    "adaptive_avg_pool2d": ("global_avg_pool", lambda a, k, r: {"keepdim": True}
                            if _pair(a[1]) == [1, 1] else None),
    "mean": ("mean", lambda a, k, r: {"dims": _dims(a[1], r),
                                      "keepdim": bool(_arg(a, k, 2, "keepdim", False))}),
    "add": ("add", lambda a, k, r: {} if k.get("alpha", 1) == 1 else None),
    "mul": ("mul", lambda a, k, r: {}),
    "cat": ("cat", lambda a, k, r: {"dim": int(_arg(a, k, 1, "dim", 0))}),
    "flatten": ("flatten", lambda a, k, r: {"start": int(_arg(a, k, 1, "start_dim", 0)) % max(r, 1),
                                            "end": int(_arg(a, k, 2, "end_dim", -1)) % max(r, 1)}),
    "view": ("reshape", lambda a, k, r: {"shape": [int(d) for d in a[1]]}),
    "reshape": ("reshape", lambda a, k, r: {"shape": [int(d) for d in a[1]]}),
    "_unsafe_view": ("reshape", lambda a, k, r: {"shape": [int(d) for d in a[1]]}),
    "permute": ("transpose", lambda a, k, r: {"perm": [int(d) % r for d in a[1]]}),
    "transpose": ("transpose", lambda a, k, r: {"perm": _swap(r, int(a[1]), int(a[2]))}),
    "t": ("transpose", lambda a, k, r: {"perm": [1, 0] if r == 2 else [0]}),
    "matmul": ("matmul", lambda a, k, r: {}),
    "bmm": ("matmul", lambda a, k, r: {}),
    "mm": ("matmul", lambda a, k, r: {}),
    "softmax": ("softmax", lambda a, k, r: {"dim": int(a[1]) % r}),
    "_softmax": ("softmax", lambda a, k, r: {"dim": int(a[1]) % r}),
    "embedding": ("embedding", lambda a, k, r: {}),
    "to": ("cast", lambda a, k, r: {"dtype": str(k.get("dtype", a[1] if len(a) > 1 else None))}
           if isinstance(k.get("dtype", a[1] if len(a) > 1 else None), torch.dtype) else None),
    "select": ("select", lambda a, k, r: {"dim": int(a[1]) % r, "index": int(a[2])}),
    "slice": ("slice", lambda a, k, r: _slice(a, k, r)),
    **{name: ("identity", lambda a, k, r: {}) for name in _IDENTITY_OPS},
}


def _slice(a, k, rank: int) -> dict | None:
    if int(_arg(a, k, 4, "step", 1)) != 1:
        return None
    size = a[0].meta["val"].shape[int(_arg(a, k, 1, "dim", 0)) % rank]
    start, end = _arg(a, k, 2, "start", 0), _arg(a, k, 3, "end", None)
    start = 0 if start is None else int(start)
    end = size if end is None else min(int(end), size)
    start, end = (start % size if start < 0 else start), (end % size if end < 0 else end)
    return {"dim": int(_arg(a, k, 1, "dim", 0)) % rank, "start": start, "end": end}


def _swap(rank: int, d0: int, d1: int) -> list[int]:
    perm = list(range(rank))
    perm[d0 % rank], perm[d1 % rank] = perm[d1 % rank], perm[d0 % rank]
    return perm


def _aten_name(target) -> str:
    name = getattr(target, "__name__", str(target))       # e.g. "conv2d.default"
    base = name.split(".")[0]
    return base[:-1] if base.endswith("_") and not base.startswith("_") else base


def _module_of(node) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, type_name = list(stack.values())[-1]
    type_name = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "")
    return str(path), type_name.rsplit(".", 1)[-1]


def _shape(node) -> tuple[int, ...]:
    val = node.meta.get("val")
    return tuple(int(d) for d in val.shape) if isinstance(val, torch.Tensor) else ()


def _flat(args) -> list:
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flat(a))
        else:
            out.append(a)
    return out


def export_graph(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> TeacherGraph:
    """``model`` traced on ``example_inputs`` as a ``TeacherGraph`` (unnormalised)."""
    example_inputs = tuple(example_inputs)
    was_training = model.training
    model.eval()
    try:
        ep = torch.export.export(model, example_inputs)
        if any(n.target in _DECOMPOSE for n in ep.graph.nodes):   # only then: decomposing
            ep = ep.run_decompositions(_DECOMPOSE)   # lowers other ops (batch-norm) as well
    except Exception as e:   # torch.export's errors are many and long; keep the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"torch.export cannot capture {type(model).__name__}: {first}") from e
    finally:
        model.train(was_training)
    sig = ep.graph_signature
    state = {**ep.state_dict, **ep.constants}
    lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
              **sig.inputs_to_lifted_tensor_constants}
    params: dict[str, torch.Tensor] = {n.name: state[lifted[n.name]].detach()
                                       for n in ep.graph.nodes
                                       if n.op == "placeholder" and n.name in lifted}
    masked = key_masks(ep.graph, set(lifted), params)      # softmax -> (scores, mask input)
    masked_adds = {n.args[0].name for n in ep.graph.nodes if n.name in masked}
    inputs, input_shapes, nodes, outputs = [], {}, [], []
    for n in ep.graph.nodes:
        if n.op == "placeholder":
            if n.name in lifted:
                params[n.name] = state[lifted[n.name]].detach()
            else:
                inputs.append(n.name)
                input_shapes[n.name] = _shape(n)
        elif n.op == "call_function":
            if _aten_name(n.target) in _SPLITS or _aten_name(n.target).startswith("_assert"):
                continue   # splits are read through their getitems; asserts compute nothing
            if n.name in masked_adds:
                continue                      # the mask is the softmax's operand now
            if n.name in masked:
                scores, mask, _ = masked[n.name]
                module, module_type = _module_of(n)
                nodes.append(TeacherNode(n.name, "softmax", (scores, mask), {},
                                         {"dim": len(_shape(n)) - 1, "key_mask": True},
                                         module, module_type, _shape(n)))
                continue
            folded = _fold_constant(n, params)
            if folded is not None:
                params[n.name] = folded
            else:
                nodes.append(_node(n, params))
        elif n.op == "output":
            outputs = [a.name for a in _flat(n.args) if hasattr(a, "name")]
    if len(inputs) != len(example_inputs):
        raise ConversionError(f"{type(model).__name__}: {len(example_inputs)} example inputs, "
                              f"graph has {len(inputs)} tensor inputs")
    return TeacherGraph(inputs, input_shapes, _live(nodes, outputs), outputs, params)


def _live(nodes: list[TeacherNode], outputs: list[str]) -> list[TeacherNode]:
    """The nodes the outputs need (a mask's own computation is dead once its softmax reads the
    mask directly)."""
    need = set(outputs)
    for n in reversed(nodes):
        if n.name in need:
            need.update(n.inputs)
    return [n for n in nodes if n.name in need]


def _attention_math(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    """``scaled_dot_product_attention`` as the ops a chip runs (matmul, scale, mask, softmax,
    matmul), so that the rules see them; a boolean mask becomes the additive one models use."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * (
        scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    if is_causal:
        n, m = scores.shape[-2:]
        keep = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
        scores = scores + torch.where(keep, 0.0, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.where(attn_mask, 0.0, float("-inf"))
        scores = scores + attn_mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


# calls torch.export keeps whole that the rules read as their parts
_DECOMPOSE = {torch.ops.aten.scaled_dot_product_attention.default: _attention_math}


def _fold_constant(n, params: dict) -> torch.Tensor | None:
    """The value of a call that reads no graph input (``torch.arange`` positions, a weight's
    transpose, a mask built from constants), computed once: constant folding, so that the
    rules see a constant where the model computes one."""
    if n.target is operator.getitem:
        return None
    nodes = [a for a in _flat(list(n.args) + list(n.kwargs.values())) if hasattr(a, "op")]
    if any(a.name not in params for a in nodes):
        return None
    value = call(n, params)
    return value.detach() if isinstance(value, torch.Tensor) else None


def _node(n, params: dict) -> TeacherNode:
    module, module_type = _module_of(n)
    if n.target is operator.getitem:
        return _piece(n, module, module_type)
    aten = _aten_name(n.target)
    family = _FAMILIES.get(aten)
    tensors = [a for a in _flat(n.args) if hasattr(a, "op")]
    rank = len(_shape(tensors[0])) if tensors else 0
    attrs = family[1](n.args, dict(n.kwargs), rank) if family else None
    if family is None or attrs is None:
        op, attrs = f"aten.{aten}", {}
    else:
        op = family[0]
    roles = _ROLES.get(op, ("weight", "bias"))
    ins, pars = [], {}
    for i, a in enumerate(tensors):
        if a.name in params:
            pars[roles[min(i - 1, len(roles) - 1)] if i > 0 else "input"] = a.name
        else:
            ins.append(a.name)
    scalars = [a for a in n.args[1:2] if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if op in ("add", "mul") and "input" in pars:   # constant first: both commute
        pars = {"other": pars.pop("input")}
    elif op in ("add", "mul") and not ins[1:]:
        if scalars:
            attrs = {"scalar": float(scalars[0])}
        elif "weight" in pars:            # x op constant tensor
            pars = {"other": pars.pop("weight")}
    if aten == "div" and scalars:         # x / s is x * (1/s)
        op, attrs = "mul", {"scalar": 1.0 / float(scalars[0])}
    if aten == "sub" and scalars:
        op, attrs = "add", {"scalar": -float(scalars[0])}
    if op == "cat" and pars:   # constant operands (a class token) keep their places
        order = [a.name for a in tensors]
        pars = {f"operand{i}": a for i, a in enumerate(order) if a in params}
        attrs = {**attrs, "constants_at": [i for i, a in enumerate(order) if a in params]}
    if op == "embedding":                 # aten.embedding(weight, indices)
        ins, pars = [a.name for a in tensors[1:2]], {"weight": tensors[0].name}
    if op == "matmul" and "weight" in pars:
        pars = {"other": pars.pop("weight")}
    if op == "matmul" and "input" in pars:   # constant @ x: outside the family
        op, attrs, ins, pars = "aten.matmul", {}, [a.name for a in tensors], {}
    if op == "mean" and rank == 4 and attrs["dims"] == [2, 3]:
        op, attrs = "global_avg_pool", {"keepdim": attrs["keepdim"]}
    if op == "reshape":
        attrs = {"shape": _batch_free(attrs["shape"], _shape(tensors[0]))}
    return TeacherNode(n.name, op, tuple(ins), pars, attrs, module, module_type, _shape(n))


_SPLITS = ("unbind", "split", "split_with_sizes", "chunk")


def _piece(n, module: str, module_type: str) -> TeacherNode:
    """One result of unbind/split/chunk as a ``select`` (one index of an axis, the axis
    dropped) or a ``slice`` (a range of an axis)."""
    src, index = n.args[0], int(n.args[1])
    aten = _aten_name(src.target) if src.op == "call_function" else ""
    if aten not in _SPLITS:
        return TeacherNode(n.name, "getitem", (src.name,), {}, {"index": index},
                           module, module_type, _shape(n))
    x = src.args[0]
    rank = len(_shape(x))
    if aten == "unbind":
        dim = int(_arg(src.args, src.kwargs, 1, "dim", 0)) % rank
        return TeacherNode(n.name, "select", (x.name,), {}, {"dim": dim, "index": index},
                           module, module_type, _shape(n))
    dim = int(_arg(src.args, src.kwargs, 2, "dim", 0)) % rank
    sizes = [int(v.shape[dim]) for v in src.meta["val"]]
    start = sum(sizes[:index])
    return TeacherNode(n.name, "slice", (x.name,), {},
                       {"dim": dim, "start": start, "end": start + sizes[index]},
                       module, module_type, _shape(n))


# the order of tensor arguments after the input, per family
_ROLES = {
    "conv2d": ("weight", "bias"),
    "linear": ("weight", "bias"),
    "batch_norm": ("weight", "bias", "running_mean", "running_var"),
    "layer_norm": ("weight", "bias"),
}


def _batch_free(shape: list[int], in_shape: tuple[int, ...]) -> list[int]:
    """A reshape that keeps the leading (batch) dimension says so with 0 (ONNX's "copy this
    dimension"), so the graph runs on any batch size, not just the example's."""
    if shape and in_shape and shape[0] == in_shape[0]:
        return [0, *shape[1:]]
    return shape
