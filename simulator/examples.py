"""The bundled example: a small quantized CNN built in code, so it needs no file and no download.

It holds the constructs that separate chips: a 5x5 stem (3x3-only chips fall back), 3x3 convs,
a 2x2 max-pool, a residual add, a global average pool and a fully connected head, in u8/s8 with
per-channel weights. Its requantization multipliers are set from the example input's own
accumulator range, as a calibration pass would.
"""

from __future__ import annotations

import numpy as np

from simulator.contract import AccumulatorSpec, ArithmeticSpec, Overflow, RequantMode, RequantSpec
from simulator.contract import RoundingMode, SaturationPoint
from simulator.execute import execute
from simulator.ir.builder import ProgramBuilder
from simulator.ir.program import Program

INPUT_SHAPE = (1, 1, 16, 16)
_CALIBRATION = ArithmeticSpec(AccumulatorSpec(40, Overflow.SATURATE, SaturationPoint.FINAL),
                              RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN))


def example_input(seed: int = 0) -> np.ndarray:
    """A 16x16 u8 image: a bright disc on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    disc = ((yy - 7.5) ** 2 + (xx - 6.5) ** 2 < 20) * 150
    return np.clip(disc + rng.integers(0, 80, (16, 16)), 0, 255).astype(np.uint8).reshape(INPUT_SHAPE)


def _conv_block(b: ProgramBuilder, rng, x: str, name: str, cin: int, cout: int, k: int,
                stride: int = 1) -> tuple[str, str]:
    w = rng.integers(-127, 128, (cout, cin, k, k))
    w_scale = rng.uniform(0.002, 0.006, cout)
    wt = b.constant(f"{name}_w", w, "s8", scale=w_scale, axis=0)
    x_scale = b.tensors[x].scale[0]
    bias = b.constant(f"{name}_b", rng.integers(-500, 500, cout), "s32", scale=x_scale * w_scale, axis=0)
    pad = k // 2
    acc = b.node("conv2d", [x, wt, bias], f"{name}_acc", strides=[stride, stride],
                 pads=[pad, pad, pad, pad], scale=x_scale * w_scale, quant_axis=1)
    return acc, name


def _requant_relu(b: ProgramBuilder, acc: str, name: str, inputs) -> str:
    """u8 ReLU output whose scale makes the example's largest activation land near 255."""
    so_far = Program(b.name, dict(b.tensors), list(b.nodes), list(b.inputs), [acc])
    values = execute(so_far, _CALIBRATION, inputs, backend="reference", trace=False).outputs[acc]
    acc_scale = np.asarray(b.tensors[acc].scale)
    real_max = float(np.max(values * acc_scale.reshape(1, -1, *([1] * (values.ndim - 2)))))
    out_scale = max(real_max, 1e-3) / 255.0
    return b.node("requantize", [acc], name, dtype="u8", scale=out_scale, zero_point=0,
                  real_multiplier=list(acc_scale / out_scale), axis=1)


def example_program() -> Program:
    rng = np.random.default_rng(2021)
    inputs = {"image": example_input()}
    b = ProgramBuilder("example_cnn", metadata={"source": "simulator.examples.example_program"})
    x = b.input("image", INPUT_SHAPE, "u8", scale=1 / 255, zero_point=0)
    acc, _ = _conv_block(b, rng, x, "stem", 1, 8, 5)
    h = _requant_relu(b, acc, "stem_out", inputs)
    h = b.node("maxpool2d", [h], "pool", kernel=[2, 2], strides=[2, 2])
    acc, _ = _conv_block(b, rng, h, "conv1", 8, 8, 3)
    r = _requant_relu(b, acc, "conv1_out", inputs)
    y = b.node("add", [h, r], "residual", dtype="u8", scale=b.tensors[r].scale[0] * 1.5, zero_point=0)
    acc, _ = _conv_block(b, rng, y, "conv2", 8, 16, 3, stride=2)
    h = _requant_relu(b, acc, "conv2_out", inputs)
    g = b.node("global_avgpool2d", [h], "gap")
    f = b.node("flatten", [g], "features", axis=1)
    w = rng.integers(-127, 128, (10, 16))
    f_scale = b.tensors[f].scale[0]
    wt = b.constant("fc_w", w, "s8", scale=0.01)
    acc = b.node("fully_connected", [f, wt], "fc_acc", scale=f_scale * 0.01)
    logits = b.node("requantize", [acc], "logits", dtype="s8", scale=0.1, zero_point=0,
                    real_multiplier=[f_scale * 0.01 / 0.1])
    b.output(logits)
    return b.build()
