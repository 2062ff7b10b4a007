"""Attention's ops in the student: matmul of two activations, the integer softmax, transpose.

- ``QMatMul``: ``scale * (a @ b)`` (a folded constant such as 1/sqrt(d)) onto its own grid; the
  chip's matmul accumulates, a requantize writes the grid.
- ``QSoftmax``: softmax over the last axis onto the fixed unsigned 8-bit grid of 1/256, as the
  simulator's integer softmax computes it (an exp table indexed by max - x, an integer
  division); no key mask (every position is valid).
- ``QTranspose``: a permutation of the axes after the batch axis; values and grid unchanged.

Each has a fake-quant ``forward``, an ``integer_forward`` and an ``export``; the softmax's and the
transpose's integer forwards run the very node the export writes through the simulator's node
runner, and the matmul's is ``archnet.quant.integer`` (tested equal to the simulator).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from archnet.quant import integer
from archnet.quant.elementwise import run_op
from archnet.quant.lsq import LsqQuantizer, round_ste
from archnet.quant.qtensor import QTensor
from simulator.contract import ArithmeticSpec, IntType
from simulator.ir.builder import ProgramBuilder

PROB_TYPE = IntType(8, False)
PROB_SHIFT = 8                  # probabilities on the u8 grid of 1/256: 1.0 saturates at 255/256
PROB_STEP = 1.0 / (1 << PROB_SHIFT)
EXP_TABLE_ONE = 1 << 16         # exp(0) in the softmax table's fixed point


def exp_table(score_step: float, bits: int) -> list[int]:
    """exp(-d * step) in fixed point for every difference d = max - x an input of ``bits`` has."""
    return [int(round(math.exp(-d * float(score_step)) * EXP_TABLE_ONE)) for d in range(1 << bits)]


def probabilities_fake(p: torch.Tensor) -> torch.Tensor:
    """Float probabilities onto the u8 grid of 1/256 (straight-through rounding)."""
    return torch.clamp(round_ste(p * (1 << PROB_SHIFT)), 0, PROB_TYPE.qmax) * PROB_STEP


class QMatMul(nn.Module):
    """``scale * (a @ b)`` of two activations onto ``output_quant``'s grid."""

    def __init__(self, output_quant: LsqQuantizer, scale: float = 1.0):
        super().__init__()
        self.output_quant = output_quant
        self.scale = float(scale)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.output_quant(self.scale * torch.matmul(a, b))

    def float_forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.matmul(a, b)

    def _multiplier(self, a_scale: float, b_scale: float) -> list[float]:
        return [float(a_scale) * float(b_scale) * self.scale / float(self.output_quant.step())]

    def integer_forward(self, a: QTensor, b: QTensor, arith: ArithmeticSpec) -> QTensor:
        q = self.output_quant
        acc = integer.matmul(a.value, b.value, arith.accumulator)
        flat = integer.requantize(acc.reshape(acc.shape[0], -1),
                                  self._multiplier(a.scale, b.scale), arith.requant, q.qmin, q.qmax)
        return QTensor(flat.reshape(acc.shape), float(q.step()), q.qtype)

    def export(self, b: ProgramBuilder, xs: list[str], name: str) -> str:
        q = self.output_quant
        sa, sb = b.tensors[xs[0]].scale[0], b.tensors[xs[1]].scale[0]
        acc = b.node("matmul", list(xs), f"{name}.acc", scale=sa * sb)
        return b.node("requantize", [acc], name, dtype=q.qtype, scale=float(q.step()),
                      real_multiplier=self._multiplier(sa, sb))


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scores with the keys a key mask drops (0) out of the softmax."""
    return x if mask is None else x.masked_fill(mask == 0, torch.finfo(x.dtype).min)


class QSoftmax(nn.Module):
    """Softmax over the last axis onto the fixed probability grid (see the module doc); with a
    key mask (a side input ``[1, ..., keys]``), over the keys it keeps."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return probabilities_fake(torch.softmax(_masked(x, mask), dim=-1))

    def float_forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(_masked(x, mask), dim=-1)

    @staticmethod
    def _attrs(in_scale: float, in_type: IntType) -> dict:
        return {"axis": -1, "exp_table": exp_table(in_scale, in_type.bits)}

    def integer_forward(self, x: QTensor, mask: QTensor | None = None, *,
                        arith: ArithmeticSpec) -> QTensor:
        ins = [x] if mask is None else [x, mask]
        return run_op("softmax", ins, PROB_STEP, PROB_TYPE, self._attrs(x.scale, x.dtype), arith)

    def export(self, b: ProgramBuilder, xs, name: str) -> str:
        xs = [xs] if isinstance(xs, str) else list(xs)
        t = b.tensors[xs[0]]
        return b.node("softmax", xs, name, dtype=PROB_TYPE, scale=PROB_STEP,
                      **self._attrs(t.scale[0], t.dtype))


class QTranspose(nn.Module):
    """A permutation of the per-sample axes (``perm`` without the batch axis, counted from 0)."""

    def __init__(self, perm):
        super().__init__()
        self.perm = [int(p) for p in perm]

    def _full(self) -> list[int]:
        return [0, *(p + 1 for p in self.perm)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self._full())

    def integer_forward(self, x: QTensor, arith: ArithmeticSpec | None = None) -> QTensor:
        return QTensor(x.value.permute(self._full()).contiguous(), x.scale, x.dtype)

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        return b.node("transpose", [x], name, perm=self._full())


__all__ = ["EXP_TABLE_ONE", "PROB_SHIFT", "PROB_STEP", "PROB_TYPE", "QMatMul", "QSoftmax",
           "QTranspose", "exp_table", "probabilities_fake"]
