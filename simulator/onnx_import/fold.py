"""Fold shape arithmetic once input shapes are static.

Exporters (torch.onnx above all) compute Reshape targets, Slice bounds and Pad amounts at run
time: ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, ``ConstantOfShape -> Concat ->
Slice -> Transpose -> Reshape -> Pad``. ONNX shape inference cannot always follow
such chains, so values downstream have no static shape. With static graph inputs, ``Shape`` and
``Size`` of a statically shaped value are constants; this pass evaluates them and every small
all-constant node after them (with onnx.reference, node by node), turns the results into
initializers, and lets shape inference run again. Large constants (weights) are never
materialised.
"""

from __future__ import annotations

import math

import numpy as np

FOLD_MAX_ELEMENTS = 1 << 16
NEVER_FOLDED = frozenset({"If", "Loop", "Scan", "RandomNormal", "RandomUniform",
                          "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})


def _static_shapes(model) -> dict[str, tuple[int, ...]]:
    shapes = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for t in g.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return shapes


def needs_folding(model) -> bool:
    """Some node output has no static shape: shapes or pads may be computed at run time (a
    Shape chain, or torch's Pad amounts as Constant -> ConstantOfShape -> Concat -> Slice)."""
    g = model.graph
    shapes = _static_shapes(model)
    return any(o and o not in shapes for n in g.node for o in n.output)


def fold_shape_arithmetic(model, opset: int):
    """A copy of ``model`` with shape arithmetic folded into initializers, and the count folded
    (0 and the model itself when nothing could be folded)."""
    import onnx
    from onnx import AttributeProto, numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    shapes = _static_shapes(model)
    values: dict[str, np.ndarray] = {}
    for t in g.initializer:
        if math.prod(t.dims) <= FOLD_MAX_ELEMENTS and (t.raw_data or len(t.int64_data) or
                                                       len(t.int32_data) or len(t.float_data)):
            try:
                values[t.name] = numpy_helper.to_array(t)
            except Exception:
                pass
    outputs = {o.name for o in g.output}
    folded_nodes = set()
    subgraph = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
    for i, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLDED or \
                any(a.type in subgraph for a in node.attribute) or \
                any(o in outputs for o in node.output):
            continue
        result = None
        ins = [n for n in node.input if n]
        if node.op_type in ("Shape", "Size") and ins and ins[0] in shapes:
            shape = shapes[ins[0]]
            if node.op_type == "Size":
                result = [np.array(math.prod(shape), np.int64)]
            else:
                attrs = {a.name: a.i for a in node.attribute}
                start, end = attrs.get("start", 0), attrs.get("end", len(shape))
                result = [np.array(shape[start:end], np.int64)]
        elif all(n in values for n in ins):
            known = [shapes.get(o) for o in node.output if o]
            if any(s is not None and math.prod(s) > FOLD_MAX_ELEMENTS for s in known):
                continue
            try:
                result = ReferenceEvaluator(node, opsets={"": opset}).run(
                    None, {n: values[n] for n in ins})
            except Exception:
                continue
        if result is None or any(np.asarray(r).size > FOLD_MAX_ELEMENTS for r in result):
            continue
        for name, arr in zip(node.output, result):
            if name:
                values[name] = np.asarray(arr)
                shapes[name] = tuple(np.asarray(arr).shape)
        folded_nodes.add(i)
    if not folded_nodes:
        return model, 0
    new = onnx.ModelProto()
    new.CopyFrom(model)
    del new.graph.node[:]
    new.graph.node.extend(n for i, n in enumerate(g.node) if i not in folded_nodes)
    needed = {n for node in new.graph.node for n in node.input}
    existing = {t.name for t in g.initializer}
    for i in sorted(folded_nodes):
        for name in g.node[i].output:
            if name and name in needed and name not in existing:
                new.graph.initializer.append(numpy_helper.from_array(values[name], name))
    # shapes the file or the first inference gave stay (an old op inference cannot redo keeps
    # its shape); only the values now folded into initializers lose theirs
    folded_names = {o for i in folded_nodes for o in g.node[i].output}
    kept = [vi for vi in g.value_info if vi.name not in folded_names]
    del new.graph.value_info[:]
    new.graph.value_info.extend(kept)
    return new, len(folded_nodes)
