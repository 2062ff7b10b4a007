"""ONNX import: integer graphs become executable Programs, any graph an estimate-only one.

``import_onnx(path)`` decides by itself: a graph with float compute (a float Conv, MatMul,
Softmax ...) is imported for cost estimation only; a graph of ONNX integer ops
(QuantizeLinear, QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger, onnxruntime's QGemm,
MaxPool, Concat, Relu, Reshape/Flatten/Transpose, DequantizeLinear) becomes a Program the
simulator executes with the ``onnx-qlinear`` arithmetic (onnxruntime's QLinearSigmoid,
QLinearLeakyRelu and QLinearMul too). Every failure is a one-line
``ModelImportError`` naming the file and the node or field at fault.
"""

from __future__ import annotations

import os

from simulator.errors import ModelImportError, SimulatorError
from simulator.ir.program import Program

QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                       "ConvInteger", "MatMulInteger"})
# onnxruntime's contrib integer ops the executable import maps (domain, op_type): QGemm is how
# onnxruntime's own quantizer writes a fully connected layer with an int32 bias
CONTRIB_QUANT_OPS = frozenset({("com.microsoft", "QGemm"), ("com.microsoft", "QLinearSigmoid"),
                               ("com.microsoft", "QLinearLeakyRelu"),
                               ("com.microsoft", "QLinearMul")})
REMOVABLE_OPS = frozenset({"Identity", "Dropout"})

__all__ = ["import_onnx", "has_float_compute", "QUANT_OPS"]


def has_float_compute(graph, translator) -> str | None:
    """The first node (as 'name (op)') that computes on float values, or None."""
    for node in graph.nodes:
        if translator.is_const_node(node) or node.op_type in QUANT_OPS | REMOVABLE_OPS:
            continue
        label = node.name or (node.output[0] if node.output else "?")
        if (node.domain, node.op_type) in CONTRIB_QUANT_OPS and \
                all(graph.elem_types.get(n) not in (None, 1) for n in node.output if n):
            continue  # integer output (FLOAT = 1 would be a float QGemm)
        if node.domain not in ("", "ai.onnx"):
            return f"{label!r} ({node.domain}.{node.op_type})"
        names = [n for n in list(node.input) + list(node.output) if n]
        if any(translator.is_float(n) for n in names if not translator.is_const(n)) or \
                any(graph.elem_types.get(n) is None for n in node.output if n):
            return f"{label!r} ({node.op_type})"
    return None


def import_onnx(path: str | os.PathLike, estimate_only: bool | None = None,
                input_shapes: dict[str, tuple] | None = None) -> Program:
    """Read an ONNX model into a validated Program.

    ``estimate_only``: True maps any graph for the cost model (float tensors as f32, weights as
    shapes, unsupported ops as fallbacks); False demands an executable integer graph; None
    (default) chooses True exactly when the graph computes on floats. ``input_shapes`` overrides
    graph input shapes (e.g. ``{"data": (1, 3, 299, 299)}``) and shapes are inferred again.
    """
    from simulator.onnx_import import ops_float, ops_layout, ops_quant
    from simulator.onnx_import.reader import one_line, read_onnx
    from simulator.onnx_import.translate import Translator

    where = os.fspath(path) if isinstance(path, (str, os.PathLike)) else repr(path)
    try:
        float_node = None
        graph = read_onnx(path, input_shapes, shape_only=estimate_only is not False)
        if estimate_only is None:
            float_node = has_float_compute(graph, Translator(graph, estimate_only=True))
            estimate_only = float_node is not None
            if not estimate_only:  # executable: read again, this time with the weights' data
                graph = read_onnx(path, input_shapes, shape_only=False)
        translator = Translator(graph, estimate_only=estimate_only)
        if float_node is not None:
            translator.meta["estimate_only_because"] = f"float compute at node {float_node}"
        handlers = {**ops_quant.HANDLERS, **ops_layout.HANDLERS}
        if estimate_only:
            handlers.update(ops_float.HANDLERS)
        return translator.run(handlers, ops_float.fallback)
    except ModelImportError:
        raise
    except SimulatorError as exc:
        raise ModelImportError(f"{where}: {one_line(exc)}") from None
    except (MemoryError, RecursionError) as exc:
        raise ModelImportError(f"{where}: too large or too deeply nested to import "
                               f"({type(exc).__name__})") from None
    except Exception as exc:  # a defect this importer does not describe yet: still one line
        raise ModelImportError(f"{where}: cannot be imported ({type(exc).__name__}: "
                               f"{one_line(exc)})") from None
