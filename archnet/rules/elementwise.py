"""Elementwise add and mul, and concat.

- ``add.native``: the chip's add of two activations (or of a constant, such as a position
  table).
- ``add.concat_conv``: the paper's residual block: concat + a 3x3 conv whose centre taps sum
  the two halves (exact at initialisation, then trained); ``add.concat_fc`` for token rows.
- ``add.merge_into_conv``: where one operand is written by a stride-1 'same' conv that nothing
  else reads, that conv reads the concat of its own input and the other operand, with an
  identity in its centre taps for the latter: the residual merge costs no layer of its own
  (exact).
- ``add.requantize_offset`` / ``mul.requantize_scale``: adding or multiplying by one number
  folds into the producer's requantize (its zero point or multiplier), where the producer's
  output is read by nothing else (exact).
- ``mul.native``: the chip's elementwise mul (squeeze-and-excitation gates: a per-channel
  operand broadcast over the map).
"""

from __future__ import annotations

import math

from archnet.capture.graph import TeacherNode
from archnet.rules.context import RESCALE_FOLDS_INTO, RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("add", "mul", "cat")


def forms(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    if node.op == "cat":
        return _cat(node, ctx)
    shape = ctx.in_shapes[0]
    if "scalar" in node.attrs:
        fold = "requantize_offset" if node.op == "add" else "requantize_scale"
        # the teacher's op, computed by its producer's requantize: kept, at no cost
        out = [Form(f"{node.op}.{fold}", f"{node.op} {node.attrs['scalar']:g} folded into the "
                    f"producer's requantize", (), native=True)] \
            if ctx.sole_reader_of(RESCALE_FOLDS_INTO) else []
        return [*out, Form(f"{node.op}.native", f"{node.op} of one constant",
                           (Step(node.op, ("in0", "c0")),), native=True, constants=((1,),))]
    if "other" in node.params:     # a constant tensor operand
        other = tuple(ctx.graph.params[node.params["other"]].shape)
        other = other if len(other) == len(shape) else (1,) * (len(shape) - len(other)) + other
        return [Form(f"{node.op}.native", f"{node.op} of a constant {list(other)} tensor",
                     (Step(node.op, ("in0", "c0")),), native=True, constants=(other,))]
    a, b = ("in0", "in1")
    if node.op == "mul":
        if math.prod(ctx.in_shapes[0]) < math.prod(ctx.in_shapes[1]):
            a, b = b, a      # the simulator's mul broadcasts its second operand
        return [Form("mul.native", "elementwise mul" + (" (gate broadcast per channel)"
                                                       if ctx.in_shapes[0] != ctx.in_shapes[1] else ""),
                     (Step("mul", (a, b)),), native=True)]
    out = [Form("add.native", "elementwise add of two activations", (Step("add", (a, b)),),
                native=True)]
    if ctx.in_shapes[0] != ctx.in_shapes[1]:
        return out
    if len(shape) == 4:
        c = shape[1]
        out += _merges(ctx, c)
        out.append(Form("add.concat_conv_1x1", "add as concat + a 1x1 conv",
                        (Step("concat", (a, b), {"axis": 1}),
                         Step("conv2d", ("s0",), {}, weight=(c, 2 * c, 1, 1)))))
        out.append(Form("add.concat_conv", "add as concat + a 3x3 conv (the paper's residual merge)",
                        (Step("concat", (a, b), {"axis": 1}),
                         Step("conv2d", ("s0",), {"pads": [1, 1, 1, 1]}, weight=(c, 2 * c, 3, 3)))))
    else:
        d, rows = shape[-1], math.prod(shape[:-1])
        out.append(Form("add.concat_fc", "add as concat + a fully connected merge",
                        (Step("concat", (a, b), {"axis": len(shape) - 1}),
                         Step("reshape", ("s0",), {"shape": [rows, 2 * d]}),
                         Step("fully_connected", ("s1",), weight=(d, 2 * d)),
                         Step("reshape", ("s2",), {"shape": list(shape)}))))
    return out


def _merges(ctx: RuleContext, c: int) -> list[Form]:
    out = []
    for k, chain in enumerate(ctx.absorbable):
        if chain is None or len(chain) != 1 or chain[0][1].rule != "conv2d.native":
            continue
        conv = chain[0][0]
        a = conv.attrs
        kh, kw = ctx.graph.params[conv.params["weight"]].shape[2:]
        same = kh == kw and kh % 2 == 1 and tuple(a["padding"]) == (kh // 2, kw // 2)
        if not same or tuple(a["stride"]) != (1, 1) or tuple(a["dilation"]) != (1, 1) or \
                a["groups"] != 1:
            continue
        cin = ctx.graph.shape(conv.inputs[0])[1]
        pad = kh // 2
        out.append(Form("add.merge_into_conv",
                        f"add merged into the {kh}x{kw} conv writing operand {k}: it reads "
                        f"its input concatenated with the other operand",
                        (Step("concat", (f"in{k}", f"in{1 - k}"), {"axis": 1}),
                         Step("conv2d", ("s0",), {"pads": [pad] * 4},
                              weight=(c, cin + c, kh, kw))), absorbs=k))
    return out


def _cat(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    consts = node.attrs.get("constants_at", [])
    order, ins, cs = [], iter(range(len(ctx.in_shapes))), []
    for i in range(len(ctx.in_shapes) + len(consts)):
        if i in consts:
            shape = tuple(ctx.graph.params[node.params[f"operand{i}"]].shape)
            cs.append((1, *shape[1:]))
            order.append(f"c{len(cs) - 1}")
        else:
            order.append(f"in{next(ins)}")
    return [Form("cat.native", f"concat of {len(order)} tensors on axis {node.attrs['dim']}",
                 (Step("concat", tuple(order), {"axis": node.attrs["dim"]}),), native=True,
                 constants=tuple(cs))]
