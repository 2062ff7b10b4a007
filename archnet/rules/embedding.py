"""Embedding tables: ``embedding.one_hot_fc``, the paper's replacement: the host writes each
token as a one-hot row (an integer encoding of the input, like an image's pixels) and one fully
connected layer whose columns are the table reads it (exact)."""

from __future__ import annotations

import math

from archnet.capture.graph import TeacherNode
from archnet.rules.context import RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("embedding",)


def forms(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    vocab, dim = ctx.graph.params[node.params["weight"]].shape
    rows = math.prod(ctx.in_shapes[0])
    return [Form("embedding.one_hot_fc",
                 f"embedding of {vocab} rows as one-hot x fully connected {vocab} -> {dim}",
                 (Step("fully_connected", ("in0",), weight=(dim, vocab)),
                  Step("reshape", ("s0",), {"shape": list(node.shape)})),
                 input_shapes=((rows, vocab),))]
