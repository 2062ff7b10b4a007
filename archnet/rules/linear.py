"""Fully connected layers, on any number of leading axes (tokens are rows).

- ``linear.native``: the chip's fully connected op (rows flattened to [N, K] and back).
- ``linear.conv_1x1``: a fully connected layer as a 1x1 conv over a [N, K, 1, 1] map, where the
  chip has convs but no fully connected op (exact).
- ``linear.global_pool_head``: the layer and the global pool before it, where the chip computes
  that pool as a fully connected layer, as one fully connected layer (exact).
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
    return [native, *_pool_head(node, ctx, m), conv]


def _pool_head(node: TeacherNode, ctx: RuleContext, m: int) -> list[Form]:
    """``linear.global_pool_head``: where the layer reads (through views) a global pool that
    the chip computes as a fully connected layer, one fully connected layer does both, its
    weights the product of the two (the paper's head: exact, one layer fewer)."""
    chain = ctx.absorbable[0] if ctx.absorbable else None
    if chain is None or chain[-1][0].op != "global_avg_pool" or len(ctx.in_shapes[0]) != 2:
        return []
    pool = chain[-1][1]
    steps = list(pool.steps[:-1] if pool.steps[-1].op == "reshape" else pool.steps)
    fc = steps[-1]
    steps[-1] = Step("fully_connected", fc.inputs, fc.attrs, weight=(m, fc.weight[1]))
    return [Form("linear.global_pool_head",
                 f"fully connected {fc.weight[0]} -> {m} composed with the global pool's "
                 f"{pool.rule.split('.')[1]} (one layer)", tuple(steps), native=True,
                 exact=pool.exact, absorbs=0)]
