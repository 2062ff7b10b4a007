"""LayerNorm per token from chip ops (``layer_norm.per_token``), as Arm's Ethos-U toolchain
decomposes it: the row's mean, the centred values, their squares, the variance (a mean), its
reciprocal square root by TOSA's interpolated 16-bit table, the product, then LayerNorm's own
scale and shift as a depthwise 1x1 conv (per-channel weights: the one place a chip takes them).

Every intermediate is a signed 16-bit tensor on a grid fixed by calibration (``calibrate``:
each grid covers the largest value seen with headroom); the output is the step's learned grid.
Unlike the paper's fixed-statistics affine, every token is normalised by its own statistics, so
nothing is lost to tokens whose spread differs from the calibration average.

One grid is not enough: MiniLM's token variances span up to 510x within one LayerNorm (layer
2's output), and a few outlier channels put the largest square near 400x the largest variance.
On grids that hold the largest values, a small-variance token's squares are a fraction of one
step (most round to zero) and its variance falls in the rsqrt table's first interval, where a
linear interpolation of 1/sqrt between samples 128 steps apart is off by about 9 %. So the
squares and their mean are taken twice: on coarse grids that hold the largest, and on grids
``FINE`` times finer that saturate above; each variance is read by its own table and the smaller
reading kept. Every error is upward (a rounded-away or saturated square lowers the variance, a
chord of the convex 1/sqrt lies above it), so the minimum is the accurate one. On MiniLM, with a
16-bit stream and no training, the fine squares take nearest-neighbour agreement from 85.9 % to
99.6 % (``python benchmarks/minilm_forms.py``, the per-token constraint-only cell).

``forward`` fakes the chain in float (each grid's rounding, straight-through), ``float_forward``
is LayerNorm itself, ``integer_forward`` runs the very nodes ``export`` writes through the
simulator (one definition of the arithmetic, as ``archnet.quant.elementwise`` does).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archnet.quant.lsq import LsqQuantizer, round_ste
from archnet.quant.modules import QConv2d
from archnet.quant.qtensor import QTensor
from simulator.contract import INTERPOLATION_FRACTION_BITS, S16, ArithmeticSpec
from simulator.execute import execute
from simulator.ir.builder import ProgramBuilder
from simulator.numerics.tables import rsqrt_table

HEADROOM = 1.25        # each internal grid covers 1.25x the largest value calibration saw
FINE = 16              # the fine square and variance grids: 16x finer than the coarse ones
GRIDS = ("mean", "centred", "square", "variance", "square_fine", "variance_fine", "rsqrt",
         "norm")
# the simulator ops ``export`` writes, in order (the rule that plans it, archnet.rules.norm,
# probes the same list; tests/archnet/lowering/test_attention_lowering.py ties the three)
OPS = ("mean", "sub", "mul", "mean", "lookup_table", "requantize", "mul", "mean",
       "lookup_table", "requantize", "minimum", "mul", "reshape", "conv2d", "requantize", "reshape")


def on_grid(v: torch.Tensor, step: float, lo: int = S16.qmin, hi: int = S16.qmax):
    return torch.clamp(round_ste(v / step), lo, hi) * step


class TokenNormBase(nn.Module):
    """What every per-token LayerNorm form shares: LayerNorm's scale and shift as a depthwise
    1x1 over the token rows (``affine``, whose grid is the output's), internal grids as
    float64 buffers ``<grid>_step``, the fake-quant ``forward`` (``_normalise`` then the
    affine) and the integer forward through the simulator (``export``'s nodes, executed)."""

    GRIDS: tuple[str, ...] = ()

    def __init__(self, features: int, w_bits: int = 8, eps: float = 1e-5,
                 output_quant: LsqQuantizer | None = None):
        super().__init__()
        self.features, self.eps = features, float(eps)
        # LayerNorm's scale and shift: weight [d, 1, 1, 1] and bias [d] of a depthwise 1x1
        self.affine = QConv2d(features, features, 1, 1, w_bits=w_bits, relu=False,
                              batch_norm=False, output_quant=output_quant, padding=0,
                              groups=features)
        with torch.no_grad():
            self.affine.weight.fill_(1.0)
        for g in self.GRIDS:
            self.register_buffer(f"{g}_step", torch.tensor(1.0 / S16.qmax, dtype=torch.float64))

    @property
    def output_quant(self) -> LsqQuantizer:
        return self.affine.output_quant

    def _step(self, g: str) -> float:
        return float(getattr(self, f"{g}_step"))

    @staticmethod
    def _rows(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1], 1, 1)

    def _statistics(self, x: torch.Tensor):
        """Per token of the float input ``x`` (features last), in float64: the mean, the
        centred values, their squares and the variance ([tokens, 1]), as calibration reads
        them."""
        x = x.detach().to(torch.float64).reshape(-1, self.features)
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        square = centred * centred
        return mean, centred, square, square.mean(dim=1, keepdim=True)

    def _cover(self, peak: dict) -> None:
        """Each named internal grid (16-bit) covers its largest value times ``HEADROOM``."""
        for g, value in peak.items():
            getattr(self, f"{g}_step").fill_(max(float(value) * HEADROOM, 1e-12) / S16.qmax)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        raise NotImplementedError

    def _affine_export(self, b: ProgramBuilder, n: str, name: str, shape) -> str:
        """The normalised rows ``n`` through the affine, back to the input's ``shape``."""
        rows = b.node("reshape", [n], f"{name}.rows", shape=[-1, self.features, 1, 1])
        y = self.affine.export(b, rows, f"{name}.affine")
        return b.node("reshape", [y], name, shape=[-1, *shape[1:]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self._normalise(x)
        return self.affine(self._rows(n)).reshape(x.shape)

    def integer_forward(self, x: QTensor, arith: ArithmeticSpec) -> QTensor:
        b = ProgramBuilder(type(self).__name__)
        xin = b.input("x", tuple(x.value.shape), x.dtype, scale=float(x.scale))
        b.output(self.export(b, xin, "y"))
        program = b.build()
        y = execute(program, arith, {"x": x.value.numpy()}, trace=False).outputs["y"]
        out = program.tensors["y"]
        return QTensor(torch.from_numpy(np.ascontiguousarray(y)).to(torch.int64),
                       out.scale[0], out.dtype)


class QTokenNorm(TokenNormBase):
    """LayerNorm over the last axis, per token, from mean, sub, mul and an interpolated table."""

    GRIDS = GRIDS

    def __init__(self, features: int, w_bits: int = 8, eps: float = 1e-5,
                 output_quant: LsqQuantizer | None = None):
        super().__init__(features, w_bits, eps, output_quant)
        self.register_buffer("variance_floor", torch.tensor(0.0, dtype=torch.float64))

    # -- float and fake-quant
    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Fix the internal grids from the float input ``x`` (any shape, features last)."""
        mean, centred, square, variance = self._statistics(x)
        floor = max(float(variance.min()) / 2, 0.0)
        rsqrt = 1.0 / torch.sqrt(variance.clamp_min(floor) + self.eps)
        norm = centred * rsqrt
        peak = {"mean": mean.abs().max(), "centred": centred.abs().max(),
                "square": square.max(), "variance": variance.max(), "norm": norm.abs().max()}
        self._cover(peak)
        self.square_fine_step.fill_(self._step("square") / FINE)
        self.variance_fine_step.fill_(self._step("variance") / FINE)
        self.variance_floor.fill_(floor)
        # the table's largest entry, at the floor, is the grid's top
        self.rsqrt_step.fill_(1.0 / np.sqrt(floor + self.eps) / S16.qmax)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The chain up to the normalised values, each intermediate on its grid."""
        m = on_grid(x.mean(dim=-1, keepdim=True), self._step("mean"))
        c = on_grid(x - m, self._step("centred"))
        floor, r = float(self.variance_floor), None
        for square, variance in (("square", "variance"), ("square_fine", "variance_fine")):
            sq = on_grid(c * c, self._step(square), 0)
            v = on_grid(sq.mean(dim=-1, keepdim=True), self._step(variance), 0)
            # the table's interpolation is not modelled (it errs below 0.3 % where it is read)
            reading = torch.rsqrt(v.clamp_min(floor) + self.eps)
            r = reading if r is None else torch.minimum(r, reading)
        r = on_grid(r, self._step("rsqrt"), 0)
        return on_grid(c * r, self._step("norm"))

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm itself (the form is exact in float)."""
        n = F.layer_norm(x, (self.features,), eps=self.eps)
        return self.affine.float_forward(self._rows(n)).reshape(x.shape)

    # -- the chip
    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        s = {g: self._step(g) for g in GRIDS}
        m = b.node("mean", [x], f"{name}.mean", dtype=S16, scale=s["mean"], axes=[-1])
        c = b.node("sub", [x, m], f"{name}.centred", dtype=S16, scale=s["centred"])
        readings = []
        for square, grid in (("square", "variance"), ("square_fine", "variance_fine")):
            sq = b.node("mul", [c, c], f"{name}.{square}", dtype=S16, scale=s[square])
            v = b.node("mean", [sq], f"{name}.{grid}", dtype=S16, scale=s[grid], axes=[-1])
            table = rsqrt_table(s[grid], s["rsqrt"], self.eps, float(self.variance_floor))
            wide = b.node("lookup_table", [v], f"{name}.{grid}_rsqrt_wide", dtype="s32",
                          scale=s["rsqrt"] / (1 << INTERPOLATION_FRACTION_BITS), table=table,
                          interpolated=True, function="rsqrt")
            readings.append(b.node("requantize", [wide], f"{name}.{grid}_rsqrt", dtype=S16,
                                   scale=s["rsqrt"],
                                   real_multiplier=[1.0 / (1 << INTERPOLATION_FRACTION_BITS)]))
        r = b.node("minimum", readings, f"{name}.rsqrt", dtype=S16, scale=s["rsqrt"])
        n = b.node("mul", [c, r], f"{name}.norm", dtype=S16, scale=s["norm"])
        return self._affine_export(b, n, name, b.tensors[x].shape)
