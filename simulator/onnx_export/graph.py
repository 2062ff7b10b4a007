"""Building one ONNX graph from a Program: names, initializers, nodes, types, the finished model.

Every form (``qlinear``, ``qdq``/``int4``, ``qonnx``) writes through ``GraphWriter``. ONNX value
names are the Program's tensor names wherever a value holds that tensor's numbers; values the
form adds (scales, zero points, a requantize's intermediate, a dequantized float copy) get fresh
names derived from them (``<tensor>/scale``, ``<tensor>/real`` ...), never clashing with a
Program name. The model records in ``metadata_props`` which ONNX value holds which Program tensor
(``archnet.values``), every Program tensor's exact integer type (``archnet.dtypes``: a 2-bit
weight stored in an INT4 container is still ``s2`` there) and what the export had to adjust.
"""

from __future__ import annotations

import json

import numpy as np

from simulator.contract import FloatType
from simulator.errors import ExportError
from simulator.execute import clamp_bounds as execute_clamp_bounds
from simulator.ir.builder import unique_name
from simulator.ir.program import Node, Program, TensorInfo

# onnx.TensorProto element types (numbers fixed by onnx.proto; onnx is imported lazily)
FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64 = 1, 2, 3, 4, 5, 6, 7
BOOL, DOUBLE = 9, 11
UINT4, INT4 = 21, 22
NUMPY = {FLOAT: np.float32, UINT8: np.uint8, INT8: np.int8, UINT16: np.uint16, INT16: np.int16,
         INT32: np.int32, INT64: np.int64, BOOL: np.bool_, DOUBLE: np.float64}
RANGES = {UINT8: (0, 255), INT8: (-128, 127), UINT16: (0, 65535), INT16: (-32768, 32767),
          INT32: (-(1 << 31), (1 << 31) - 1), UINT4: (0, 15), INT4: (-8, 7),
          INT64: (-(1 << 63), (1 << 63) - 1)}
TYPE_NAMES = {FLOAT: "float", UINT8: "uint8", INT8: "int8", UINT16: "uint16", INT16: "int16",
              INT32: "int32", INT64: "int64", UINT4: "uint4", INT4: "int4", BOOL: "bool",
              DOUBLE: "double"}
MAX_MODEL_BYTES = (1 << 31) - 1


def container(dtype, *, int4: bool = False, where: str = "") -> int:
    """The narrowest ONNX element type holding ``dtype`` (with ``int4`` the 4-bit types too)."""
    if isinstance(dtype, FloatType):
        return FLOAT
    bits, signed = dtype.bits, dtype.signed
    if int4 and bits <= 4:
        return INT4 if signed else UINT4
    if bits <= 8:
        return INT8 if signed else UINT8
    if bits <= 16:
        return INT16 if signed else UINT16
    if bits <= 32 and signed:
        return INT32
    raise ExportError(f"{where}: {dtype} has no ONNX integer element type in this form")


def short_list(values, limit: int = 4) -> str:
    values = list(values)
    head = ", ".join(str(v) for v in values[:limit])
    return f"[{head}{', ...' if len(values) > limit else ''}]"


class GraphWriter:
    def __init__(self, program: Program, form: str):
        self.program = program
        self.form = form
        self.used: set[str] = set(program.tensors)
        self.node_names: set[str] = set()
        self.nodes: list = []
        self.initializers: list = []
        self.value_info: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.values: dict[str, str] = {}          # ONNX value -> Program tensor it holds
        self.notes: dict[str, object] = {}        # extra metadata_props entries (JSON)
        self.domains: dict[str, int] = {}         # custom domains used -> version
        self._cache: dict[tuple, str] = {}

    # ------------------------------------------------------------------ names
    def fresh(self, base: str) -> str:
        name = unique_name(base, self.used)
        self.used.add(name)
        return name

    def fresh_node(self, base: str) -> str:
        name = unique_name(base, self.node_names)
        self.node_names.add(name)
        return name

    # ------------------------------------------------------------------ constants
    def initializer(self, base: str, array, elem_type: int, *, exact: bool = False,
                    key=None) -> str:
        """An initializer named ``base`` (``exact``: a Program tensor's own name) or a fresh name
        derived from it; ``key`` shares one initializer between identical requests."""
        from onnx import helper, numpy_helper

        if key is not None and key in self._cache:
            return self._cache[key]
        arr = np.asarray(array)
        if elem_type in RANGES:
            lo, hi = RANGES[elem_type]
            if arr.size and (arr.min() < lo or arr.max() > hi):
                raise ExportError(f"constant {base!r}: values [{arr.min()}, {arr.max()}] do not "
                                  f"fit ONNX {TYPE_NAMES[elem_type]}")
        name = base if exact else self.fresh(base)
        if elem_type in (INT4, UINT4):
            proto = helper.make_tensor(name, elem_type, list(arr.shape),
                                       arr.astype(np.int64).ravel().tolist())
        else:
            proto = numpy_helper.from_array(arr.astype(NUMPY[elem_type]), name)
        self.initializers.append(proto)
        if key is not None:
            self._cache[key] = name
        return name

    def scalar(self, base: str, value, elem_type: int, key=None) -> str:
        return self.initializer(base, np.asarray(value).reshape(()), elem_type, key=key)

    def shape_constant(self, base: str, shape) -> str:
        return self.initializer(base, np.asarray(list(shape), np.int64), INT64,
                                key=("shape", tuple(shape)))

    # ------------------------------------------------------------------ nodes and types
    def add(self, op_type: str, inputs, outputs, name: str | None = None, domain: str = "",
            **attrs) -> str:
        from onnx import helper

        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        node_name = self.fresh_node(name or outputs[0])
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=node_name,
                                           domain=domain or None, **attrs))
        return outputs[0]

    def typed(self, name: str, elem_type: int, shape) -> str:
        self.value_info[name] = (elem_type, tuple(int(d) for d in shape))
        return name

    def holds(self, onnx_name: str, tensor: str) -> str:
        """Record that ONNX value ``onnx_name`` holds Program tensor ``tensor``'s integers."""
        self.values[onnx_name] = tensor
        return onnx_name

    # ------------------------------------------------------------------ the model
    def model(self, inputs: list[str], outputs: list[str], opset: int, doc: str = ""):
        from onnx import helper

        def vi(name):
            et, shape = self.value_info[name]
            return helper.make_tensor_value_info(name, et, list(shape))

        io = set(inputs) | set(outputs)
        graph = helper.make_graph(
            self.nodes, self.program.name or "program", [vi(n) for n in inputs],
            [vi(n) for n in outputs], self.initializers,
            value_info=[vi(n) for n in self.value_info if n not in io])
        opsets = [helper.make_opsetid("", opset)] + \
            [helper.make_opsetid(d, v) for d, v in sorted(self.domains.items())]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="archnet",
                                  producer_version="1", doc_string=doc)
        model.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
        props = {"archnet.form": self.form, "archnet.program": self.program.name,
                 "archnet.values": json.dumps(self.values, sort_keys=True),
                 "archnet.dtypes": json.dumps({n: t.dtype.name for n, t in
                                               self.program.tensors.items()}, sort_keys=True)}
        props.update({k: json.dumps(v, sort_keys=True) for k, v in self.notes.items()})
        helper.set_model_props(model, props)
        return model


# ---------------------------------------------------------------------- Program queries

def consumers(program: Program) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = {name: [] for name in program.tensors}
    for node in program.nodes:
        for name in node.inputs:
            out[name].append(node)
    return out


def per_tensor(t: TensorInfo, where: str) -> tuple[float, int]:
    """(scale, zero point) of a per-tensor quantized integer tensor, or an ExportError."""
    if not t.is_int:
        raise ExportError(f"{where}: tensor {t.name!r} is {t.dtype}, an integer tensor is needed")
    if t.scale is None or len(t.scale) != 1 or len(t.zero_point) != 1:
        raise ExportError(f"{where}: tensor {t.name!r} needs one scale and one zero point "
                          f"(has scale {None if t.scale is None else short_list(t.scale)} and "
                          f"zero point {short_list(t.zero_point)}); ONNX activations are "
                          f"quantized per tensor")
    return float(t.scale[0]), int(t.zero_point[0])


def clamp_bounds(node: Node, out: TensorInfo) -> tuple[int, int]:
    return execute_clamp_bounds(out, node.attrs)  # the executor's rule, not a copy
