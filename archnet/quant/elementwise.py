"""The student's non-MAC ops beyond the paper's set: add, mul, average and max pooling, and
activation functions on the chip's lookup-table unit.

Each has a fake-quant ``forward``, an ``integer_forward`` and an ``export``. The integer
forward runs the very node ``export`` writes through the simulator's own node runner
(``simulator.execute.run_node``): one definition of the arithmetic, so archnet's emulation of
these ops equals the simulator by construction (the MAC layers keep their fast torch path,
proven equal by tests).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archnet.quant.lsq import LsqQuantizer, round_ste
from archnet.quant.modules import ClampedOutput
from archnet.quant.qtensor import QTensor
from simulator.contract import ArithmeticSpec, IntType
from simulator.execute import run_node
from simulator.ir.builder import ProgramBuilder

# activation functions the student evaluates on a lookup table: torch (fake-quant) and NumPy
# (the table) forms of one definition
_ERF = np.vectorize(math.erf)
FUNCTIONS = {
    "gelu": (F.gelu, lambda x: 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)))),
    "silu": (F.silu, lambda x: x / (1.0 + np.exp(-x))),
    "sigmoid": (torch.sigmoid, lambda x: 1.0 / (1.0 + np.exp(-x))),
    "tanh": (torch.tanh, np.tanh),
    "hardswish": (F.hardswish, lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0),
    "hardsigmoid": (F.hardsigmoid, lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0)),
}


def function_table(function: str, in_scale: float, in_type: IntType, out_scale: float,
                   out_type: IntType) -> list[int]:
    """``function`` of every input integer, on the output grid: what the table unit holds."""
    xs = np.arange(in_type.qmin, in_type.qmax + 1, dtype=np.float64) * float(in_scale)
    ys = FUNCTIONS[function][1](xs)
    return np.clip(np.round(ys / float(out_scale)), out_type.qmin, out_type.qmax).astype(
        np.int64).tolist()


def run_op(op: str, ins: list[QTensor], out_scale: float, out_type: IntType, attrs: dict,
           arith: ArithmeticSpec) -> QTensor:
    """One simulator node on these integers (the node ``export`` writes)."""
    b = ProgramBuilder(op)
    names = [b.input(f"x{i}", tuple(q.value.shape), q.dtype, scale=float(q.scale))
             for i, q in enumerate(ins)]
    b.node(op, names, "y", dtype=out_type, scale=out_scale, **attrs)
    b.output("y")
    program = b.build()
    value, _ = run_node(program.nodes[0], program, [q.value.numpy() for q in ins], arith,
                        "kernels")
    return QTensor(torch.from_numpy(np.ascontiguousarray(value)).to(torch.int64), out_scale,
                   out_type)


class _Rescaling(ClampedOutput, nn.Module):
    """An op that writes its own grid (``output_quant``), optionally clamped (ReLU, ReLU6)."""

    op = ""

    def __init__(self, output_quant: LsqQuantizer, relu: bool = False):
        super().__init__()
        self.output_quant = output_quant
        self.relu = relu
        self.clamp_max = None

    def _attrs(self, ins_scales, ins_types) -> dict:
        return self.clamp_attrs(self.output_quant.qtype, float(self.output_quant.step()))

    def integer_forward(self, *ins: QTensor, arith: ArithmeticSpec) -> QTensor:
        q = self.output_quant
        attrs = self._attrs([x.scale for x in ins], [x.dtype for x in ins])
        return run_op(self.op, list(ins), float(q.step()), q.qtype, attrs, arith)

    def export(self, b: ProgramBuilder, xs: list[str], name: str) -> str:
        q = self.output_quant
        attrs = self._attrs([b.tensors[x].scale[0] for x in xs], [b.tensors[x].dtype for x in xs])
        return b.node(self.op, list(xs), name, dtype=q.qtype, scale=float(q.step()), **attrs)


class QAdd(_Rescaling):
    """Elementwise add of two activations on their own grids, onto the output's grid."""

    op = "add"

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.output_quant(self.activation(a + b))


class QMul(_Rescaling):
    """Elementwise mul, ``b`` broadcast to ``a`` (a squeeze-excitation gate per channel)."""

    op = "mul"

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.output_quant(self.activation(a * b))


class QLookupTable(_Rescaling):
    """An activation function on the chip's table unit: input grid in, output grid out.

    With ``gain`` g the table holds f(g x) / g: ``function`` on both grids relabelled g times
    coarser, as the chip's table is configured with any input and output scales (GELU as
    SiLU(1.702 x) / 1.702)."""

    op = "lookup_table"

    def __init__(self, function: str, output_quant: LsqQuantizer, gain: float = 1.0):
        super().__init__(output_quant, False)
        self.function = function
        self.gain = float(gain)

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        f = FUNCTIONS[self.function][0]
        return f(x) if self.gain == 1.0 else f(self.gain * x) / self.gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_quant(self.float_forward(x))

    def _attrs(self, ins_scales, ins_types) -> dict:
        q = self.output_quant
        g = self.gain
        return {"table": function_table(self.function, g * float(ins_scales[0]), ins_types[0],
                                        g * float(q.step()), q.qtype), "function": self.function}


class QPool2d(nn.Module):
    """Max or average window pooling; the output stays on the input's grid (the average is
    rounded as the chip rounds, so its fake-quant forward re-rounds onto that grid)."""

    def __init__(self, kind: str, kernel, stride, padding, input_quant: LsqQuantizer | None):
        super().__init__()
        self.kind = kind
        self.kernel, self.stride, self.padding = tuple(kernel), tuple(stride), tuple(padding)
        self.input_quant = input_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return F.max_pool2d(x, self.kernel, self.stride, self.padding)
        y = F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=False)
        if self.input_quant is None:
            return y
        step = self.input_quant.step()
        return round_ste(y / step) * step

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return F.max_pool2d(x, self.kernel, self.stride, self.padding)
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=False)

    def _attrs(self) -> dict:
        ph, pw = self.padding
        return {"kernel": list(self.kernel), "strides": list(self.stride), "pads": [ph, pw, ph, pw]}

    @property
    def op(self) -> str:
        return "maxpool2d" if self.kind == "max" else "avgpool2d"

    def integer_forward(self, x: QTensor, arith: ArithmeticSpec) -> QTensor:
        return run_op(self.op, [x], float(x.scale), x.dtype, self._attrs(), arith)

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        return b.node(self.op, [x], name, **self._attrs())
