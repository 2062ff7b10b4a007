"""TFLite import: a fully-integer .tflite becomes a Program the simulator executes.

``import_tflite(path)`` reads the flatbuffer with the ``tflite`` package (``reader``) and
translates the int8 and 16x8 (int16 activations, int8 weights) ops the simulator has
(``ops_mac``, ``ops_elementwise``, ``ops_layout``): CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
BATCH_MATMUL (int8), ADD, MUL, AVERAGE_POOL_2D, MAX_POOL_2D, MEAN (height and width),
RESHAPE/SQUEEZE/EXPAND_DIMS, CONCATENATION, PAD folded into a convolution,
LOGISTIC/TANH/GELU/HARD_SWISH/LEAKY_RELU/RELU/RELU6/RELU_N1_TO_1 as 256-entry tables (int16
LOGISTIC/TANH: 65536-entry ones), QUANTIZE and DEQUANTIZE. The ``tflite-reference`` chip
profile holds TFLite's arithmetic. A truncated file, a float model or an op the simulator lacks
is a one-line ``ModelImportError`` naming the file, the operator and the tensor.
"""

from __future__ import annotations

import os

from simulator.errors import ModelImportError, SimulatorError
from simulator.ir.program import Program
from simulator.tflite_import.reader import is_tflite, read_tflite

__all__ = ["float_compute", "import_tflite", "is_tflite"]

EDGE_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


def float_compute(model) -> str | None:
    """The first operator that computes on float values, as 'operator #i OP, tensor 'x'', or
    None. QUANTIZE from and DEQUANTIZE to float are the graph's edges, not compute."""
    for op in model.ops:
        if op.opcode in EDGE_OPS and not any(
                model.tensors[i].data is not None for i in op.inputs if i >= 0):
            continue
        for i in op.inputs + op.outputs:
            if i >= 0 and model.tensors[i].dtype in ("FLOAT32", "FLOAT16", "FLOAT64"):
                return f"operator #{op.index} {op.opcode}, tensor {model.tensors[i].name!r}"
    return None


def import_tflite(path: str | os.PathLike) -> Program:
    """Read a fully-integer TFLite model into a validated, executable Program."""
    from simulator.tflite_import import ops_elementwise, ops_layout, ops_mac
    from simulator.tflite_import.translate import Translator

    where = os.fspath(path)
    try:
        model = read_tflite(path)
        culprit = float_compute(model)
        if culprit is not None:
            raise ModelImportError(f"{where}: a float model ({culprit} is float): the simulator "
                                   f"runs fully-integer (int8, int16) TFLite models")
        handlers = {**ops_mac.HANDLERS, **ops_elementwise.HANDLERS, **ops_layout.HANDLERS}
        return Translator(model).run(handlers)
    except ModelImportError:
        raise
    except SimulatorError as exc:
        raise ModelImportError(f"{where}: {' '.join(str(exc).split())}") from None
    except (MemoryError, RecursionError) as exc:
        raise ModelImportError(f"{where}: too large to import ({type(exc).__name__})") from None
    except Exception as exc:  # a defect this importer does not describe yet: still one line
        raise ModelImportError(f"{where}: cannot be imported ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:300]})") from None
