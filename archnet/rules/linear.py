"""Fully connected layers, on any number of leading axes (tokens are rows).

- ``linear.native``: the chip's fully connected op (rows flattened to [N, K] and back).
- ``linear.conv_1x1``: a fully connected layer as a 1x1 conv over a [N, K, 1, 1] map, where the
  chip has convs but no fully connected op (exact).
"""

from __future__ import annotations

import math

from archnet.capture.graph import TeacherNode
from archnet.rules.context import RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("linear",)


def forms(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    x = ctx.in_shapes[0]
    k, m = x[-1], node.shape[-1]
    rows = math.prod(x[:-1])
    pre = (Step("reshape", ("in0",), {"shape": [rows, k]}),) if len(x) != 2 else ()
    src = "s0" if pre else "in0"
    nxt = f"s{len(pre)}"
    post = (Step("reshape", (nxt,), {"shape": list(node.shape)}),) if len(x) != 2 else ()
    native = Form("linear.native", f"fully connected {k} -> {m}" + (f" on {rows} rows" if pre else ""),
                  (*pre, Step("fully_connected", (src,), weight=(m, k)), *post), native=True)
    conv = Form("linear.conv_1x1", f"fully connected {k} -> {m} as a 1x1 conv",
                (Step("reshape", ("in0",), {"shape": [rows, k, 1, 1]}),
                 Step("conv2d", ("s0",), {}, weight=(m, k, 1, 1)),
                 Step("reshape", ("s1",), {"shape": list(node.shape)})))
    return [native, conv]
