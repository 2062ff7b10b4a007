"""Pooling: max and average windows, global average pooling.

- ``max_pool2d.window_2x2``: a 3x3/2 max-pool as the chip's 2x2/2 (each 2x2 window is the
  lower-right part of the teacher's 3x3 one; the one approximation of the paper's ResNet pass),
  where it gives the teacher's output size.
- ``avg_pool2d.depthwise``: an average window as a depthwise conv with 1/(kh*kw) taps (exact
  without padding, or with padding counted).
- ``global_avg_pool.window``: global pooling as one average window over the whole map.
- ``global_avg_pool.fully_connected``: global pooling as a fully connected layer over the
  flattened map with 1/(H*W) weights per position (the paper's head; exact).
- ``global_avg_pool.window<k>_fully_connected``: a k x k/k average window tiling the map
  (padded evenly, the padding not counted) and a fully connected layer over the cells, each
  weighted by its share of the map (exact): one pooling op where a chip's fully connected
  layer cannot read the whole map, instead of a stack of halving convs.
"""

from __future__ import annotations

from archnet.capture.graph import TeacherNode
from archnet.rules.context import RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("max_pool2d", "avg_pool2d", "global_avg_pool")


def _window(op: str, a: dict, extra: dict | None = None) -> Step:
    ph, pw = a["padding"]
    return Step(op, ("in0",), {"kernel": list(a["kernel"]), "strides": list(a["stride"]),
                               "pads": [ph, pw, ph, pw], **(extra or {})})


def forms(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    a = node.attrs
    n, c, h, w = ctx.in_shapes[0]
    if node.op == "max_pool2d":
        if a["ceil_mode"] or a["dilation"] != [1, 1]:
            return []
        label = f"{a['kernel'][0]}x{a['kernel'][1]}/{a['stride'][0]} max-pool"
        out = [Form("max_pool2d.native", f"{label} as the teacher has it",
                    (_window("maxpool2d", a),), native=True)]
        if a["kernel"] != [2, 2]:
            out.append(Form("max_pool2d.window_2x2", f"{label} as a 2x2/2 max-pool (approximate)",
                            (Step("maxpool2d", ("in0",), {"kernel": [2, 2], "strides": [2, 2],
                                                           "pads": [0, 0, 0, 0]}),), exact=False))
        return out
    if node.op == "avg_pool2d":
        if a["ceil_mode"] or a.get("divisor") is not None:
            return []
        label = f"{a['kernel'][0]}x{a['kernel'][1]}/{a['stride'][0]} average pool"
        out = [Form("avg_pool2d.native", f"{label} as the teacher has it",
                    (_window("avgpool2d", a, {"count_include_pad": a["count_include_pad"]}),),
                    native=True)]
        ph, pw = a["padding"]
        exact = (ph, pw) == (0, 0) or a["count_include_pad"]
        out.append(Form("avg_pool2d.depthwise", f"{label} as a depthwise conv of 1/{a['kernel'][0] * a['kernel'][1]} taps",
                        (Step("conv2d", ("in0",), {"strides": list(a["stride"]), "pads": [ph, pw, ph, pw],
                                                   "groups": c}, weight=(c, 1, *a["kernel"])),),
                        exact=exact))
        return out
    views = () if a["keepdim"] else (Step("flatten", ("s0",), {"axis": 1}),)
    return [Form("global_avg_pool.native", f"global average pool over {h}x{w}",
                 (Step("global_avgpool2d", ("in0",)), *views), native=True),
            Form("global_avg_pool.window", f"global average pool as one {h}x{w} average window",
                 (Step("avgpool2d", ("in0",), {"kernel": [h, w], "strides": [h, w]}), *views)),
            *_fully_connected(c, h, w, a["keepdim"]), *_windows(c, h, w, a["keepdim"])]


def window_cover(size: int, k: int) -> tuple[int, int]:
    """(cells, padding per side) of a k/k window tiling ``size`` positions: every position in
    exactly one window, the padding split evenly (never counted)."""
    cells = -(-size // k)
    pad = -(-(cells * k - size) // 2)
    return cells, pad


def _windows(c: int, h: int, w: int, keepdim: bool) -> list[Form]:
    out = []
    for k in range(2, max(h, w)):
        (ch, ph), (cw, pw) = window_cover(h, k), window_cover(w, k)
        if ph >= k or pw >= k or (h + 2 * ph - k) // k + 1 != ch or (w + 2 * pw - k) // k + 1 != cw:
            continue
        steps = [Step("avgpool2d", ("in0",), {"kernel": [k, k], "strides": [k, k],
                                              "pads": [ph, pw, ph, pw]}),
                 Step("flatten", ("s0",), {"axis": 1}),
                 Step("fully_connected", ("s1",), weight=(c, c * ch * cw))]
        if keepdim:
            steps.append(Step("reshape", ("s2",), {"shape": [1, c, 1, 1]}))
        out.append(Form(f"global_avg_pool.window{k}_fully_connected",
                        f"global average pool as a {k}x{k}/{k} average window and a fully "
                        f"connected layer over the {c}x{ch}x{cw} cells", tuple(steps)))
    return out


def _fully_connected(c: int, h: int, w: int, keepdim: bool) -> list[Form]:
    """Global pooling as a fully connected layer over the flattened map with 1/(H*W) weights
    per position (the paper's head), after n = 0, 1 ... stride-2 3x3 convs that average 2x2
    cells (1/4 taps per channel, dense or depthwise) for chips whose fully connected layer
    cannot read the whole map (the paper's K210 head). Exact where the map halves evenly."""
    out, hh, ww, n = [], h, w, 0
    while True:
        for depthwise in (False, True) if n else (False,):
            steps = [Step("conv2d", ("in0" if i == 0 else f"s{i - 1}",),
                          {"strides": [2, 2], "pads": [1, 1, 1, 1],
                           **({"groups": c} if depthwise else {})},
                          weight=(c, 1 if depthwise else c, 3, 3))
                     for i in range(n)]
            steps += [Step("flatten", (f"s{n - 1}" if n else "in0",), {"axis": 1}),
                      Step("fully_connected", (f"s{n}",), weight=(c, c * hh * ww))]
            if keepdim:
                steps.append(Step("reshape", (f"s{n + 1}",), {"shape": [1, c, 1, 1]}))
            kind = "depthwise " if depthwise else ""
            name = f"halve{n}{'_dw' if depthwise else ''}_fully_connected" if n else \
                "fully_connected"
            out.append(Form(f"global_avg_pool.{name}",
                            f"global average pool as {n} 2x2-averaging {kind}3x3/2 convs and a "
                            f"fully connected layer over the {c}x{hh}x{ww} map" if n else
                            f"global average pool as a fully connected layer over the "
                            f"{c}x{h}x{w} map", tuple(steps),
                            exact=h % 2 ** n == 0 and w % 2 ** n == 0))
        if (hh, ww) == (1, 1):
            return out
        n, hh, ww = n + 1, (hh + 1) // 2, (ww + 1) // 2
