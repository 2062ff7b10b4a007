"""Activation functions.

- ReLU and clamps (ReLU6, hardtanh) fold into the producer's requantize bounds where it ends in
  a MAC, add or mul (``relu.fused``, ``clamp.fused``); else the chip's clamp op.
- Other functions (GELU, SiLU, sigmoid, tanh, hard-swish ...) run on the chip's activation unit
  (``<function>.native``: a lookup table holding that function, or the chip's composition of it;
  ``simulator.constraints.constraint_lut_function`` decides which); where it has none, the
  Arch-Net replacement: ReLU for the smooth rectifiers (learned, not exact), hard-sigmoid for
  sigmoid. GELU also has ``gelu.silu``: x * sigmoid(1.702 x), which is SiLU of 1.702 x over
  1.702, one table of SiLU on grids relabelled 1.702 times (within 0.021 of GELU in float, so
  it beats ReLU wherever the chip's table unit holds SiLU or composes it).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from archnet.capture.graph import TeacherNode
from archnet.rules.context import RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("relu", "clamp", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
          "leaky_relu")
_RECTIFIERS = ("gelu", "silu", "hardswish", "leaky_relu")
# GELU(x) ~ x * sigmoid(SIGMOID_GELU_GAIN * x) (Hendrycks and Gimpel 2016, section 2)
SIGMOID_GELU_GAIN = 1.702


@functools.cache
def sigmoid_gelu_error() -> float:
    """The largest |GELU(x) - x * sigmoid(1.702 x)|: 0.0203, at |x| near 2.27 (the two meet at
    0 and at large |x|), on a grid fine enough for three digits."""
    x = np.linspace(-12.0, 12.0, 24001)
    gelu = 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    return float(np.abs(gelu - x / (1.0 + np.exp(-SIGMOID_GELU_GAIN * x))).max())


def _clamp_forms(op: str, label: str, ctx: RuleContext, native: bool, exact: bool = True
                 ) -> list[Form]:
    if ctx.clamp_fuses():
        return [Form(f"{op}.fused", f"{label} as the producer's requantize bounds", (),
                     native=native, exact=exact)]
    return [Form(f"{op}.clamp", f"{label} as the chip's clamp",
                 (Step("clamp", ("in0",), {"min": 0, "max": 127}),), native=native, exact=exact)]


def forms(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    if node.op == "relu":
        return _clamp_forms("relu", "ReLU", ctx, True)
    if node.op == "clamp":
        lo, hi = node.attrs["min"], node.attrs["max"]
        return _clamp_forms("clamp", f"clamp [{lo}, {hi}]", ctx, True)
    fn = node.op
    out = [Form(f"{fn}.native", f"{fn} on the chip's activation unit",
                (Step("lookup_table", ("in0",), {"function": fn}),), native=True)]
    if fn == "gelu":
        out.append(Form("gelu.silu", f"GELU as x * sigmoid({SIGMOID_GELU_GAIN} x): SiLU on grids "
                                     f"relabelled {SIGMOID_GELU_GAIN} times",
                        (Step("lookup_table", ("in0",), {"function": "silu"},
                              gain=SIGMOID_GELU_GAIN),),
                        exact=False, max_error=round(sigmoid_gelu_error(), 4)))
    if fn in _RECTIFIERS:
        out += _clamp_forms(f"{fn}.relu", f"{fn} replaced by ReLU (learned)", ctx, False, False)
    if fn == "sigmoid":
        out.append(Form("sigmoid.hardsigmoid", "sigmoid replaced by hard-sigmoid (learned)",
                        (Step("lookup_table", ("in0",), {"function": "hardsigmoid"}),),
                        exact=False))
    return out
