"""Activation functions.

- ReLU and clamps (ReLU6, hardtanh) fold into the producer's requantize bounds where it ends in
  a MAC, add or mul (``relu.fused``, ``clamp.fused``); else the chip's clamp op.
- Other functions (GELU, SiLU, sigmoid, tanh, hard-swish ...) run on the chip's activation unit
  (``<function>.native``: a lookup table holding that function, or the chip's composition of it;
  ``simulator.constraints.constraint_lut_function`` decides which); where it has none, the
  Arch-Net replacement: ReLU for the smooth rectifiers (learned, not exact), hard-sigmoid for
  sigmoid.
"""

from __future__ import annotations

from archnet.capture.graph import TeacherNode
from archnet.rules.context import RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("relu", "clamp", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
          "leaky_relu")
_RECTIFIERS = ("gelu", "silu", "hardswish", "leaky_relu")


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
    if fn in _RECTIFIERS:
        out += _clamp_forms(f"{fn}.relu", f"{fn} replaced by ReLU (learned)", ctx, False, False)
    if fn == "sigmoid":
        out.append(Form("sigmoid.hardsigmoid", "sigmoid replaced by hard-sigmoid (learned)",
                        (Step("lookup_table", ("in0",), {"function": "hardsigmoid"}),),
                        exact=False))
    return out
