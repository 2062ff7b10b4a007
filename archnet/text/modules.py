"""The Transformer's Arch-Net operators beyond fully connected: what replaces LayerNorm, GELU,
the embedding lookup, float softmax and the residual add, each with a fake-quant forward, an
integer-emulation forward and an export, whose numbers come from one place.

LayerNorm normalises each token by its own statistics, which no fixed-function NPU computes.
``FixedAffine`` replaces it by ``(x - mean_c) / std_c * gamma_c + beta_c`` with per-channel
statistics fixed after calibration, as batch-norm is at inference: a per-channel affine that
folds into the fully connected layer writing the branch and into a per-channel requantize of the
skip path. Its scale is kept >= 0 (``relu(gamma)``) because a requantize multiplier cannot be
negative; all-MiniLM-L6-v2's LayerNorm weights are all >= 0 (the smallest is -1.5e-9).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archnet.quant import integer
from archnet.quant.attention import PROB_SHIFT, PROB_TYPE, exp_table
from archnet.quant.lsq import LsqQuantizer, round_ste
from archnet.quant.modules import QLinear
from archnet.quant.qtensor import QTensor
from simulator.contract import ArithmeticSpec, IntType
from simulator.ir.builder import ProgramBuilder
from simulator.numerics import fixed_point as fp
from simulator.numerics import reference



class FixedAffine(nn.Module):
    """LayerNorm's replacement: a per-channel affine with fixed statistics (see module doc)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.eps = eps

    def scale(self) -> torch.Tensor:
        return F.relu(self.weight) / torch.sqrt(self.running_var + self.eps)

    def shift(self) -> torch.Tensor:
        return self.bias - self.running_mean * self.scale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale() + self.shift()

    @torch.no_grad()
    def fit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fix the statistics to those of ``x`` [M, C] and choose gamma, beta by least squares
        so that the affine is the per-channel map closest to ``y`` (the teacher's LayerNorm
        output on the same tokens): the best start a fixed-statistics replacement can have."""
        x, y = x.double(), y.double()
        mean, var = x.mean(0), x.var(0, unbiased=False)
        xn = (x - mean) / torch.sqrt(var + self.eps)
        gamma = (xn * (y - y.mean(0))).mean(0) / xn.pow(2).mean(0).clamp_min(1e-12)
        self.running_mean.copy_(mean.float())
        self.running_var.copy_(var.float())
        self.weight.copy_(gamma.clamp_min(0).float())
        self.bias.copy_(y.mean(0).float())


class AffineQLinear(QLinear):
    """A fully connected layer with the FixedAffine that follows its residual add folded in:
    ``s * (W x + b) + t``; the skip path gets the same ``s`` from a per-channel requantize."""

    def __init__(self, in_features: int, out_features: int, affine: FixedAffine, w_bits: int,
                 output_quant: LsqQuantizer):
        super().__init__(in_features, out_features, w_bits=w_bits, relu=False,
                         output_quant=output_quant)
        self._affine = (affine,)  # a tuple: the affine is its block's, not registered twice

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = super().folded()
        affine = self._affine[0]
        s = affine.scale()
        return weight * s[:, None], bias * s + affine.shift()


# ------------------------------------------------------------------- per-channel skip rescale

def skip_multipliers(affine: FixedAffine, in_scale: float, out_scale: float) -> list[float]:
    return [float(s) * float(in_scale) / float(out_scale)
            for s in affine.scale().detach().to(torch.float32).tolist()]


def skip_integer(x: QTensor, affine: FixedAffine, out: LsqQuantizer, arith: ArithmeticSpec) -> QTensor:
    out_scale = float(out.step())
    mult = skip_multipliers(affine, x.scale, out_scale)
    return QTensor(integer.requantize(x.value, mult, arith.requant, out.qmin, out.qmax),
                   out_scale, out.qtype)


def skip_export(b: ProgramBuilder, x: str, affine: FixedAffine, out: LsqQuantizer, name: str) -> str:
    out_scale = float(out.step())
    return b.node("requantize", [x], name, dtype=out.qtype, scale=out_scale,
                  real_multiplier=skip_multipliers(affine, b.tensors[x].scale[0], out_scale), axis=1)


# ------------------------------------------------------------------- add

def add_integer(a: QTensor, c: QTensor, out: LsqQuantizer, arith: ArithmeticSpec) -> QTensor:
    out_scale = float(out.step())
    ma, mb, shift = fp.prepare_add(float(a.scale) / out_scale, float(c.scale) / out_scale,
                                   arith.requant)
    y = reference.add(a.value.numpy(), 0, c.value.numpy(), 0, ma, mb, shift, arith.requant.mode,
                      arith.requant.rounding, 0, out.qmin, out.qmax)
    return QTensor(torch.from_numpy(np.ascontiguousarray(y)), out_scale, out.qtype)


# ------------------------------------------------------------------- integer softmax

def softmax_fake(scores: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Float softmax over valid keys, then onto the u8 probability grid (straight-through)."""
    p = torch.softmax(scores.masked_fill(key_mask == 0, float("-inf")), dim=-1)
    return torch.clamp(round_ste(p * (1 << PROB_SHIFT)), 0, PROB_TYPE.qmax) / (1 << PROB_SHIFT)


def attention_log_probs(scores: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """The float softmax's log over valid keys, for an attention-map loss: masked keys sit at
    -1e4, not -inf, so a teacher's zero probability there adds 0, not NaN, to a KL."""
    return torch.log_softmax(scores.masked_fill(key_mask == 0, -1e4), dim=-1)


def softmax_integer(scores: QTensor, key_mask: torch.Tensor, arith: ArithmeticSpec) -> QTensor:
    table = np.asarray(exp_table(scores.scale, scores.dtype.bits), np.int64)
    y = reference.softmax(scores.value.numpy(), -1, table, PROB_SHIFT, 0, PROB_TYPE.qmin,
                          PROB_TYPE.qmax, arith.requant.rounding, mask=key_mask.numpy())
    return QTensor(torch.from_numpy(np.ascontiguousarray(y)), 1.0 / (1 << PROB_SHIFT), PROB_TYPE)


def softmax_export(b: ProgramBuilder, scores: str, key_mask: str, name: str) -> str:
    t = b.tensors[scores]
    return b.node("softmax", [scores, key_mask], name, dtype=PROB_TYPE, scale=1.0 / (1 << PROB_SHIFT),
                  axis=-1, exp_table=exp_table(t.scale[0], t.dtype.bits))


# ------------------------------------------------------------------- GELU on the LUT unit

def gelu_table(in_step: float, in_type: IntType, out_step: float, out_type: IntType) -> list[int]:
    """GELU of every input integer, on the output grid: what the chip's lookup-table unit holds."""
    xs = (np.arange(in_type.qmin, in_type.qmax + 1, dtype=np.float64)) * float(in_step)
    g = 0.5 * xs * (1.0 + np.vectorize(math.erf)(xs / math.sqrt(2.0)))
    return np.clip(np.round(g / float(out_step)), out_type.qmin, out_type.qmax).astype(np.int64).tolist()


class GeluLut(nn.Module):
    """GELU where the profile has a lookup-table unit: pre-activation grid in, a_bits grid out."""

    def __init__(self, output_quant: LsqQuantizer):
        super().__init__()
        self.output_quant = output_quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_quant(F.gelu(x))

    def table(self, in_scale: float, in_type: IntType) -> list[int]:
        q = self.output_quant
        return gelu_table(in_scale, in_type, float(q.step()), q.qtype)

    def integer_forward(self, x: QTensor) -> QTensor:
        table = np.asarray(self.table(x.scale, x.dtype), np.int64)
        y = reference.lookup_table(x.value.numpy(), table, x.dtype.qmin)
        q = self.output_quant
        return QTensor(torch.from_numpy(np.ascontiguousarray(y)), float(q.step()), q.qtype)

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        t = b.tensors[x]
        q = self.output_quant
        return b.node("lookup_table", [x], name, dtype=q.qtype, scale=float(q.step()),
                      table=self.table(t.scale[0], t.dtype), function="gelu")


# ------------------------------------------------------------------- requantize between grids

class SmoothedInput(nn.Module):
    """An FC input grid narrower than the stream's, with per-channel smoothing (SmoothQuant):
    the stream's few outlier channels would otherwise set a 4-bit step that rounds every other
    channel to zero. The requantize onto the grid divides channel c by ``smooth[c]`` (a
    per-channel multiplier, which requantize has) and the consuming FC multiplies its weight
    column c by it, so the product is unchanged and only the rounding moves."""

    def __init__(self, channels: int, quant: LsqQuantizer):
        super().__init__()
        self.quant = quant
        self.register_buffer("smooth", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(x / self.smooth)

    def multipliers(self, in_scale: float) -> list[float]:
        step = float(self.quant.step())
        return [float(in_scale) / (float(m) * step) for m in self.smooth.to(torch.float32).tolist()]

    def integer_forward(self, x: QTensor, arith: ArithmeticSpec) -> QTensor:
        q = self.quant
        y = integer.requantize(x.value, self.multipliers(x.scale), arith.requant, q.qmin, q.qmax)
        return QTensor(y, float(q.step()), q.qtype)

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        q = self.quant
        return b.node("requantize", [x], name, dtype=q.qtype, scale=float(q.step()),
                      real_multiplier=self.multipliers(b.tensors[x].scale[0]), axis=1)


class SmoothedQLinear(QLinear):
    """A fully connected layer reading a SmoothedInput: weight columns times the smoothing."""

    def __init__(self, in_features: int, out_features: int, source: SmoothedInput | None, **kw):
        super().__init__(in_features, out_features, **kw)
        self._source = (source,)  # the layer owns the input; a tuple keeps it unregistered here

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = super().folded()
        source = self._source[0]
        return (weight if source is None else weight * source.smooth[None, :]), bias


def regrid_integer(x: QTensor, out: LsqQuantizer, arith: ArithmeticSpec) -> QTensor:
    """Requantize an activation onto another quantizer's grid (e.g. the 8-bit stream onto an
    FC's 4-bit input grid)."""
    out_scale = float(out.step())
    y = integer.requantize(x.value.reshape(x.value.shape[0], -1), [float(x.scale) / out_scale],
                           arith.requant, out.qmin, out.qmax).reshape(x.value.shape)
    return QTensor(y, out_scale, out.qtype)


def regrid_export(b: ProgramBuilder, x: str, out: LsqQuantizer, name: str) -> str:
    out_scale = float(out.step())
    return b.node("requantize", [x], name, dtype=out.qtype, scale=out_scale,
                  real_multiplier=[b.tensors[x].scale[0] / out_scale])
