"""Attention's operators: matmul of two activations and softmax, on the chip's own ops.

- ``matmul.native``: the chip's matmul of two activations (scores, context);
  ``matmul.fully_connected`` where one operand is a constant (a weight).
- ``softmax.native``: the chip's integer softmax (an exp table and an integer division), with
  a key mask operand where the model masks padding (``archnet.capture.masks``).
"""

from __future__ import annotations

import math

from archnet.capture.graph import TeacherNode
from archnet.rules.context import RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("matmul", "softmax")


def forms(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    if node.op == "softmax" and len(ctx.in_shapes) == 2:    # with a key mask [batch, keys]
        x, (n, keys) = ctx.in_shapes
        return [Form("softmax.native", f"softmax over axis {node.attrs['dim']}, masked keys "
                     f"skipped", (Step("reshape", ("in1",),
                                       {"shape": [n, *([1] * (len(x) - 2)), keys]}),
                                  Step("softmax", ("in0", "s0"), {"axis": node.attrs["dim"]})),
                     native=True)]
    if node.op == "softmax":
        return [Form("softmax.native", f"softmax over axis {node.attrs['dim']}",
                     (Step("softmax", ("in0",), {"axis": node.attrs["dim"]}),), native=True)]
    if "other" in node.params:
        x = ctx.in_shapes[0]
        k, m = ctx.graph.params[node.params["other"]].shape[-2:]
        rows = math.prod(x[:-1])
        return [Form("matmul.fully_connected", f"matmul by a constant {k}x{m} as fully connected",
                     (Step("reshape", ("in0",), {"shape": [rows, k]}),
                      Step("fully_connected", ("s0",), weight=(m, k)),
                      Step("reshape", ("s1",), {"shape": list(node.shape)})), native=True)]
    return [Form("matmul.native", "matmul of two activations", (Step("matmul", ("in0", "in1")),),
                 native=True)]
