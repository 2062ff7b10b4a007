"""Normalisation layers the capture passes could not fold away.

- ``batch_norm.depthwise_1x1``: a batch-norm (per-channel affine) as a depthwise 1x1 conv
  (exact); ``batch_norm.dense_1x1`` where the chip has no depthwise conv (diagonal weights).
- ``layer_norm.fixed_affine``: the paper's LayerNorm replacement: a per-channel affine with
  fixed statistics (calibrated on the data, LayerNorm's own scale and shift kept, then
  learned), as a depthwise 1x1 conv over the token rows. Per-token forms from chip ops are
  issue 17's.
"""

from __future__ import annotations

import math

from archnet.capture.graph import TeacherNode
from archnet.rules.context import RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("batch_norm", "layer_norm")


def forms(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    x = ctx.in_shapes[0]
    if node.op == "layer_norm":
        d, rows = x[-1], math.prod(x[:-1])
        if list(node.attrs["normalized_shape"]) != [d]:
            return []
        return [Form("layer_norm.fixed_affine",
                     "LayerNorm as a per-channel affine with fixed statistics (a depthwise 1x1 "
                     "conv over the token rows)",
                     (Step("reshape", ("in0",), {"shape": [rows, d, 1, 1]}),
                      Step("conv2d", ("s0",), {"groups": d}, weight=(d, 1, 1, 1)),
                      Step("reshape", ("s1",), {"shape": list(node.shape)})), exact=False)]
    c = x[1]
    if len(x) != 4:
        return [Form("batch_norm.fully_connected", "batch-norm as a diagonal fully connected layer",
                     (Step("fully_connected", ("in0",), weight=(c, c)),))]
    return [Form("batch_norm.depthwise_1x1", "batch-norm as a depthwise 1x1 conv",
                 (Step("conv2d", ("in0",), {"groups": c}, weight=(c, 1, 1, 1)),)),
            Form("batch_norm.dense_1x1", "batch-norm as a 1x1 conv with diagonal weights",
                 (Step("conv2d", ("in0",), {}, weight=(c, c, 1, 1)),))]
