"""The translator: walks an ONNX graph in order and emits Program nodes through ProgramBuilder.

Shared machinery only; what each ONNX op becomes lives in ``ops_quant`` (the integer ops),
``ops_layout`` (data movement, pooling, concat, relu) and ``ops_float`` (everything a float graph
needs for estimation, fallbacks included). ONNX tensor names are kept as Program tensor names;
tensors the mapping adds (a QLinearConv's accumulator, a transposed weight) get fresh names
derived from them.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from simulator.contract import DType, IntType
from simulator.errors import ModelImportError, SimulatorError
from simulator.ir.builder import ProgramBuilder, unique_name
from simulator.ir.ops import OpKind, infer_shape
from simulator.ir.program import Program, make_node
from simulator.onnx_import import functions, quant_params
from simulator.onnx_import.attributes import INTEGER_ELEM_TYPES, dtype_of
from simulator.onnx_import.reader import (SHAPE_ONLY_MAX_ELEMENTS, OnnxGraph, initializer_array,
                                          one_line)

# Constant folding happens only for values an op needs (scales, shapes, weights) and only up to
# these sizes, so that a hostile ConstantOfShape cannot exhaust memory.
FOLD_MAX_ELEMENTS_EXECUTABLE = 1 << 24
FOLD_MAX_ELEMENTS_ESTIMATE = 1 << 16
NEVER_CONSTANT = frozenset({"If", "Loop", "Scan", "RandomNormal", "RandomUniform",
                            "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})


class Translator:
    def __init__(self, graph: OnnxGraph, estimate_only: bool):
        self.g = graph
        self.estimate = estimate_only
        name = Path(graph.path).stem or graph.model.graph.name or "onnx"
        self.meta: dict = {"estimate_only": estimate_only, "source": graph.path,
                           "onnx_opset": graph.opset,
                           "onnx_producer": graph.model.producer_name or None}
        self.b = ProgramBuilder(name)
        self.b.metadata = self.meta  # one dict: notes added during the walk reach the Program
        if graph.shape_nodes_folded:
            self.meta["shape_nodes_folded"] = graph.shape_nodes_folded
        if graph.assumed_input_shapes:
            self.meta["assumed_input_shapes"] = {k: list(v) for k, v in
                                                 graph.assumed_input_shapes.items()}
        self.alias: dict[str, str] = {}
        self.folded_pads: dict[str, tuple[int, int, int, int]] = {}  # Pad output -> t, l, b, r
        self.producer: dict[str, int] = {}      # Program tensor -> index into b.nodes
        self.node_names: set[str] = set()
        self.reserved = {n for node in graph.nodes for n in list(node.input) + list(node.output)}
        self.reserved |= set(graph.initializers) | set(graph.inputs)
        self.consumers: Counter = Counter()
        for node in graph.nodes:
            for n in node.input:
                if n:
                    self.consumers[n] += 1
        for n in graph.outputs:
            self.consumers[n] += 1
        self.graph_outputs = set(graph.outputs)
        self.const_producer: dict[str, object] = {}   # output name -> constant ONNX node
        self._values: dict[str, np.ndarray] = {}
        self._find_constants()
        self.qparams: dict[str, quant_params.QParams] = {}

    # ------------------------------------------------------------------ constants
    def _find_constants(self) -> None:
        from onnx import AttributeProto

        const = set(self.g.initializers)
        for node in self.g.nodes:
            subgraph = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
            if node.op_type in NEVER_CONSTANT or any(a.type in subgraph for a in node.attribute):
                continue  # subgraphs, random generators: never folded
            ins = [n for n in node.input if n]
            if all(n in const for n in ins) and node.domain in ("", "ai.onnx"):
                for out in node.output:
                    if out:
                        const.add(out)
                        self.const_producer[out] = node
        self.constants = const

    def is_const_node(self, node) -> bool:
        return bool(node.output) and node.output[0] in self.const_producer and \
            self.const_producer[node.output[0]] is node

    def is_const(self, name: str) -> bool:
        return self.resolve(name) in self.constants

    def value(self, name: str, node=None) -> np.ndarray:
        """A constant's value (folded on demand), or a ModelImportError naming ``node``."""
        name = self.resolve(name)
        if name in self._values:
            return self._values[name]
        where = self.where(node) if node is not None else self.g.path
        if name not in self.constants:
            raise ModelImportError(f"{where}: input {name!r} must be a constant (an initializer "
                                   f"or computed from initializers only)")
        if name in self.g.initializers:
            tensor = self.g.initializers[name]
            if self.estimate and math.prod(tensor.dims) > SHAPE_ONLY_MAX_ELEMENTS:
                raise ModelImportError(f"{where}: constant {name!r} is too large to be read in a "
                                       f"shape-only import")
            arr = initializer_array(self.g, name)
        else:
            arr = self._fold(self.const_producer[name], name, where)
        self._values[name] = arr
        return arr

    def _fold(self, cnode, wanted: str, where: str) -> np.ndarray:
        limit = FOLD_MAX_ELEMENTS_ESTIMATE if self.estimate else FOLD_MAX_ELEMENTS_EXECUTABLE
        cwhere = self.where(cnode)
        for out in cnode.output:
            shape = self.g.shapes.get(out)
            if out and (shape is None or math.prod(shape) > limit):
                raise ModelImportError(
                    f"{where}: constant {wanted!r} comes from {cwhere}, whose output "
                    f"{'shape is unknown' if shape is None else f'has {math.prod(shape)} elements'}"
                    f"; only known shapes up to {limit} elements are folded")
        feeds = {n: self.value(n, cnode) for n in cnode.input if n}
        try:
            from onnx.reference import ReferenceEvaluator
            results = ReferenceEvaluator(cnode, opsets={"": self.g.opset}).run(None, feeds)
        except Exception as exc:
            raise ModelImportError(f"{cwhere}: cannot fold this constant subgraph "
                                   f"({type(exc).__name__}: {one_line(exc)})") from None
        for out, arr in zip(cnode.output, results):
            if out:
                self._values[out] = np.asarray(arr)
        if wanted not in self._values:
            raise ModelImportError(f"{cwhere}: folding did not produce {wanted!r}")
        return self._values[wanted]

    def maybe_value(self, name: str) -> np.ndarray | None:
        try:
            return self.value(name)
        except ModelImportError:
            return None

    # ------------------------------------------------------------------ names and shapes
    def where(self, node) -> str:
        return self.g.where(node)

    def resolve(self, name: str) -> str:
        seen = 0
        while name in self.alias and seen < 10_000:
            name, seen = self.alias[name], seen + 1
        return name

    def fresh(self, base: str) -> str:
        name = unique_name(base, self.reserved, self.b.tensors)
        self.reserved.add(name)
        return name

    def node_name(self, node, suffix: str = "") -> str:
        name = unique_name((node.name or node.output[0] or node.op_type) + suffix,
                           self.node_names)
        self.node_names.add(name)
        return name

    def onnx_shape(self, name: str) -> tuple[int, ...] | None:
        return self.g.shapes.get(name)

    def shape(self, name: str, node=None) -> tuple[int, ...]:
        """Static shape of an ONNX value (Program's if declared, else shape inference's)."""
        r = self.resolve(name)
        if r in self.b.tensors:
            return self.b.tensors[r].shape
        s = self.g.shapes.get(r)
        if s is None:
            s = self.g.shapes.get(name)
        if s is None:
            hint = f" (strict shape inference said: {self.g.inference_error})" \
                if self.g.inference_error else ""
            raise ModelImportError(f"{self.where(node) if node is not None else self.g.path}: "
                                   f"shape of {name!r} is unknown; give input_shapes with static "
                                   f"sizes{hint}")
        return s

    def elem_dtype(self, name: str, node=None) -> DType:
        et = self.g.elem_types.get(self.resolve(name), self.g.elem_types.get(name))
        where = self.where(node) if node is not None else self.g.path
        return dtype_of(et, self.estimate, f"{where}: tensor {name!r}")

    def is_float(self, name: str) -> bool:
        et = self.g.elem_types.get(self.resolve(name), self.g.elem_types.get(name))
        return et is not None and et not in INTEGER_ELEM_TYPES

    def used(self, name: str) -> bool:
        return bool(name) and self.consumers[name] > 0

    def qp(self, name: str) -> quant_params.QParams:
        return self.qparams.get(name, quant_params.QParams())

    # ------------------------------------------------------------------ tensors
    def use(self, name: str, node) -> str:
        """The Program tensor for an ONNX input: declared on first use for constants."""
        r = self.resolve(name)
        if r in self.b.tensors:
            return r
        if r in self.constants:
            return self.declare_constant(r, node)
        raise ModelImportError(f"{self.where(node)}: input {name!r} is not produced by any "
                               f"earlier node, initializer or graph input")

    def declare_constant(self, name: str, node, data=None, shape=None, params=None) -> str:
        """Declare a constant under ``name`` (data in executable imports, shape only otherwise)."""
        dtype = self.elem_dtype(name, node)
        q = params or (self.qp(name) if not self.estimate else quant_params.QParams())
        if self.estimate:
            shape = shape if shape is not None else self.shape(name, node)
            self._check_dims(shape, name, node)
            self.b.tensor(name, shape, dtype)
            return name
        arr = self.value(name, node) if data is None else data
        arr = np.asarray(arr)
        if isinstance(dtype, IntType):
            if arr.dtype.kind not in "iub":
                raise ModelImportError(f"{self.where(node)}: constant {name!r} holds "
                                       f"{arr.dtype} values for an integer type")
            arr = arr.astype(np.int64)
        self._check_dims(arr.shape, name, node)
        self.b.tensor(name, arr.shape, dtype, q.scale, q.zero_point, q.axis, data=arr)
        return name

    def _check_dims(self, shape, name, node) -> None:
        if any(int(d) < 1 for d in shape):
            raise ModelImportError(f"{self.where(node)}: tensor {name!r} has shape "
                                   f"{tuple(shape)}; empty tensors are not supported")

    def output_kwargs(self, name: str, node, dtype: DType | None = None) -> dict:
        """dtype and quantization of an ONNX-named output."""
        dtype = dtype or self.elem_dtype(name, node)
        if self.estimate or not isinstance(dtype, IntType):
            return {"dtype": dtype}
        q = self.qp(name)
        return {"dtype": dtype, "scale": q.scale, "zero_point": q.zero_point, "qaxis": q.axis}

    # ------------------------------------------------------------------ emission
    def emit(self, node, op: OpKind | str, inputs, output: str, suffix: str = "",
             out_shape=None, check_onnx_shape: bool = True, dtype: DType | None = None,
             scale=None, zero_point=0, qaxis: int | None = None, **attrs) -> str:
        """Append a Program node for ONNX ``node`` (``attrs`` are the op's attributes; ``dtype``,
        ``scale``, ``zero_point`` and ``qaxis`` describe the output tensor). Errors name the
        ONNX node.

        ProgramBuilder.node would take an op attribute called ``axis`` (concat, flatten,
        softmax, requantize) as the output's quantization axis, so nodes are made here and
        handed to the builder's tensor table and node list.
        """
        kind = OpKind(op)
        name = self.node_name(node, suffix)
        try:
            made = make_node(name, kind, list(inputs), [output], attrs)
            shape = out_shape
            if shape is None:
                shape = infer_shape(kind, [self.b.tensors[i].shape for i in inputs], made.attrs,
                                    f"node {name!r}")
            if dtype is None:
                first = self.b.tensors[inputs[0]]
                dtype, scale = first.dtype, first.scale if scale is None else scale
                zero_point = first.zero_point if zero_point == 0 else zero_point
                qaxis = first.axis if qaxis is None else qaxis
            self.b.tensor(output, shape, dtype, scale, zero_point, qaxis)
        except SimulatorError as exc:
            raise ModelImportError(f"{self.where(node)}: {exc}") from None
        self.b.nodes.append(made)
        self.producer[output] = len(self.b.nodes) - 1
        declared = self.b.tensors[output].shape
        self._check_dims(declared, output, node)
        expected = self.g.shapes.get(output)
        if check_onnx_shape and expected is not None and tuple(expected) != tuple(declared):
            raise ModelImportError(f"{self.where(node)}: output {output!r} has shape "
                                   f"{declared} as {kind.value}, ONNX shape inference says "
                                   f"{expected}")
        return output

    def unsupported(self, node, reason: str) -> None:
        """Estimation: a fallback node. Execution: a ModelImportError naming the node."""
        if self.estimate:
            return self.fallback(self, node)
        raise ModelImportError(f"{self.where(node)}: {reason} is not supported in an executable "
                               f"integer graph; import with estimate_only=True to estimate "
                               f"its cost")

    def replace_node(self, index: int, **changes) -> None:
        old = self.b.nodes[index]
        attrs = dict(old.attrs)
        attrs.update(changes.pop("attrs", {}))
        inputs = changes.pop("inputs", old.inputs)
        self.b.nodes[index] = make_node(old.name, old.op, inputs, old.outputs, attrs)

    def remove(self, node, reason: str) -> None:
        """Drop ``node``: its first output becomes another name for its first input."""
        self.alias[node.output[0]] = self.resolve(node.input[0])
        self.meta.setdefault("removed_nodes", []).append(
            {"node": node.name or node.output[0], "op_type": node.op_type, "reason": reason})

    def producing_op(self, tensor: str) -> OpKind | None:
        i = self.producer.get(tensor)
        return None if i is None else self.b.nodes[i].op

    def sole_consumer(self, node, src: str | None = None) -> bool:
        """``node``'s data input (``src``, by default its first) reaches only ``node`` (no other
        reader, not a graph output)."""
        src = node.input[0] if src is None else src
        r = self.resolve(src)
        return self.consumers[src] == 1 and self.consumers[r] == 1 and \
            src not in self.graph_outputs and r not in self.graph_outputs

    # ------------------------------------------------------------------ the walk
    def declare_inputs(self) -> None:
        for name in self.g.inputs:
            shape = self.g.shapes.get(name)
            if shape is None:
                raise ModelImportError(f"{self.g.path}: graph input {name!r} has no static "
                                       f"shape; pass input_shapes={{{name!r}: (...)}}")
            if any(d < 1 for d in shape):
                raise ModelImportError(f"{self.g.path}: graph input {name!r} has shape {shape}; "
                                       f"give positive sizes with input_shapes")
            dtype = dtype_of(self.g.elem_types.get(name), self.estimate,
                             f"{self.g.path}: graph input {name!r}")
            q = self.qp(name) if not self.estimate and isinstance(dtype, IntType) else \
                quant_params.QParams()
            self.b.tensor(name, shape, dtype, q.scale, q.zero_point, q.axis)
            self.b.inputs.append(name)

    def run(self, handlers: dict, default) -> Program:
        self.fallback = default
        if not self.estimate:
            self.qparams = quant_params.collect(
                self.g.nodes, self.value, self.is_const_node, self.where,
                lambda n: len(self.g.shapes[n]) if self.g.shapes.get(n) is not None else None)
        self.declare_inputs()
        starts, inside = self._activation_functions()
        for i, node in enumerate(self.g.nodes):
            if self.is_const_node(node) or i in inside:
                continue
            if not any(self.used(o) for o in node.output):
                continue
            if i in starts:
                self.lookup_function(node, starts[i])
                continue
            handler = handlers.get(node.op_type, default) if node.domain in ("", "ai.onnx") \
                else handlers.get(f"{node.domain}.{node.op_type}", default)  # e.g. QGemm
            handler(self, node)
        for name in self.g.outputs:
            r = self.resolve(name)
            if r not in self.b.tensors:
                if r in self.constants:
                    self.declare_constant(r, None)
                else:
                    raise ModelImportError(f"{self.g.path}: graph output {name!r} is never "
                                           f"produced")
            if r != name:
                self.meta.setdefault("output_aliases", {})[name] = r
            self.b.outputs.append(r)
        self._drop_dead()
        try:
            return self.b.build()
        except SimulatorError as exc:
            raise ModelImportError(f"{self.g.path}: translated Program is invalid: "
                                   f"{one_line(exc)}") from None

    def _activation_functions(self) -> tuple[dict, set]:
        """Estimation: the float activation functions (one per subgraph), by first node."""
        if not self.estimate:
            return {}, set()
        found = [f for f in functions.find_functions(list(self.g.nodes), set(self.g.outputs),
                                                     self.is_const, self.maybe_value, self.g.opset)
                 # a function keeps x's shape; one that broadcasts x is no table
                 if self.g.shapes.get(f.y) is not None
                 and self.g.shapes.get(f.y) == self.g.shapes.get(f.x)]
        starts = {f.members[0]: f for f in found}
        inside = {i for f in found for i in f.members[1:]}
        return starts, inside

    def lookup_function(self, node, fn: "functions.Function") -> None:
        """One activation function of a float graph: a lookup_table naming it, its table left
        empty (only its cost is estimated)."""
        self.emit(node, OpKind.LOOKUP_TABLE, [self.use(fn.x, node)], fn.y, table=[],
                  function=fn.function, **self.output_kwargs(fn.y, node))
        spelled = [self.g.nodes[i].op_type for i in fn.members]
        self.meta.setdefault("activation_functions", []).append(
            {"node": node.name or node.output[0], "function": fn.function, "ops": spelled})

    def _drop_dead(self) -> None:
        """Remove nodes nothing reads (e.g. shape computations a Reshape no longer needs)."""
        live = set(self.b.outputs)
        kept = []
        for node in reversed(self.b.nodes):
            if node.outputs[0] in live:
                kept.append(node)
                live.update(node.inputs)
        dropped = len(self.b.nodes) - len(kept)
        if dropped:
            self.meta["dead_nodes_removed"] = dropped
        self.b.nodes = kept[::-1]
        self.b.tensors = {n: t for n, t in self.b.tensors.items()
                          if n in live or n in self.b.inputs}

