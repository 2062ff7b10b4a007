"""Elementwise add and mul, and concat.

- ``add.native``: the chip's add of two activations (or of a constant, such as a position
  table).
- ``add.concat_conv``: the paper's residual block: concat + a 3x3 conv whose centre taps sum
  the two halves (exact at initialisation, then trained); ``add.concat_fc`` for token rows.
- ``add.merge_into_conv``: where one operand is written by a stride-1 'same' conv that nothing
  else reads, that conv reads the concat of its own input and the other operand, with an
  identity in its centre taps for the latter: the residual merge costs no layer of its own
  (exact).
- ``add.carry_through_block``: an inverted residual (1x1 expand, activation, depthwise kxk,
  activation, 1x1 projection, plus the block's input): the block's input travels inside it
  as two extra channels per channel, ``relu(x / s)`` and ``relu(-x / s)``, through the expand
  and the depthwise conv (identity taps), and the projection adds them back, times ``s``: no
  layer and no concat of its own (the add costs a little width). Exact on every input whose
  |x| stays under ``s`` times the activation's upper bound (ReLU6's 6; a plain ReLU has none):
  ``s`` is fitted to the teacher's values with a margin (``archnet.lowering.fits.
  fit_carried_residuals``).
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
        out += _carries(node, ctx, c)
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


def inverted_residual(nodes, x: str):
    """(expand, activation, depthwise, activation, projection) when ``nodes`` (producers,
    nearest first) begin with an inverted residual whose expand reads ``x``; else None."""
    if len(nodes) < 5:
        return None
    proj, act2, dw, act1, expand = nodes[:5]
    if expand.inputs[0] != x or any(n.op != "conv2d" for n in (proj, dw, expand)) or \
            any(a.op not in ("relu", "clamp") for a in (act1, act2)):
        return None
    for conv, depthwise in ((expand, False), (dw, True), (proj, False)):
        a = conv.attrs
        if tuple(a["stride"]) != (1, 1) or tuple(a["dilation"]) != (1, 1) or \
                depthwise != (a["groups"] > 1):
            return None
    if dw.attrs["groups"] != dw.shape[1] or dw.shape[1] != expand.shape[1]:
        return None
    for act in (act1, act2):
        if act.op == "clamp" and (act.attrs["min"] is None or float(act.attrs["min"]) != 0.0):
            return None
    return expand, act1, dw, act2, proj


def _carries(node: TeacherNode, ctx: RuleContext, c: int) -> list[Form]:
    out = []
    for k in (0, 1):
        if k >= len(ctx.branches):
            continue
        branch = ctx.branches[k][:5]
        found = inverted_residual([n for n, _ in branch], node.inputs[1 - k])
        if found is None or any(f.rule != "conv2d.native" for n, f in branch if n.op == "conv2d"):
            continue
        expand, act1, dw, act2, proj = found
        g = ctx.graph
        we, wd = g.params[expand.params["weight"]].shape, g.params[dw.params["weight"]].shape
        wp = g.params[proj.params["weight"]].shape
        if tuple(we[2:]) != (1, 1) or tuple(wp[2:]) != (1, 1) or wd[2] != wd[3] or wd[2] % 2 == 0 \
                or tuple(dw.attrs["padding"]) != (wd[2] // 2, wd[3] // 2):
            continue
        e = we[0] + 2 * c
        pad = wd[2] // 2
        out.append(Form("add.carry_through_block",
                        f"add carried through the inverted residual writing operand {k}: its "
                        f"input rides along as {2 * c} extra channels",
                        (Step("conv2d", (f"in{1 - k}",), {}, weight=(e, c, 1, 1), relu=True),
                         Step("conv2d", ("s0",), {"pads": [pad] * 4, "groups": e},
                              weight=(e, 1, wd[2], wd[3]), relu=True),
                         Step("conv2d", ("s1",), {}, weight=(c, e, 1, 1))),
                        absorbs=k, absorbs_depth=5))
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
