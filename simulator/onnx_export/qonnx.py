"""The ``qonnx`` form: a float graph with QONNX ``Quant`` nodes carrying exact bit widths.

QONNX (the format of Brevitas, FINN, hls4ml; https://github.com/fastmachinelearning/qonnx)
marks every quantized tensor with a ``Quant`` node of domain ``qonnx.custom_op.general``:
inputs ``x, scale, zeropt, bitwidth`` (float tensors), attributes ``signed``, ``narrow`` and
``rounding_mode``; its output is the fake-quantized real value
``(clip(round(x / scale + zeropt), min, max) - zeropt) * scale``. Any width from 1 to 32 bits is
expressed exactly (a 2-bit weight is ``bitwidth = 2``), which no ONNX integer type does.

Here each Program tensor is the output of a Quant node with its scale, zero point, width and
signedness (weights per output channel, the scale shaped ``[C, 1, 1, 1]``; biases as 32-bit
Quant on the accumulator scale); ops between them are standard float ONNX (Conv, Gemm,
MaxPool, Concat, Flatten, ...), clamps are Relu/Clip before the Quant. The graph's input is the
real image ``(x - zp) * scale`` (float) and its outputs are real values on the outputs' grids.

onnxruntime has no ``Quant`` kernel, so ``reference_evaluator`` runs the graph with
``onnx.reference`` and ``QuantOp`` below, written from the QONNX specification (round half to
even for ``ROUND``; the zero point is added before rounding, as the spec says, which differs
from the simulator only at exact ties with an odd zero point). Since the ops between the Quant
nodes are float, the result equals the simulator's integers except where float rounding moves
a value across a rounding boundary, as for ``qdq``.
"""

from __future__ import annotations

import numpy as np

from simulator.errors import ExportError
from simulator.ir.program import Program
from simulator.onnx_export.graph import FLOAT, per_tensor
from simulator.onnx_export.qdq import FLOAT_OPS, FloatGraphExporter

DOMAIN = "qonnx.custom_op.general"
DEFAULT_OPSET = 13


class QONNXExporter(FloatGraphExporter):
    form = "qonnx"
    supported = FLOAT_OPS

    def quant(self, x: str, out: str, scale, zp, bits: int, signed: bool, shape) -> str:
        g = self.g
        g.domains[DOMAIN] = 1
        s = g.initializer(f"{out}/scale", np.asarray(scale, np.float32), FLOAT)
        z = g.initializer(f"{out}/zeropt", np.asarray(zp, np.float32), FLOAT)
        b = g.scalar(f"{out}/bitwidth", np.float32(bits), FLOAT, key=("bits", bits))
        g.add("Quant", [x, s, z, b], out, name=f"{out}/quant", domain=DOMAIN,
              signed=int(signed), narrow=0, rounding_mode="ROUND")
        g.typed(out, FLOAT, shape)
        return out

    def graph_input(self, name: str) -> str:
        g, t = self.g, self.p.tensors[name]
        g.typed(name, FLOAT, t.shape)
        if not t.is_int:
            return g.holds(name, name)
        scale, zp = per_tensor(t, f"input {name!r}")
        self._real[name] = self.quant(name, g.fresh(f"{name}/quant_out"), scale, zp,
                                      t.dtype.bits, t.dtype.signed, t.shape)
        g.holds(self._real[name], name)
        return name

    def real(self, name: str, where: str) -> str:
        return self._real.get(name, name)

    def quantize(self, real: str, name: str, where: str) -> str:
        t = self.p.tensors[name]
        scale, zp = per_tensor(t, where)
        self.quant(real, name, scale, zp, t.dtype.bits, t.dtype.signed, t.shape)
        return self.g.holds(name, name)

    def _channel_shape(self, values, rank: int) -> np.ndarray:
        v = np.asarray(values, np.float32)
        return v.reshape((-1,) + (1,) * (rank - 1)) if v.size > 1 else v.reshape(())

    def weight(self, name: str, scale, where: str) -> str:
        g, t = self.g, self.p.tensors[name]
        scale = np.asarray(scale, np.float32)
        zp = np.asarray(t.zero_point, np.float32)
        shaped_s = self._channel_shape(scale, t.data.ndim)
        shaped_z = self._channel_shape(zp, t.data.ndim) if zp.size > 1 else zp.reshape(())
        real = ((t.data.astype(np.float32) - shaped_z) * shaped_s).astype(np.float32)
        src = g.initializer(f"{name}/float", real, FLOAT)
        return self.quant(src, g.holds(g.fresh(f"{name}/quant_out"), name), shaped_s, shaped_z,
                          t.dtype.bits, t.dtype.signed, t.shape)

    def bias(self, name: str, scale, where: str) -> str:
        g, t = self.g, self.p.tensors[name]
        if not t.is_int or t.dtype.bits > 32:
            raise ExportError(f"{where}: bias {name!r} is {t.dtype}; at most 32 bits")
        scale = np.asarray(scale, np.float32)
        real = (t.data.astype(np.float64) * scale.astype(np.float64)).astype(np.float32)
        src = g.initializer(f"{name}/float", real, FLOAT)
        return self.quant(src, g.holds(g.fresh(f"{name}/quant_out"), name), scale, np.float32(0),
                          t.dtype.bits, True, t.shape)


def export_qonnx(program: Program, opset: int | None = None):
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < 11:
        raise ExportError(f"form 'qonnx' needs opset >= 11 (Clip with min/max inputs), got {opset}")
    return QONNXExporter(program).run(
        opset, "archnet Program as QONNX: float ops with Quant nodes carrying bit widths")


# ---------------------------------------------------------------------- execution

def quant(x, scale, zeropt, bitwidth, signed: int, narrow: int, rounding_mode: str = "ROUND"):
    """QONNX ``Quant`` from its specification (qonnx.custom_op.general.quant)."""
    x = np.asarray(x, np.float32)
    scale, zeropt = np.asarray(scale, np.float32), np.asarray(zeropt, np.float32)
    bits = int(np.asarray(bitwidth).ravel()[0])
    if signed:
        lo, hi = -(2 ** (bits - 1)) + int(bool(narrow)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2 ** bits - 1 - int(bool(narrow))
    y = x / scale + zeropt
    y = np.clip(y, lo, hi)
    mode = (rounding_mode.decode() if isinstance(rounding_mode, bytes) else rounding_mode).upper()
    rounding = {"ROUND": np.round, "CEIL": np.ceil, "FLOOR": np.floor,
                "ROUND_TO_ZERO": np.trunc}.get(mode)
    if rounding is None:
        raise ExportError(f"Quant rounding_mode {rounding_mode!r} is not implemented")
    return ((rounding(y) - zeropt) * scale).astype(np.float32)


def reference_evaluator(model):
    """``onnx.reference.ReferenceEvaluator`` of ``model`` with QONNX ``Quant`` registered."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class Quant(OpRun):
        op_domain = DOMAIN

        def _run(self, x, scale, zeropt, bitwidth, signed=None, narrow=None,
                 rounding_mode=None):
            return (quant(x, scale, zeropt, bitwidth, signed if signed is not None else 1,
                          narrow or 0, rounding_mode or "ROUND"),)

    return ReferenceEvaluator(model, new_ops=[Quant])
