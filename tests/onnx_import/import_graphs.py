"""Small ONNX graphs for the importer's tests (built with onnx.helper, written to tmp files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper, numpy_helper


def make_model(nodes, inputs, outputs, initializers: dict | None = None, opset: int = 21,
               check: bool = True, infer: bool = True) -> onnx.ModelProto:
    """``inputs``: [(name, elem_type, shape)] (dims may be strings); ``outputs``: names."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, et, list(s)) for n, et, s in inputs],
        [helper.make_empty_tensor_value_info(n) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    if infer:
        model = onnx.shape_inference.infer_shapes(model)
    if check:
        onnx.checker.check_model(model)
    return model


def save(model, tmp_path: Path, name: str = "model") -> Path:
    path = Path(tmp_path) / f"{name}.onnx"
    onnx.save(model, path)
    return path


def integer_chain() -> onnx.ModelProto:
    """Q -> QLinearConv -> MaxPool -> QLinearConv -> DQ, small and deterministic."""
    rng = np.random.default_rng(0)
    inits = {"s0": np.float32(0.05), "z0": np.uint8(128),
             "w1": rng.integers(-20, 20, (4, 2, 3, 3)).astype(np.int8),
             "ws1": np.full(4, 0.01, np.float32), "wz1": np.zeros(4, np.int8),
             "s1": np.float32(0.1), "z1": np.uint8(10),
             "w2": rng.integers(-20, 20, (3, 4, 1, 1)).astype(np.int8),
             "ws2": np.float32(0.02), "wz2": np.int8(0), "s2": np.float32(0.2),
             "z2": np.uint8(5), "b1": np.arange(4, dtype=np.int32)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s0", "z0"], ["xq"], name="quant"),
        helper.make_node("QLinearConv", ["xq", "s0", "z0", "w1", "ws1", "wz1", "s1", "z1", "b1"],
                         ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c1"], ["p1"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("QLinearConv", ["p1", "s1", "z1", "w2", "ws2", "wz2", "s2", "z2"],
                         ["c2"], name="conv2"),
        helper.make_node("DequantizeLinear", ["c2", "s2", "z2"], ["y"], name="dequant"),
    ]
    return make_model(nodes, [("x", TP.FLOAT, (1, 2, 6, 6))], ["y"], inits)


def float_net() -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> MaxPool -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(1)
    c = 4
    inits = {"w": rng.normal(size=(c, 3, 3, 3)).astype(np.float32),
             "scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32),
             "mean": np.zeros(c, np.float32), "var": np.ones(c, np.float32),
             "fc_w": rng.normal(size=(10, c * 4 * 4)).astype(np.float32),
             "fc_b": np.zeros(10, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "scale", "bias", "mean", "var"],
                         ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["relu"], name="relu"),
        helper.make_node("MaxPool", ["relu"], ["pool"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], name="fc", transB=1),
        helper.make_node("Softmax", ["fc"], ["prob"], name="softmax"),
    ]
    return make_model(nodes, [("x", TP.FLOAT, (1, 3, 8, 8))], ["prob"], inits)


def shape_arithmetic_net() -> onnx.ModelProto:
    """Shape -> Gather -> Div -> Unsqueeze -> Slice, with a symbolic batch (needs folding)."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "two"], ["width"], axis=0),
             helper.make_node("Div", ["width", "two"], ["half"]),
             helper.make_node("Unsqueeze", ["half", "zero_axis"], ["end"]),
             helper.make_node("Slice", ["x", "zero_axis", "end", "two_axis"], ["y"]),
             helper.make_node("MatMul", ["y", "w"], ["z"])]
    inits = {"two": np.array(2, np.int64), "zero_axis": np.array([0], np.int64),
             "two_axis": np.array([2], np.int64), "w": np.ones((3, 5), np.float32)}
    return make_model(nodes, [("x", TP.FLOAT, ("N", 4, 6))], ["z"], inits)
