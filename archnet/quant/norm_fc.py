"""LayerNorm per token from fully connected layers, add, mul and a sigmoid table
(``layer_norm.per_token_fc``), for chips that run none of mean, sub, a broadcast mul or an
rsqrt table (RK3588's NPU: its table unit holds a fixed list of functions, its elementwise
units take same-shape operands only).

Each piece of LayerNorm is rewritten as the ops such a chip has:

- the row's negated mean, broadcast to every channel: a fully connected layer whose weights are
  all -1/D (one integer, -1, on a grid of step 1/D: exact at any weight width);
- the centred values: an add of the input and that;
- the squares: a mul of the centred values by themselves;
- the variance: a fully connected layer of weights 1/D (exact, as above) down to one value;
- its reciprocal square root: a small sigmoid network, r(v) = sum_k a_k sigmoid(b_k v + c_k)
  + d, fitted by calibration to 1/sqrt(v + eps) over the variances seen (relative error, a_k
  >= 0 and b_k < 0 so r falls as v grows). Its first layer is a fully connected layer from the
  one variance to K logits (one weight per output channel: exact), then the chip's sigmoid
  table, then a fully connected layer from the K gates to all D channels (every row the same
  a_k, bias d): the broadcast the chip's mul cannot do is the second layer's output;
- the normalised values: a mul of the centred values by that;
- LayerNorm's own scale and shift: a depthwise 1x1 over the token rows, as ``QTokenNorm``.

Approximate, not exact: the network's largest relative error over the calibrated variances,
as the chip computes it (8-bit logits and gates), is ``rsqrt_error``, at most
``RSQRT_TOLERANCE`` (the zoo's ViT: 0.35 to 0.84 %; with every LayerNorm so replaced, its
internal grids included, it scores 91.32 % against the float teacher's 91.34 before any
training), where the paper's fixed statistics leave that ViT at 15 %
(``layer_norm.fixed_affine``); the planner ranks it between the two (approximate, with a
bound). It must be calibrated before anything reads the student's float path
(``archnet.lowering.calibrate.calibrate_token_norms``): unfitted, its float output is not
LayerNorm, and grids and fits set from it wreck the student (the zoo ViT's untrained
fake-quant student on RK3588: 75.55 % at 8w8a and 10.2 % at 4w4a so, 91.75 % and 88.65 %
calibrated first; converted, 91.26 % and 90.38 %). Its limit: one grid for the squares, as the
chip has no ``minimum`` to pick between two; on MiniLM-like streams (channels 20x the rest,
token variances 500x apart) the quietest tokens come out up to 8 % off.
Internal grids are fixed by calibration and signed 16-bit, except the table's 8-bit input and
output (a chip without 16-bit activations refuses the form); the internal layers' weights are
8-bit whatever the student's width (they are exact or fitted values, not learned factors).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from archnet.quant.lsq import LsqQuantizer
from archnet.quant.modules import BIAS_TYPE
from archnet.quant.norm import TokenNormBase, on_grid
from simulator.contract import S16, IntType
from simulator.ir.builder import ProgramBuilder

UNITS = 16             # sigmoid units of the rsqrt network: within 1 % of 1/sqrt over 1e5
# the relative error the fit must reach over the calibrated variances (the planner's bound for
# the form); calibration warns, naming the LayerNorm's error, where it does not
RSQRT_TOLERANCE = 0.02
S8, U8 = IntType(8, True), IntType(8, False)
LOGIT_RANGE = 8.0      # the table's input grid: sigmoid is flat to 3e-4 beyond +-8
GRIDS = ("neg_mean", "centred", "square", "variance", "rsqrt", "norm")
# the simulator ops ``export`` writes, in order (archnet.rules.norm probes the same list)
OPS = ("reshape", "fully_connected", "requantize", "add", "mul", "fully_connected", "requantize",
       "fully_connected", "requantize", "lookup_table", "fully_connected", "requantize", "mul",
       "reshape", "conv2d", "requantize", "reshape")


def _least_squares(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """argmin |a x - b| by NumPy's SVD solver: the same bits on every call (torch's CPU lstsq
    is not, and a conversion must not depend on the run)."""
    return torch.from_numpy(np.linalg.lstsq(a.numpy(), b.numpy(), rcond=None)[0])


def fit_rsqrt(variances: torch.Tensor, eps: float, units: int = UNITS, steps: int = 800
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float, float]:
    """(b, c, a, d, lo, hi): a sigmoid network r(v) = a . sigmoid(b v + c) + d fitted to
    1/sqrt(v + eps) over [lo, hi] (half the smallest of ``variances`` to the largest) by
    relative error. The fit runs on v / hi, so only the range's ratio matters: units start
    at log-spaced centres with widths in proportion, a and d from least squares, then Adam
    refines all of them (a >= 0 and b < 0 throughout, so r falls as v grows)."""
    v = variances.detach().to(torch.float64).flatten()
    hi = max(float(v.max()), 1e-12)
    lo = min(max(float(v.min()) / 2, hi * 1e-7), hi / 1.01)
    ratio = hi / lo
    grid = torch.logspace(-math.log10(ratio), 0.0, 2000, dtype=torch.float64)
    eps_n = eps / hi
    target = 1.0 / torch.sqrt(grid + eps_n)
    centres = torch.logspace(-math.log10(ratio), 0.0, units, dtype=torch.float64)
    spacing = math.log(ratio) / max(units - 1, 1)
    log_slope = torch.log(2.0 / (centres * spacing)).requires_grad_(True)
    log_centre = torch.log(centres).requires_grad_(True)

    def gates(x):
        return torch.sigmoid(-(x[:, None] - torch.exp(log_centre)) * torch.exp(log_slope))

    with torch.no_grad():
        design = torch.cat([gates(grid), torch.ones(len(grid), 1, dtype=torch.float64)], 1)
        sol = _least_squares(design / target[:, None], torch.ones(len(grid), dtype=torch.float64))
    a = sol[:-1].clamp_min(1e-6).requires_grad_(True)
    d = sol[-1].clone().requires_grad_(True)
    opt = torch.optim.Adam([log_slope, log_centre, a, d], lr=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        rel = (gates(grid) @ a.abs() + d) / target - 1.0
        loss = (rel ** 2).mean() + 0.1 * (rel ** 4).mean()   # the worst points weigh more
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        slope = torch.exp(log_slope) / hi           # back to v: b v + c = -(v - m) s
        b = -slope
        c = slope * torch.exp(log_centre) * hi
        root = math.sqrt(hi)
        return b, c, a.abs() / root, float(d) / root, lo, hi


class QTokenNormFc(TokenNormBase):
    """LayerNorm over the last axis, per token, from FC layers, add, mul and a sigmoid table."""

    GRIDS = GRIDS

    def __init__(self, features: int, w_bits: int = 8, eps: float = 1e-5,
                 output_quant: LsqQuantizer | None = None, units: int = UNITS):
        super().__init__(features, w_bits, eps, output_quant)
        self.units = units
        self.register_buffer("logit_step", torch.tensor(LOGIT_RANGE / S8.qmax,
                                                        dtype=torch.float64))
        # the rsqrt network: logits b * v + c, gates sigmoid, r = a . gates + d; until
        # ``calibrate`` fits it, placeholders that export (a latency estimate needs only the
        # shapes)
        for name, value in (("b", -1.0), ("c", 0.0), ("a", 2.0 / units), ("d", 0.0)):
            shape = () if name == "d" else (units,)
            self.register_buffer(f"net_{name}", torch.full(shape, value, dtype=torch.float64))
        self.register_buffer("rsqrt_error", torch.tensor(0.0, dtype=torch.float64))  # 0: unfitted

    # -- the rsqrt network's values on the chip's grids
    def _a_int(self) -> tuple[torch.Tensor, float]:
        """a on its 8-bit grid (one scale for the row, shared by every output channel)."""
        a = self.net_a
        scale = max(float(a.abs().max()), 1e-12) / S8.qmax
        return torch.clamp(torch.round(a / scale), S8.qmin, S8.qmax), scale

    def _network(self, v: torch.Tensor, quantized: bool) -> torch.Tensor:
        """r for variances ``v`` [..., 1] (float64), as [..., 1]."""
        logits = v * self.net_b + self.net_c
        if not quantized:
            return (torch.sigmoid(logits) @ self.net_a)[..., None] + self.net_d
        logits = on_grid(logits, self._step("logit"), S8.qmin, S8.qmax)
        gates = on_grid(torch.sigmoid(logits), 1.0 / U8.qmax, 0, U8.qmax)
        a_int, a_scale = self._a_int()
        return (gates @ (a_int * a_scale))[..., None] + self.net_d

    # -- float and fake-quant
    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Fix the internal grids and fit the rsqrt network from the float input ``x``."""
        mean, centred, square, variance = self._statistics(x)
        variance = variance.flatten()
        with torch.enable_grad():
            b, c, a, d, lo, hi = fit_rsqrt(variance, self.eps, self.units)
        for name, value in (("b", b), ("c", c), ("a", a), ("d", d)):
            getattr(self, f"net_{name}").copy_(torch.as_tensor(value, dtype=torch.float64))
        grid = torch.logspace(math.log10(lo), math.log10(hi), 2000, dtype=torch.float64)
        self._refit_on_grids(grid)
        err = (self._network(grid[:, None], True).flatten() * torch.sqrt(grid + self.eps) - 1)
        self.rsqrt_error.fill_(float(err.abs().max()))
        if float(self.rsqrt_error) > RSQRT_TOLERANCE:
            warnings.warn(f"per-token LayerNorm over {self.features} features: the rsqrt "
                          f"network is within {float(self.rsqrt_error):.3f} of 1/sqrt over "
                          f"variances {lo:.3g}..{hi:.3g}, above {RSQRT_TOLERANCE}")
        r = self._network(variance[:, None], False).flatten()
        norm = centred * r[:, None]
        peak = {"neg_mean": mean.abs().max(), "centred": centred.abs().max(),
                "square": square.max(), "variance": variance.max(), "rsqrt": r.abs().max(),
                "norm": norm.abs().max()}
        self._cover(peak)

    def _refit_on_grids(self, grid: torch.Tensor) -> None:
        """a and d again by least squares (relative error) on the gates as the chip computes
        them (logits and gates on their 8-bit grids), then d once more after a is rounded
        onto its grid: the network the chip runs is the one fitted (2 % -> 0.3 % off 1/sqrt
        on a 100x range of variances)."""
        target = 1.0 / torch.sqrt(grid + self.eps)
        logits = on_grid(grid[:, None] * self.net_b + self.net_c, self._step("logit"),
                          S8.qmin, S8.qmax)
        gates = on_grid(torch.sigmoid(logits), 1.0 / U8.qmax, 0, U8.qmax)
        design = torch.cat([gates, torch.ones(len(grid), 1, dtype=torch.float64)], 1)
        sol = _least_squares(design / target[:, None], torch.ones(len(grid), dtype=torch.float64))
        self.net_a.copy_(sol[:-1])
        a_int, a_scale = self._a_int()
        self.net_a.copy_(a_int * a_scale)
        rest = (target - gates @ self.net_a) / target          # d minimises sum (rest - d/t)^2
        self.net_d.fill_(float((rest / target).sum() / (1.0 / target ** 2).sum()))

    def _normalise(self, x: torch.Tensor, quantized: bool = True) -> torch.Tensor:
        if float(self.rsqrt_error) == 0.0:     # its values would mislead whatever reads them
            raise RuntimeError(f"per-token LayerNorm over {self.features} features read before "
                               f"calibration (archnet.lowering.calibrate.calibrate_token_norms)")
        x = x.to(torch.float64) if not quantized else x
        if not quantized:
            c = x - x.mean(dim=-1, keepdim=True)
            v = (c * c).mean(dim=-1, keepdim=True)
            return c * self._network(v, False).to(c.dtype)
        s = {g: self._step(g) for g in GRIDS}
        m = on_grid(-x.mean(dim=-1, keepdim=True), s["neg_mean"])
        c = on_grid(x + m, s["centred"])
        sq = on_grid(c * c, s["square"], 0)
        v = on_grid(sq.mean(dim=-1, keepdim=True), s["variance"], 0)
        r = self._network(v.to(torch.float64), True).to(c.dtype)
        r = on_grid(r, s["rsqrt"])
        return on_grid(c * r, s["norm"])

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The form in float: LayerNorm with the fitted network for its rsqrt."""
        n = self._normalise(x, quantized=False).to(x.dtype)
        return self.affine.float_forward(self._rows(n)).reshape(x.shape)

    # -- the chip
    def _fc(self, b: ProgramBuilder, x: str, name: str, w_int, w_scale, bias, out_step: float,
            out_type: IntType, lo: int | None = None) -> str:
        """A fully connected layer of integer weights ``w_int`` [out, in] on per-channel steps
        ``w_scale`` (one per output channel), float ``bias``, requantized onto ``out_step``."""
        in_scale = float(b.tensors[x].scale[0])
        w_scale = [float(s) for s in w_scale]
        w = b.constant(f"{name}.weight", np.asarray(w_int, dtype=np.int64), S8, scale=w_scale,
                       axis=0)
        acc_scale = [in_scale * s for s in w_scale]
        bias_int = np.clip(np.round(np.asarray(bias, dtype=np.float64) / np.asarray(acc_scale)),
                           BIAS_TYPE.qmin, BIAS_TYPE.qmax).astype(np.int64)
        bias_t = b.constant(f"{name}.bias", bias_int, BIAS_TYPE, scale=acc_scale, axis=0)
        acc = b.node("fully_connected", [x, w, bias_t], f"{name}.acc", scale=acc_scale,
                     quant_axis=1 if len(acc_scale) > 1 else None)
        clamp = {} if lo is None else {"clamp_min": lo}
        return b.node("requantize", [acc], name, dtype=out_type, scale=out_step,
                      real_multiplier=[s / out_step for s in acc_scale], axis=1, **clamp)

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        d, k = self.features, self.units
        s = {g: self._step(g) for g in GRIDS}
        shape = b.tensors[x].shape
        x = b.node("reshape", [x], f"{name}.tokens", shape=[-1, d])    # the chip's FC: 2-D
        m = self._fc(b, x, f"{name}.neg_mean", -np.ones((d, d)), [1.0 / d] * d, np.zeros(d),
                     s["neg_mean"], S16)
        c = b.node("add", [x, m], f"{name}.centred", dtype=S16, scale=s["centred"])
        sq = b.node("mul", [c, c], f"{name}.square", dtype=S16, scale=s["square"])
        v = self._fc(b, sq, f"{name}.variance", np.ones((1, d)), [1.0 / d], np.zeros(1),
                     s["variance"], S16, lo=0)
        bw = self.net_b.numpy()
        logits = self._fc(b, v, f"{name}.logits", np.full((k, 1), -S8.qmax),
                          np.abs(bw) / S8.qmax, self.net_c.numpy(), self._step("logit"), S8)
        table = [int(np.clip(round(1.0 / (1.0 + math.exp(-q * self._step("logit"))) * U8.qmax),
                             0, U8.qmax)) for q in range(S8.qmin, S8.qmax + 1)]
        gates = b.node("lookup_table", [logits], f"{name}.gates", dtype=U8, scale=1.0 / U8.qmax,
                       table=table, function="sigmoid")
        a_int, a_scale = self._a_int()
        r = self._fc(b, gates, f"{name}.rsqrt", np.tile(a_int.numpy(), (d, 1)), [a_scale] * d,
                     np.full(d, float(self.net_d)), s["rsqrt"], S16)
        n = b.node("mul", [c, r], f"{name}.norm", dtype=S16, scale=s["norm"])
        return self._affine_export(b, n, name, shape)
