"""ResNet-50 as an estimate-only float Program, built from shapes alone.

The same topology as ``onnx/backend/test/data/light/light_resnet50.onnx`` (batch-norm folded into
the convs, ReLU as clamp, residual Sum as add, the 7x7 average pool as a global average pool,
Gemm as fully_connected, Softmax as softmax, as the ONNX importer maps them), used for cost estimation until the ONNX
importer can stand in, and for input sizes the ONNX graph cannot take (its Reshape is fixed to
224x224). ``stride_on_3x3=False`` gives the original V1 (stride on the first 1x1 conv of a
stage), as in Keras' ResNet50 that the Edge TPU benchmark ran; the weights are the same.
"""

from __future__ import annotations

import numpy as np

from simulator.ir import Program, ProgramBuilder

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, first stride)
RELU = {"min": 0, "max": 2**31 - 1}  # clamp bounds stand for ReLU in a float graph


def _conv(b: ProgramBuilder, x: str, name: str, out_ch: int, k: int, stride: int = 1) -> str:
    in_ch = b.tensors[x].shape[1]
    w = b.constant(f"{name}_w", np.zeros((out_ch, in_ch, k, k), np.float32), "f32")
    bias = b.constant(f"{name}_b", np.zeros((out_ch,), np.float32), "f32")
    pad = k // 2
    return b.node("conv2d", [x, w, bias], name, dtype="f32", strides=[stride, stride],
                  pads=[pad] * 4)


def _relu(b: ProgramBuilder, x: str) -> str:
    return b.node("clamp", [x], f"{x}_relu", **RELU)


def _bottleneck(b, x, name, width, stride, stride_on_3x3) -> str:
    s1, s3 = (1, stride) if stride_on_3x3 else (stride, 1)
    y = _relu(b, _conv(b, x, f"{name}_branch2a", width, 1, s1))
    y = _relu(b, _conv(b, y, f"{name}_branch2b", width, 3, s3))
    y = _conv(b, y, f"{name}_branch2c", width * 4, 1)
    if b.tensors[x].shape[1] != width * 4 or stride != 1:
        x = _conv(b, x, f"{name}_branch1", width * 4, 1, stride)
    return _relu(b, b.node("add", [y, x], f"{name}_sum"))


def resnet50_program(height: int = 224, width: int = 224, stride_on_3x3: bool = True) -> Program:
    b = ProgramBuilder(f"resnet50_{height}x{width}", metadata={"estimate_only": True})
    x = b.input("data", (1, 3, height, width), "f32")
    x = _relu(b, _conv(b, x, "conv1", 64, 7, 2))
    x = b.node("maxpool2d", [x], "pool1", kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for stage, (ch, blocks, stride) in enumerate(STAGES, start=2):
        for i in range(blocks):
            x = _bottleneck(b, x, f"res{stage}_{i}", ch, stride if i == 0 else 1, stride_on_3x3)
    x = b.node("global_avgpool2d", [x], "pool5")
    x = b.node("flatten", [x], "pool5_flat")
    w = b.constant("pred_w", np.zeros((1000, 2048), np.float32), "f32")
    bias = b.constant("pred_b", np.zeros((1000,), np.float32), "f32")
    x = b.node("fully_connected", [x, w, bias], "pred", dtype="f32")
    x = b.node("softmax", [x], "softmax", axis=-1, exp_table=[])
    b.output(x)
    return b.build()
