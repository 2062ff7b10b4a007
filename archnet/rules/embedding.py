"""Embedding tables, three ways, all exact; the cost model chooses:

- ``embedding.gather``: the token ids are the input and a gather looks each token's row up: the
  chip's own where its profile has one (Ethos-U85: a DMA op, only the rows read), else the
  host's as it writes the input (boundary work, as quantizing an image is; only the rows cross
  the link);
- ``embedding.one_hot_fc``, the paper's replacement: the host writes each token as a one-hot row
  (an integer encoding of the input, like an image's pixels) and one fully connected layer
  whose columns are the table reads it: the whole table streams through the MAC array on every
  inference (MiniLM's 11.7 MB, 23 ms from the Ethos-U55's flash)."""

from __future__ import annotations

import math

from archnet.capture.graph import TeacherNode
from archnet.rules.context import RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("embedding",)


def forms(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    vocab, dim = ctx.graph.params[node.params["weight"]].shape
    rows = math.prod(ctx.in_shapes[0])
    gather = Form("embedding.gather",
                  f"embedding of {vocab} rows as a gather of each token's row (the chip's, or "
                  f"the host's at the input)", (Step("gather", ("c0", "in0")),),
                  constants=((vocab, dim),))
    return [gather, Form("embedding.one_hot_fc",
                 f"embedding of {vocab} rows as one-hot x fully connected {vocab} -> {dim}",
                 (Step("fully_connected", ("in0",), weight=(dim, vocab)),
                  Step("reshape", ("s0",), {"shape": list(node.shape)})),
                 input_shapes=((rows, vocab),))]
