"""Normalisation layers the capture passes could not fold away.

- ``batch_norm.depthwise_1x1``: a batch-norm (per-channel affine) as a depthwise 1x1 conv
  (exact); ``batch_norm.dense_1x1`` where the chip has no depthwise conv (diagonal weights).
- ``layer_norm.per_token``: LayerNorm itself, per token, from the chip's ops at 16 bits (the
  row's mean, the centred values, their squares, the variance on two grids, two interpolated
  rsqrt tables and their minimum, the product; ``archnet.quant.norm``), then its scale and shift
  as a depthwise 1x1. Exact in float, so it wins wherever the chip runs every piece (Ethos-U55
  and U85: mean, sub, minimum, broadcast mul, interpolated 16-bit tables, 16-bit activations).
- ``layer_norm.fixed_affine``: the paper's LayerNorm replacement: a per-channel affine with
  fixed statistics (calibrated on the data, LayerNorm's own scale and shift kept, then
  learned), as a depthwise 1x1 conv over the token rows.
- ``layer_norm.folded_affine``: the same affine where LayerNorm reads a residual add one of
  whose operands a fully connected layer writes (a Transformer's sublayer output): that layer
  takes the affine's per-channel scale and shift, and the depthwise 1x1 scales the skip operand
  instead. The add then writes LayerNorm's output itself, so the residual stream and the
  sublayer's output live on the normalised scale, not on the raw sum whose outlier channels
  (hundreds in MiniLM's FFN output) a per-tensor grid cannot hold. Same function, same cost;
  preferred where it fits.
- ``layer_norm.folded_embedding``: the same affine where LayerNorm reads an embedding sum (a
  one-hot fully connected layer plus constant tables: positions, token types): the table's
  columns and the constants take it, and the last add writes LayerNorm's output, so no grid
  holds the raw sum. ``fit_layer_norms`` then refits each seen token's column and each
  position's row to the teacher's LayerNorm output (the least-squares additive fit: a token
  always at one position, as [CLS] is, comes out exact). No op of its own.
"""

from __future__ import annotations

import math

from archnet.capture.graph import TeacherNode
from archnet.quant.norm_fc import RSQRT_TOLERANCE
from archnet.quant.norm_fc import UNITS as FC_UNITS
from archnet.rules.context import RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("batch_norm", "layer_norm")


_VIEW_OPS = ("reshape", "flatten")


def residual_writer(node: TeacherNode, ctx: RuleContext) -> int | None:
    """Which operand of the add that ``node`` reads is written (through views) by a fully
    connected layer read by nothing else; None if the add is not the chip's add of two
    activations or has no such operand."""
    g = ctx.graph
    if ctx.producer_ops[:1] != ("add",) or not ctx.read_once(node.inputs[0]):
        return None
    add = g.node(node.inputs[0])
    if add.op != "add" or len(add.inputs) != 2 or "scalar" in add.attrs or "other" in add.params:
        return None
    for k, value in enumerate(add.inputs):
        while ctx.read_once(value) and g.node(value).op in _VIEW_OPS:
            value = g.node(value).inputs[0]
        if ctx.read_once(value) and g.node(value).op == "linear":
            return k
    return None


def embedding_sum(graph, value: str, read_once) -> TeacherNode | None:
    """The embedding node whose one-hot layer starts ``value`` when ``value`` is a chain of adds
    of constant operands (each read only by the next, ``read_once``) over that embedding's
    output (through views); else None."""
    seen_add = False
    while read_once(value):
        node = graph.node(value)
        if node.op == "add" and "other" in node.params and "scalar" not in node.attrs:
            value, seen_add = node.inputs[0], True
        elif node.op in _VIEW_OPS:
            value = node.inputs[0]
        elif node.op == "embedding":
            return node if seen_add else None
        else:
            return None
    return None


INTERNAL_BITS = 16


def _per_token_steps(x: tuple[int, ...], out_shape) -> tuple[Step, ...]:
    """The simulator ops ``QTokenNorm.export`` writes, in its order (see archnet.quant.norm)."""
    d, rows = x[-1], math.prod(x[:-1])
    wide, row = INTERNAL_BITS, {"axes": [-1]}
    table = {"interpolated": True, "function": "rsqrt"}
    narrow = {"real_multiplier": [1.0 / 128]}
    return (Step("mean", ("in0",), row, bits=wide),                        # s0
            Step("sub", ("in0", "s0"), bits=wide),                         # s1 centred
            Step("mul", ("s1", "s1"), bits=wide),                          # s2 squares
            Step("mean", ("s2",), row, bits=wide),                         # s3 variance
            Step("lookup_table", ("s3",), table, bits=32),                 # s4
            Step("requantize", ("s4",), narrow, bits=wide),                # s5 its rsqrt
            Step("mul", ("s1", "s1"), bits=wide),                          # s6 on the fine grids
            Step("mean", ("s6",), row, bits=wide),                         # s7
            Step("lookup_table", ("s7",), table, bits=32),                 # s8
            Step("requantize", ("s8",), narrow, bits=wide),                # s9 its rsqrt
            Step("minimum", ("s5", "s9"), bits=wide),                      # s10 rsqrt
            Step("mul", ("s1", "s10"), bits=wide),                         # s11 normalised
            Step("reshape", ("s11",), {"shape": [rows, d, 1, 1]}),
            Step("conv2d", ("s12",), {"groups": d}, weight=(d, 1, 1, 1)),  # scale and shift
            Step("reshape", ("s13",), {"shape": list(out_shape)}))


def _per_token_fc_steps(x: tuple[int, ...], out_shape) -> tuple[Step, ...]:
    """The simulator ops ``QTokenNormFc.export`` writes, in its order (archnet.quant.norm_fc)."""
    d, rows, k = x[-1], math.prod(x[:-1]), FC_UNITS
    wide = INTERNAL_BITS
    return (Step("reshape", ("in0",), {"shape": [rows, d]}),                  # s0 token rows
            Step("fully_connected", ("s0",), weight=(d, d), bits=wide),       # s1 -mean
            Step("add", ("s0", "s1"), bits=wide),                             # s2 centred
            Step("mul", ("s2", "s2"), bits=wide),                             # s3 squares
            Step("fully_connected", ("s3",), weight=(1, d), bits=wide),       # s4 variance
            Step("fully_connected", ("s4",), weight=(k, 1), bits=8),          # s5 logits
            Step("lookup_table", ("s5",), {"function": "sigmoid"}, bits=8),   # s6 gates
            Step("fully_connected", ("s6",), weight=(d, k), bits=wide),       # s7 rsqrt
            Step("mul", ("s2", "s7"), bits=wide),                             # s8 normalised
            Step("reshape", ("s8",), {"shape": [rows, d, 1, 1]}),
            Step("conv2d", ("s9",), {"groups": d}, weight=(d, 1, 1, 1)),     # scale and shift
            Step("reshape", ("s10",), {"shape": list(out_shape)}))


def forms(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    x = ctx.in_shapes[0]
    if node.op == "layer_norm" and ctx.producer_ops[:1] == ("add",) and \
            list(node.attrs["normalized_shape"]) == [x[-1]] and \
            embedding_sum(ctx.graph, node.inputs[0], ctx.read_once) is not None:
        return [Form("layer_norm.folded_embedding",
                     "LayerNorm of an embedding sum folded into the table's columns and the "
                     "constant rows (fixed statistics, then each seen token's column and each "
                     "position's row fitted to the teacher); the last add writes its output",
                     (), exact=False)]
    if node.op == "layer_norm":
        d, rows = x[-1], math.prod(x[:-1])
        if list(node.attrs["normalized_shape"]) != [d]:
            return []
        steps = (Step("reshape", ("in0",), {"shape": [rows, d, 1, 1]}),
                 Step("conv2d", ("s0",), {"groups": d}, weight=(d, 1, 1, 1)),
                 Step("reshape", ("s1",), {"shape": list(node.shape)}))
        per_token = Form("layer_norm.per_token",
                         "LayerNorm per token from chip ops at 16 bits (mean, sub, square, "
                         "mean, interpolated rsqrt tables, multiply), then its scale and shift "
                         "as a depthwise 1x1", _per_token_steps(x, node.shape))
        per_token_fc = Form("layer_norm.per_token_fc",
                            "LayerNorm per token from fully connected layers, add, mul and a "
                            "sigmoid table (the mean and the variance as 1/D layers, rsqrt as "
                            "a fitted sigmoid network whose last layer broadcasts it), then "
                            "its scale and shift as a depthwise 1x1",
                            _per_token_fc_steps(x, node.shape), exact=False,
                            max_error=RSQRT_TOLERANCE,
                            max_error_is="relative, of its 1/sqrt on the chip's grids")
        folded = [Form("layer_norm.folded_affine",
                       "LayerNorm as a per-channel affine with fixed statistics, folded into the "
                       "residual add before it (the fully connected layer writing one operand "
                       "takes scale and shift; a depthwise 1x1 scales the skip)", steps,
                       exact=False)] if residual_writer(node, ctx) is not None else []
        return [per_token, per_token_fc, *folded, Form("layer_norm.fixed_affine",
                              "LayerNorm as a per-channel affine with fixed statistics (a "
                              "depthwise 1x1 conv over the token rows)", steps, exact=False)]
    c = x[1]
    if len(x) != 4:
        return [Form("batch_norm.fully_connected", "batch-norm as a diagonal fully connected layer",
                     (Step("fully_connected", ("in0",), weight=(c, c)),))]
    return [Form("batch_norm.depthwise_1x1", "batch-norm as a depthwise 1x1 conv",
                 (Step("conv2d", ("in0",), {"groups": c}, weight=(c, 1, 1, 1)),)),
            Form("batch_norm.dense_1x1", "batch-norm as a 1x1 conv with diagonal weights",
                 (Step("conv2d", ("in0",), {}, weight=(c, c, 1, 1)),))]
