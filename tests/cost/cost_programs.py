"""Small Programs for cost tests and baselines, built from shapes (weights are zeros)."""

from __future__ import annotations

import numpy as np

from simulator.ir import Program, ProgramBuilder


def _conv(b: ProgramBuilder, x: str, name: str, cout: int, k: int, stride: int = 1,
          groups: int = 1, wdtype: str = "s8", adtype: str = "s8", requant: bool = True,
          dilation: int = 1) -> str:
    cin = b.tensors[x].shape[1]
    w = b.constant(f"{name}_w", np.zeros((cout, cin // groups, k, k), np.int64), wdtype, scale=0.01)
    bias = b.constant(f"{name}_b", np.zeros(cout, np.int64), "s32")
    pad = dilation * (k // 2)
    acc = b.node("conv2d", [x, w, bias], f"{name}_acc", strides=[stride, stride], pads=[pad] * 4,
                 groups=groups, dilations=[dilation, dilation])
    if not requant:
        return acc
    return b.node("requantize", [acc], name, dtype=adtype, scale=0.1, real_multiplier=[0.01])


def conv_program(cin: int = 16, cout: int = 16, hw: int = 16, k: int = 3, stride: int = 1,
                 groups: int = 1, wdtype: str = "s8", adtype: str = "s8", dilation: int = 1,
                 batch: int = 1) -> Program:
    """One conv2d + requantize: the unit of the property tests."""
    b = ProgramBuilder("conv")
    x = b.input("x", (batch, cin, hw, hw), adtype, scale=0.1)
    b.output(_conv(b, x, "conv", cout, k, stride, groups, wdtype, adtype, dilation=dilation))
    return b.build()


def float_conv_program(cin: int = 16, cout: int = 16, hw: int = 16, k: int = 3) -> Program:
    """The same conv in a float graph imported for estimation only."""
    b = ProgramBuilder("conv_f32", metadata={"estimate_only": True})
    x = b.input("x", (1, cin, hw, hw), "f32")
    w = b.constant("w", np.zeros((cout, cin, k, k), np.float32), "f32")
    bias = b.constant("b", np.zeros(cout, np.float32), "f32")
    b.output(b.node("conv2d", [x, w, bias], "conv", dtype="f32", pads=[k // 2] * 4))
    return b.build()


def fallback_sandwich(op_type: str = "LRN") -> Program:
    """conv -> <ONNX op with no NPU equivalent> -> conv: a fallback with transfers both ways."""
    b = ProgramBuilder("sandwich")
    x = b.input("x", (1, 16, 16, 16), "s8", scale=0.1)
    y = _conv(b, x, "before", 16, 3)
    y = b.node("fallback", [y], "host_op", dtype="s8", scale=0.1, out_shape=(1, 16, 16, 16),
               op_type=op_type, attributes={"size": 5})
    b.output(_conv(b, y, "after", 16, 3))
    return b.build()


def small_cnn() -> Program:
    """The baseline program: a 7x7 stem (a fallback on the K210), pooling, 3x3 and 1x1 convs,
    a residual add, a concat, global pooling, a classifier and a LayerNormalization fallback."""
    b = ProgramBuilder("small_cnn")
    x = b.input("x", (1, 3, 64, 64), "s8", scale=0.05)
    x = _conv(b, x, "stem", 32, 7, stride=2)
    x = b.node("maxpool2d", [x], "pool", kernel=[2, 2], strides=[2, 2])
    y = _conv(b, x, "c3", 32, 3)
    y = _conv(b, y, "c1", 32, 1)
    s = b.node("add", [x, y], "sum", dtype="s8", scale=0.1)
    c = b.node("concat", [s, s], "cat", axis=1)
    z = _conv(b, c, "mix", 64, 3, stride=2)
    g = b.node("global_avgpool2d", [z], "gap")
    f = b.node("flatten", [g], "flat")
    w = b.constant("fc_w", np.zeros((10, 64), np.int64), "s8", scale=0.01)
    bias = b.constant("fc_b", np.zeros(10, np.int64), "s32")
    acc = b.node("fully_connected", [f, w, bias], "fc_acc")
    logits = b.node("requantize", [acc], "logits", dtype="s8", scale=0.1, real_multiplier=[0.01])
    out = b.node("fallback", [logits], "norm", dtype="f32", out_shape=(1, 10),
                 op_type="LayerNormalization")
    b.output(out)
    return b.build()
