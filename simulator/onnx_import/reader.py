"""Read an ONNX file into a checked, shape-inferred view; every defect is one ModelImportError line.

The view (``OnnxGraph``) is what the translators work from: nodes in file order (ONNX requires
topological order and the checker enforces it), initializers, the real graph inputs (initializers
that old IR versions also list as inputs are left out), and the element type and static shape of
every value that shape inference could determine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.errors import ModelImportError
from simulator.onnx_import.fold import fold_shape_arithmetic, needs_folding

MAX_FILE_BYTES = 1 << 31          # protobuf's own limit for one message
SHAPE_ONLY_MAX_ELEMENTS = 4096    # estimate-only imports keep data of initializers up to this size


def one_line(text: object, limit: int = 400) -> str:
    """An exception message squeezed onto one line (ONNX's checker writes several)."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit - 3] + "..."


@dataclass
class OnnxGraph:
    path: str
    model: object                                  # onnx.ModelProto (shape-inferred copy)
    opset: int
    initializers: dict[str, object]                # name -> TensorProto
    inputs: list[str]
    outputs: list[str]
    elem_types: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    inference_error: str | None = None             # strict shape inference's complaint, if any
    assumed_input_shapes: dict = field(default_factory=dict)  # symbolic batch sizes set to 1
    shape_nodes_folded: int = 0                    # Shape/Size arithmetic folded to constants

    @property
    def nodes(self):
        return self.model.graph.node

    def where(self, node=None) -> str:
        if node is None:
            return self.path
        label = node.name or (node.output[0] if len(node.output) else "?")
        return f"{self.path}: node {label!r} ({node.op_type})"


def _load_proto(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelImportError(f"{path}: cannot read ({one_line(exc)})") from None
    if size == 0:
        raise ModelImportError(f"{path}: empty file, not an ONNX model")
    if size >= MAX_FILE_BYTES:
        raise ModelImportError(f"{path}: {size} bytes; single-file ONNX models must be < 2 GiB "
                               f"(store weights as external data)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelImportError(f"{path}: cannot read ({one_line(exc)})") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError, RecursionError, UnicodeDecodeError) as exc:
        raise ModelImportError(f"{path}: not an ONNX model (protobuf does not parse: "
                               f"{one_line(exc)})") from None
    if not model.HasField("graph"):
        raise ModelImportError(f"{path}: not an ONNX model (no graph field)")
    return model


def _check_text_fields(model, path: Path) -> None:
    """protobuf hands back invalid UTF-8 in string fields as bytes: name the field instead."""
    graph = model.graph

    def text(value, what: str) -> None:
        if not isinstance(value, str):
            raise ModelImportError(f"{path}: {what} is not valid UTF-8 text ({value[:40]!r})")

    for i, node in enumerate(graph.node):
        where = f"node #{i}"
        for field_name in ("name", "op_type", "domain"):
            text(getattr(node, field_name), f"field {field_name} of {where}")
        for j, name in enumerate(node.input):
            text(name, f"input #{j} of {where}")
        for j, name in enumerate(node.output):
            text(name, f"output #{j} of {where}")
        for a in node.attribute:
            text(a.name, f"an attribute name of {where}")
    for kind, items in (("initializer", graph.initializer), ("graph input", graph.input),
                        ("graph output", graph.output), ("value_info", graph.value_info)):
        for i, item in enumerate(items):
            text(item.name, f"name of {kind} #{i}")
    for imp in model.opset_import:
        text(imp.domain, "field domain of opset_import")


def _check(model, path: Path) -> None:
    import onnx

    if model.ir_version < 3:
        raise ModelImportError(f"{path}: field ir_version is {model.ir_version}; ONNX IR >= 3 "
                               f"is required")
    try:
        # file-based check: handles external data and models near the 2 GiB limit
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ModelImportError(f"{path}: fails onnx.checker: {one_line(exc)}") from None
    except Exception as exc:  # the checker's C++ side reports damaged protos in several ways
        raise ModelImportError(f"{path}: fails onnx.checker ({type(exc).__name__}: "
                               f"{one_line(exc)})") from None


def _load_external(model, path: Path) -> None:
    from onnx import external_data_helper as ext

    for tensor in ext._get_all_tensors(model):
        if ext.uses_external_data(tensor):
            try:
                ext.load_external_data_for_tensor(tensor, str(path.parent))
            except Exception as exc:
                raise ModelImportError(f"{path}: initializer {tensor.name!r}: external data "
                                       f"cannot be read ({one_line(exc)})") from None
            tensor.data_location = 0
            del tensor.external_data[:]


def _numel(dims) -> int:
    return math.prod(int(d) for d in dims)


def _strip_large_data(model) -> None:
    """Shape-only import: drop the payload of large initializers (weights) to keep memory small."""
    for tensor in model.graph.initializer:
        if _numel(tensor.dims) > SHAPE_ONLY_MAX_ELEMENTS:
            for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                         "uint64_data", "string_data"):
                tensor.ClearField(name)
            del tensor.external_data[:]
            tensor.data_location = 0


def _override_inputs(model, input_shapes: dict, real_inputs: list[str], path: Path) -> None:
    by_name = {vi.name: vi for vi in model.graph.input}
    for name, shape in input_shapes.items():
        if name not in real_inputs:
            raise ModelImportError(f"{path}: input_shapes names {name!r}, which is not a graph "
                                   f"input; inputs are {real_inputs}")
        try:
            dims = [int(d) for d in shape]
        except (TypeError, ValueError):
            raise ModelImportError(f"{path}: input_shapes[{name!r}] = {shape!r} is not a tuple of "
                                   f"integers") from None
        if not dims or any(d < 1 for d in dims):
            raise ModelImportError(f"{path}: input_shapes[{name!r}] = {tuple(dims)} must be "
                                   f"positive integers")
        if not by_name[name].type.HasField("tensor_type"):
            raise ModelImportError(f"{path}: input {name!r} is not a tensor")
        ttype = by_name[name].type.tensor_type
        ttype.ClearField("shape")
        for d in dims:
            ttype.shape.dim.add().dim_value = d
    # shapes inferred for the old sizes are stale: infer everything again
    del model.graph.value_info[:]
    for vi in model.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")


def _infer(model, path: Path):
    """Strict shape inference; if it refuses, a lenient pass (its complaint is kept)."""
    from onnx import shape_inference

    try:
        return shape_inference.infer_shapes(model, strict_mode=True, data_prop=True), None
    except Exception as exc:  # InferenceError, or a C++ error on damaged protos
        strict_error = one_line(exc)
    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True), strict_error
    except Exception as exc:
        raise ModelImportError(f"{path}: shape inference fails: {one_line(exc)}") from None


def _value_infos(graph):
    yield from graph.input
    yield from graph.value_info
    yield from graph.output


def read_onnx(path, input_shapes: dict | None = None, shape_only: bool = False) -> OnnxGraph:
    """Parse, check and shape-infer ``path``; ``shape_only`` drops large weights' data."""
    path = Path(os.fspath(path))
    if not path.is_file():
        raise ModelImportError(f"{path}: no such ONNX file")
    model = _load_proto(path)
    _check_text_fields(model, path)
    _check(model, path)
    graph = model.graph
    if len(graph.node) == 0:
        raise ModelImportError(f"{path}: graph has no nodes")
    opset = 0
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version
    if opset == 0:
        raise ModelImportError(f"{path}: field opset_import has no default-domain (ai.onnx) entry")
    init_names = {t.name for t in graph.initializer}
    real_inputs = [vi.name for vi in graph.input if vi.name not in init_names]
    if shape_only:
        _strip_large_data(model)
    else:
        _load_external(model, path)
    overrides = dict(input_shapes or {})
    assumed = _assume_batch_one(model, real_inputs, overrides)
    if overrides or assumed:
        _override_inputs(model, {**assumed, **overrides}, real_inputs, path)
    inferred, strict_error = _infer(model, path)
    folded = 0
    if needs_folding(inferred):
        inferred, strict_error, folded = _fold_and_reinfer(inferred, strict_error, opset, path)
    g = inferred.graph
    elem_types: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}
    for vi in _value_infos(g):
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if tt.elem_type:
            elem_types[vi.name] = tt.elem_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
        else:
            shapes.setdefault(vi.name, None)
    initializers = {t.name: t for t in g.initializer}
    for t in g.initializer:
        elem_types[t.name] = t.data_type
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return OnnxGraph(str(path), inferred, opset, initializers,
                     [vi.name for vi in g.input if vi.name not in initializers],
                     [vi.name for vi in g.output], elem_types, shapes, strict_error, assumed,
                     folded)


def _fold_and_reinfer(inferred, strict_error, opset: int, path: Path):
    """Shape arithmetic folded into constants, shapes inferred again; the old model on failure."""
    try:
        folded, count = fold_shape_arithmetic(inferred, opset)
        if not count:
            return inferred, strict_error, 0
        again, again_error = _infer(folded, path)
    except Exception:  # folding is an improvement, never a new way to fail
        return inferred, strict_error, 0
    return again, again_error, count


def _assume_batch_one(model, real_inputs: list[str], overrides: dict) -> dict:
    """Inputs whose only unknown size is the leading (batch) one get batch 1."""
    assumed = {}
    for vi in model.graph.input:
        if vi.name not in real_inputs or vi.name in overrides or \
                not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) >= 1 and not dims[0].HasField("dim_value") and \
                all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
            assumed[vi.name] = (1, *(int(d.dim_value) for d in dims[1:]))
    return assumed


def initializer_array(graph: OnnxGraph, name: str) -> np.ndarray:
    """The value of an initializer, or a ModelImportError naming it."""
    from onnx import numpy_helper

    tensor = graph.initializers[name]
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:
        raise ModelImportError(f"{graph.path}: initializer {name!r}: data unreadable "
                               f"({one_line(exc)})") from None
