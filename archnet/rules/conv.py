"""Convolutions: kept as the teacher has them where the chip runs them; else the Arch-Net forms.

- ``centre_tap_3x3``: a 1x1 conv as a 3x3 conv with the 1x1 weights in the centre tap (exact).
- ``shift_3x3``: a kxk conv (odd k, 'same' padding, stride 1 or 2) as 3x3 convs: shift layers
  copy every input channel at every offset of a 3x3 window, and the last 3x3 applies the
  teacher's kernel to them (exact; ``archnet.lowering.transfer``).
- ``stack_3x3``: any larger kernel as a stack of 3x3 convs with the teacher's stride and
  groups, covering its receptive field (the paper's stem; learned, not exact).
- ``dense``: a depthwise or grouped conv as a dense conv with block-diagonal weights (exact).
- ``split_out<n>``: a conv writing more channels than the chip's conv can, as n convs and a
  concat (exact).
- ``patchify_<s>x<s>[_x<n>]``: a patch-embedding conv (kernel = stride = k, no padding) whose
  stride the chip lacks, as n s x s/s convs that copy every input channel of each s x s cell
  into channels (space to depth, exact: the copies keep the input's grid) and an r x r/r conv,
  k = s**n * r, with the teacher's weights rearranged (exact).
"""

from __future__ import annotations

from archnet.capture.graph import TeacherNode
from archnet.rules.context import RuleContext
from archnet.rules.forms import Form, Step

FAMILY = ("conv2d",)


def _pads(padding) -> list[int]:
    ph, pw = padding
    return [ph, pw, ph, pw]


def _conv(inp: str, cin: int, cout: int, k: tuple[int, int], stride, pads, dilation=(1, 1),
          groups: int = 1) -> Step:
    return Step("conv2d", (inp,), {"strides": list(stride), "pads": list(pads),
                                    "dilations": list(dilation), "groups": groups},
                weight=(cout, cin // groups, *k))


def forms(node: TeacherNode, ctx: RuleContext) -> list[Form]:
    a = node.attrs
    cin = ctx.in_shapes[0][1]
    cout = node.shape[1]
    k = tuple(ctx.graph.params[node.params["weight"]].shape[2:])
    stride, pad, dil, groups = tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), \
        a["groups"]
    kind = "depthwise " if groups > 1 and groups == cin else "grouped " if groups > 1 else ""
    label = f"{kind}{k[0]}x{k[1]}/{stride[0]} conv"
    out = [Form("conv2d.native", f"{label} as the teacher has it",
                (_conv("in0", cin, cout, k, stride, _pads(pad), dil, groups),), native=True)]
    if k == (1, 1) and pad == (0, 0):
        out.append(Form("conv2d.centre_tap_3x3", f"{label} as a 3x3 conv, weights in the centre tap",
                        (_conv("in0", cin, cout, (3, 3), stride, [1, 1, 1, 1], (1, 1), groups),)))
    square_odd = k[0] == k[1] and k[0] % 2 == 1 and k[0] > 3
    if square_odd and groups == 1 and dil == (1, 1) and pad == (k[0] // 2,) * 2 and \
            stride in ((1, 1), (2, 2)) and (stride == (1, 1) or k[0] <= 7):
        out.append(_shift_form(label, cin, cout, k[0], stride[0]))
    if max(k) > 3 and dil == (1, 1):
        out.append(_stack_form(label, cin, cout, k, stride, pad, groups))
    if groups > 1:
        out.append(Form("conv2d.dense", f"{label} as a dense conv (block-diagonal weights)",
                        (_conv("in0", cin, cout, k, stride, _pads(pad), dil, 1),)))
        if k == (1, 1) and pad == (0, 0):
            out.append(Form("conv2d.dense_centre_tap_3x3",
                            f"{label} as a dense 3x3 conv (block-diagonal centre taps)",
                            (_conv("in0", cin, cout, (3, 3), stride, [1, 1, 1, 1]),)))
    if groups == 1:
        out += [_split_form(label, cin, cout, k, stride, pad, dil, n) for n in (2, 3, 4, 8)
                if cout % n == 0]
    if groups == 1 and k == stride and k[0] == k[1] and pad == (0, 0) and dil == (1, 1):
        out += [_patchify_form(label, cin, cout, k[0], s, n) for s in (2, 3, 4)
                for n in range(1, 5) if k[0] % s ** n == 0 and k[0] > s ** n]
    return out


def _patchify_form(label: str, cin: int, cout: int, k: int, s: int, n: int) -> Form:
    """n space-to-depth s x s/s convs, then an r x r/r conv, k = s**n * r."""
    r = k // s ** n
    steps, c = [], cin
    for i in range(n):
        steps.append(_conv("in0" if i == 0 else f"s{i - 1}", c, c * s * s, (s, s), (s, s),
                           [0] * 4))
        c *= s * s
    steps.append(_conv(f"s{n - 1}", c, cout, (r, r), (r, r), [0] * 4))
    stages = f"{n} space-to-depth {s}x{s}/{s} conv{'s' if n > 1 else ''}"
    return Form(f"conv2d.patchify_{s}x{s}" + (f"_x{n}" if n > 1 else ""),
                f"{label} as {stages} and a {r}x{r}/{r} conv (exact)", tuple(steps))


def _split_form(label, cin, cout, k, stride, pad, dil, n: int) -> Form:
    """Output channels in n convs of cout/n and a concat, for a chip whose conv writes fewer
    channels than the teacher's (exact; the pieces share one output grid)."""
    convs = tuple(_conv("in0", cin, cout // n, k, stride, _pads(pad), dil) for _ in range(n))
    return Form(f"conv2d.split_out{n}", f"{label} as {n} convs of {cout // n} output channels "
                f"and a concat", (*convs, Step("concat", tuple(f"s{i}" for i in range(n)),
                                               {"axis": 1})))


def _shift_form(label: str, cin: int, cout: int, k: int, stride: int) -> Form:
    r = k // 2
    # stride 2: one stride-2 shift layer of reach 1, the last 3x3 taps on a grid 2 apart;
    # stride 1: shift layers of reach 1 .. r-1 (transfer.split_offset)
    reaches = [1] if stride == 2 else list(range(1, r))
    steps, x = [], "in0"
    for i, reach in enumerate(reaches):
        width = (2 * reach + 1) ** 2 * cin
        in_ch = cin if i == 0 else (2 * reaches[i - 1] + 1) ** 2 * cin
        steps.append(_conv(x, in_ch, width, (3, 3), (stride, stride) if i == 0 else (1, 1),
                           [1, 1, 1, 1]))
        x = f"s{i}"
    last_in = (2 * reaches[-1] + 1) ** 2 * cin
    steps.append(_conv(x, last_in, cout, (3, 3), (1, 1), [1, 1, 1, 1]))
    return Form("conv2d.shift_3x3", f"{label} as {len(steps)} 3x3 convs (shift channels, exact)",
                tuple(steps))


def _stack_form(label: str, cin: int, cout: int, k, stride, pad, groups: int) -> Form:
    layers = max(k) // 2          # each 3x3 adds 2 to the receptive field: k // 2 reach k
    steps, x, c = [], "in0", cin
    # the first layer takes the stride; 'same'-style teachers keep 'same' 3x3 padding, valid
    # ones (no padding) shrink by 2 per layer
    p = 1 if pad != (0, 0) else 0
    depthwise = groups == cin == cout     # a depthwise teacher stays depthwise; others dense
    for i in range(layers):
        steps.append(_conv(x, c, cout, (3, 3), stride if i == 0 else (1, 1), [p] * 4, (1, 1),
                           cout if depthwise else 1))
        x, c = f"s{i}", cout
        if i < layers - 1:
            steps[-1] = Step(steps[-1].op, steps[-1].inputs, steps[-1].attrs, steps[-1].weight,
                             relu=True)
    return Form("conv2d.stack_3x3", f"{label} as {layers} 3x3 convs (learned)", tuple(steps),
                exact=False)
