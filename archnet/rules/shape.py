"""Views and data movement: flatten, reshape, transpose; they run where the chip marks them
supported (a flatten or reshape only relabels a tensor; a transpose moves it). Selecting one
token of a [N, T, D] sequence (a ViT's class token, ``x[:, 0]``), which no chip has a slice op
for, is a fully connected layer over the flattened tokens whose 0/1 weights pick that token's
features (``select.fully_connected``, exact)."""

from __future__ import annotations

from archnet.capture.graph import TeacherNode
from archnet.rules.context import RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("flatten", "reshape", "transpose", "select")


def forms(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    x = ctx.in_shapes[0]
    if node.op == "flatten":
        a = node.attrs
        if a["end"] != len(x) - 1 or a["start"] != 1:   # the chip's flatten gives [N, rest]
            return [Form("flatten.reshape", f"flatten of axes {a['start']}..{a['end']} as a reshape",
                         (Step("reshape", ("in0",), {"shape": list(node.shape)}),), native=True)]
        return [Form("flatten.native", f"flatten from axis {a['start']}",
                     (Step("flatten", ("in0",), {"axis": a["start"]}),), native=True)]
    if node.op == "select":
        if len(x) != 3 or node.attrs["dim"] not in (1, -2):
            return []
        tokens, features = x[1], x[2]
        return [Form("select.fully_connected",
                     f"token {node.attrs['index']} of {tokens} as a fully connected layer over "
                     f"the flattened tokens (0/1 weights)",
                     (Step("reshape", ("in0",), {"shape": [1, tokens * features]}),
                      Step("fully_connected", ("s0",), weight=(features, tokens * features))))]
    if node.op == "reshape":
        return [Form("reshape.native", f"reshape to {list(node.shape)}",
                     (Step("reshape", ("in0",), {"shape": list(node.shape)}),), native=True)]
    perm = list(node.attrs["perm"])
    if perm == sorted(perm):
        return [Form("transpose.identity", "transpose that moves nothing", ())]
    return [Form("transpose.native", f"transpose {perm}",
                 (Step("transpose", ("in0",), {"perm": perm}),), native=True)]
