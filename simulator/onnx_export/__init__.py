"""ONNX export of a Program: ``export_onnx(program, path, form=...)``.

Forms
-----
``qlinear`` (8 bits; ``auto`` picks it when every integer tensor is 8-bit, biases and
    accumulators 32-bit): an integer graph of QLinearConv, onnxruntime's QGemm (a fully
    connected layer with its int32 bias), QLinearMatMul, MaxPool, Concat, Flatten, Reshape,
    Transpose, Relu, QuantizeLinear and DequantizeLinear (``qlinear.py`` has the table).
    onnxruntime runs it, with or without graph optimizations, and for every input its integers
    equal ``execute(program, profile, ...)`` on every tensor it shows (``profile``: the chip
    profile given, ``onnx-qlinear`` by default; recorded as ``archnet.profile``). A MAC +
    requantize is a QLinear op where float32 scales are proven (``requant.py``) to give the
    Program's integer for every accumulator the layer can produce, and otherwise ConvInteger /
    MatMulInteger and plain ONNX ops that compute the Program's requantize exactly
    (``explicit.py``: e.g. a multiplier-and-shift rounding no float32 multiplier follows), also
    proven before anything is written; a layer neither makes exact is an ExportError naming it.
    ``archnet.requant_adjustments`` in the metadata lists per layer what it took (moved weight
    scales, channels equal in their integers only, the explicit form). ``import_onnx`` of a
    graph whose layers are all QLinear ops gives the same Program back
    (``compare.program_differences``: same ops in order, attributes, constants, types, zero
    points and shapes; scales and multipliers as float32, within the adjustments recorded).
``int4`` (below 8 bits; ``auto`` picks it when no integer tensor has 5..7 bits): QDQ with ONNX
    INT4/UINT4 element types (opset 21) for every tensor of at most 4 bits, 8-bit types
    otherwise: DequantizeLinear -> float Conv/Gemm/MaxPool/... -> QuantizeLinear. Standard ONNX,
    validated by ``onnx.checker`` against the real schemas, and onnxruntime 1.32 executes it
    (clamps are written as Max/Min: its optimizer drops a Relu before an INT4 QuantizeLinear).
    Between the quantizers it computes in float32, so its integers equal the simulator's except
    where a float32 sum lands on the other side of a .5 (``qdq.py``). A width INT4 does not
    name (2-bit weights) is recorded in the metadata (``archnet.dtypes``); the values stay in it.
``qdq``: the same QDQ graph with 8-bit (or wider) element types: what most toolchains read at 8
    bits; onnxruntime's optimizer fuses it back into QLinear kernels.
``qonnx`` (any width; ``auto`` picks it for 5..7-bit tensors, which no ONNX type holds): a float
    graph with QONNX ``Quant`` nodes (domain ``qonnx.custom_op.general``) carrying each
    tensor's exact bit width, signedness and rounding, as Brevitas, FINN and hls4ml read it.
    onnxruntime has no ``Quant`` kernel; ``run.run_exported`` executes the graph with
    ``onnx.reference`` and an implementation of Quant from the QONNX spec (``qonnx.py``).

``run.run_exported(path, program, inputs)`` runs any of them and returns the Program's tensors
(by the ``archnet.values`` map in the model's metadata) for comparison with ``execute``.

Every form is checked with ``onnx.checker.check_model(full_check=True)`` before anything is
written; the file is written to a temporary name and renamed. A Program the form cannot express
(a fallback node, a lookup table or softmax in any form; an add, a pooling average, a clamp
with both bounds inside the type or a tensor of other than 8 bits in ``qlinear``) is an
``ExportError`` naming the node, its op and what the form expresses, and leaves no file behind
(nor a temporary one). A softmax with a key mask is refused before any form is tried, as
"masked softmax is not exportable".

This package never imports torch or archnet; onnx is imported when an export runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from simulator.errors import ExportError
from simulator.fileio import atomic_write_bytes
from simulator.ir.ops import OpKind
from simulator.ir.program import Program
from simulator.profiles import load_profile

FORMS = ("auto", "qlinear", "qdq", "int4", "qonnx")
DEFAULT_PROFILE = "onnx-qlinear"  # the arithmetic of onnxruntime's own QLinear kernels

__all__ = ["FORMS", "ExportError", "choose_form", "export_onnx", "to_onnx_model"]


def choose_form(program: Program) -> str:
    """``qlinear`` for 8-bit Programs, ``int4`` when nothing is 5..7 bits, else ``qonnx``."""
    narrow = set()
    for name, t in program.tensors.items():
        if not t.is_int:
            continue
        bits = t.dtype.bits
        if bits == 32 and name not in program.inputs and name not in program.outputs:
            continue  # biases and accumulators
        if bits != 8:
            narrow.add(bits)
    if not narrow:
        return "qlinear"
    if all(b <= 4 or b in (8, 16, 32) for b in narrow):
        return "int4"
    return "qonnx"


def to_onnx_model(program: Program, *, form: str = "auto", opset: int | None = None,
                  profile=None):
    """The checked ``onnx.ModelProto`` of ``program`` in ``form`` (nothing written).
    ``profile``: the chip profile (or its name or file) whose arithmetic the ``qlinear`` graph
    reproduces on onnxruntime; default ``onnx-qlinear``."""
    program.validate()
    if form not in FORMS:
        raise ExportError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    if not program.executable:
        raise ExportError(f"program {program.name!r} was imported for estimation only (float "
                          f"compute, weights as shapes); there are no integers to export")
    for node in program.nodes:
        # said before any form walks the graph: the key mask, a graph input without a scale,
        # would otherwise fail first with a message about its quantization
        if node.op is OpKind.SOFTMAX and len(node.inputs) > 1:
            raise ExportError(f"node {node.name!r} (softmax): masked softmax is not exportable "
                              f"to ONNX (no form expresses softmax, masked or not)")
    chip = profile if hasattr(profile, "arithmetic") else load_profile(profile or DEFAULT_PROFILE)
    if form == "auto":
        form = choose_form(program)
    if form == "qlinear":
        from simulator.onnx_export.qlinear import export_qlinear
        model = export_qlinear(program, opset, chip)
    elif form in ("qdq", "int4"):
        from simulator.onnx_export.qdq import export_qdq
        model = export_qdq(program, opset, int4=form == "int4")
    else:
        from simulator.onnx_export.qonnx import export_qonnx
        model = export_qonnx(program, opset)
    check(model, form)
    return model


def check(model, form: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError: a bug here, said in one line
        text = " ".join(str(exc).split())[:400]
        raise ExportError(f"the {form!r} graph fails onnx.checker ({type(exc).__name__}: "
                          f"{text})") from None


def export_onnx(program: Program, path: str | os.PathLike, *, form: str = "auto",
                opset: int | None = None, profile=None) -> Path:
    """Write ``program`` as an ONNX file in ``form`` (see the module doc); returns the path."""
    path = Path(path)
    model = to_onnx_model(program, form=form, opset=opset, profile=profile)
    try:
        data = model.SerializeToString()
    except Exception as exc:  # protobuf refuses messages over 2 GiB
        raise ExportError(f"{path}: the model cannot be serialized ({type(exc).__name__}: "
                          f"{exc}); single-file ONNX models must be < 2 GiB") from None
    try:
        return atomic_write_bytes(path, data)
    except OSError as exc:
        raise ExportError(f"{path}: cannot write ({exc.strerror or exc})") from None
