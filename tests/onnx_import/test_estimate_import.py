"""Float (and any) graphs imported for cost estimation: what each ONNX construct becomes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

from import_graphs import float_net, integer_chain, make_model, save
from simulator.contract import (AccumulatorSpec, ArithmeticSpec, Overflow, RequantMode,
                                RequantSpec, RoundingMode)
from simulator.errors import UnsupportedOpError
from simulator.execute import execute
from simulator.ir.ops import OpKind
from simulator.ir.program import load_program, save_program
from simulator.onnx_import import import_onnx

F = TP.FLOAT
SPEC = ArithmeticSpec(AccumulatorSpec(32, Overflow.WRAP),
                      RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN))


def _ops(program):
    return [n.op.value for n in program.nodes]


def _node(program, op: OpKind):
    return next(n for n in program.nodes if n.op is op)


def _import(tmp_path, nodes, inputs, outputs, inits=None, opset=21, **kw):
    return import_onnx(save(make_model(nodes, inputs, outputs, inits, opset), tmp_path), **kw)


def test_float_net_is_estimate_only_with_folds(tmp_path):
    program = import_onnx(save(float_net(), tmp_path))
    assert not program.executable
    assert "float compute" in program.metadata["estimate_only_because"]
    assert _ops(program) == ["conv2d", "maxpool2d", "flatten", "fully_connected", "softmax"]
    conv = _node(program, OpKind.CONV2D)
    assert conv.inputs == ("x", "w", "bias")  # BatchNormalization's beta became the bias
    assert program.metadata["folded_batchnorm"][0]["node"] == "bn"
    assert program.metadata["fused_activations"][0]["node"] == "relu"
    assert all(t.dtype.name == "f32" for t in program.tensors.values())
    assert all(t.data is None for t in program.tensors.values())
    with pytest.raises(UnsupportedOpError):
        execute(program, SPEC, {"x": np.zeros((1, 3, 8, 8), np.float32)}, backend="reference")


@pytest.mark.parametrize("attrs,x_hw", [
    (dict(auto_pad="SAME_UPPER", strides=[2, 2]), (9, 8)),
    (dict(auto_pad="SAME_LOWER", dilations=[2, 1]), (9, 8)),
    (dict(auto_pad="VALID", strides=[1, 3]), (9, 8)),
    (dict(pads=[0, 1, 2, 3], group=2), (7, 7)),
    (dict(pads=[1, 1, 1, 1], group=4), (5, 6)),
])
def test_conv_geometry_matches_shape_inference(attrs, x_hw, tmp_path):
    group = attrs.get("group", 1)
    w = np.zeros((4, 4 // group, 3, 3), np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", kernel_shape=[3, 3], **attrs)
    model = make_model([node], [("x", F, (1, 4, *x_hw))], ["y"], {"w": w})
    expected = tuple(d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim)
    program = import_onnx(save(model, tmp_path))
    conv = _node(program, OpKind.CONV2D)
    assert program.tensors["y"].shape == expected
    assert conv.attrs["groups"] == group


def test_conv1d_is_a_fallback(tmp_path):
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c1d", kernel_shape=[3])
    program = _import(tmp_path, [node], [("x", F, (1, 2, 10))], ["y"],
                      {"w": np.zeros((3, 2, 3), np.float32)})
    fb = _node(program, OpKind.FALLBACK)
    assert fb.attrs["op_type"] == "Conv" and fb.attrs["attributes"] == {"kernel_shape": [3]}
    assert program.tensors["y"].shape == (1, 3, 8)


@pytest.mark.parametrize("trans_b,c_shape", [(0, (5,)), (1, (5,)), (0, (1, 5)), (1, None)])
def test_gemm_is_fully_connected(trans_b, c_shape, tmp_path):
    b = np.zeros((5, 7) if trans_b else (7, 5), np.float32)
    inits = {"b": b}
    names = ["a", "b"]
    if c_shape:
        inits["c"] = np.zeros(c_shape, np.float32)
        names.append("c")
    node = helper.make_node("Gemm", names, ["y"], name="g", transB=trans_b)
    program = _import(tmp_path, [node], [("a", F, (3, 7))], ["y"], inits)
    fc = _node(program, OpKind.FULLY_CONNECTED)
    assert program.tensors[fc.inputs[1]].shape == (5, 7)
    assert len(fc.inputs) == (3 if c_shape else 2)
    if c_shape:
        assert program.tensors[fc.inputs[2]].shape == (5,)
    assert program.tensors["y"].shape == (3, 5)


def test_matmul_rank3_by_weights_and_by_activation(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("Transpose", ["h"], ["ht"], name="t", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["h", "ht"], ["scores"], name="qk")]
    program = _import(tmp_path, nodes, [("x", F, (2, 5, 8))], ["scores"],
                      {"w": np.zeros((8, 6), np.float32)})
    assert _ops(program) == ["reshape", "fully_connected", "reshape", "transpose", "matmul"]
    assert program.tensors["h"].shape == (2, 5, 6)
    assert program.tensors["scores"].shape == (2, 5, 5)


def test_other_ops_are_fallbacks_with_attributes_and_shapes(tmp_path):
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], name="ln", axis=-1,
                         epsilon=1e-5),
        helper.make_node("Gelu", ["ln"], ["gelu"], name="gelu"),
        helper.make_node("Split", ["gelu", "sizes"], ["s0", "s1"], name="split", axis=2),
        helper.make_node("Sigmoid", ["s0"], ["sig"], name="sig"),
        helper.make_node("Mul", ["sig", "s1"], ["y"], name="glu"),
        helper.make_node("Pad", ["y", "pads"], ["padded"], name="pad", mode="reflect"),
    ]
    inits = {"g": np.ones(8, np.float32), "b": np.zeros(8, np.float32),
             "sizes": np.array([4, 4], np.int64), "pads": np.array([0, 0, 1, 0, 0, 1], np.int64)}
    program = _import(tmp_path, nodes, [("x", F, (1, 3, 8))], ["padded"], inits)
    fallbacks = [n for n in program.nodes if n.op is OpKind.FALLBACK]
    assert [n.attrs["op_type"] for n in fallbacks] == [
        "LayerNormalization", "Split", "Split", "Pad"]
    # activations go to the activation unit and a gated product is the elementwise mul
    assert [(n.op.value, n.attrs.get("function")) for n in program.nodes
            if n.op is not OpKind.FALLBACK] == [("lookup_table", "gelu"),
                                                ("lookup_table", "sigmoid"), ("mul", None)]
    split = [n for n in fallbacks if n.attrs["op_type"] == "Split"]
    assert [n.attrs["attributes"]["output_index"] for n in split] == [0, 1]
    assert program.tensors["s1"].shape == (1, 3, 4)
    assert program.tensors["padded"].shape == (1, 3, 6)
    assert fallbacks[0].attrs["attributes"] == {"axis": -1, "epsilon": pytest.approx(1e-5)}
    assert fallbacks[-1].attrs["attributes"] == {"mode": "reflect"}
    json.dumps([n.attrs for n in fallbacks])


def test_dropout_and_identity_are_removed(tmp_path):
    nodes = [helper.make_node("Identity", ["x"], ["i"], name="id"),
             helper.make_node("Relu", ["i"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r"], ["y"], name="drop")]
    program = _import(tmp_path, nodes, [("x", F, (2, 3))], ["y"], opset=13)
    assert _ops(program) == ["clamp"]
    assert program.outputs == ["r"]
    assert program.metadata["output_aliases"] == {"y": "r"}
    assert {r["op_type"] for r in program.metadata["removed_nodes"]} == {"Identity", "Dropout"}


def test_symbolic_batch_is_one(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    program = _import(tmp_path, [node], [("x", F, ("N", 3, 4))], ["y"])
    assert program.tensors["x"].shape == (1, 3, 4)
    assert program.metadata["assumed_input_shapes"] == {"x": [1, 3, 4]}


def test_dynamic_reshape_uses_inferred_shape_and_drops_shape_math(tmp_path):
    """BERT-style exports compute Reshape targets with Shape/Gather/Concat: the importer uses
    the inferred shape, and the shape arithmetic (now unused) leaves the Program."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "zero_axis"], ["batch1"]),
             helper.make_node("Concat", ["batch1", "rest"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape")]
    inits = {"zero": np.array(0, np.int64), "zero_axis": np.array([0], np.int64),
             "rest": np.array([4, -1], np.int64)}
    program = _import(tmp_path, nodes, [("x", F, (2, 4, 6))], ["y"], inits)
    assert _ops(program) == ["reshape"]
    assert program.tensors["y"].shape == (2, 4, 6)
    assert program.metadata["dead_nodes_removed"] == 4


def test_softmax_axis_rules(tmp_path):
    node13 = helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1)
    program = _import(tmp_path, [node13], [("x", F, (2, 5, 3))], ["y"], opset=13)
    assert _node(program, OpKind.SOFTMAX).attrs["axis"] == 1
    node11 = helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1)
    program = _import(tmp_path, [node11], [("x", F, (2, 5, 3))], ["y"], opset=11)
    assert _ops(program) == ["fallback"]  # opset 11 normalises over axes 1 and 2 together
    program = _import(tmp_path, [node11], [("x", F, (2, 5, 1, 1))], ["y"], opset=11)
    assert _ops(program) == ["softmax"]


def test_qdq_graph_is_estimated_with_integer_types(tmp_path):
    inits = {"s": np.float32(0.1), "z": np.int8(0), "w": np.ones((2, 2, 1, 1), np.int8),
             "ws": np.float32(0.05)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "z"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv"),
             helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"])]
    program = _import(tmp_path, nodes, [("x", F, (1, 2, 3, 3))], ["yq"], inits)
    assert not program.executable
    assert _ops(program) == ["quantize", "dequantize", "conv2d", "quantize"]
    assert program.tensors["xq"].dtype.name == "s8"
    assert program.tensors["yq"].dtype.name == "s8"


def test_integer_graph_can_be_estimated_too(tmp_path):
    path = save(integer_chain(), tmp_path)
    executable = import_onnx(path)
    estimate = import_onnx(path, estimate_only=True)
    assert executable.executable and not estimate.executable
    assert _ops(executable) == _ops(estimate)
    assert all(t.data is None for t in estimate.tensors.values())
    assert estimate.tensors["w1"].shape == (4, 2, 3, 3)


def test_executable_import_round_trips_through_the_program_file(tmp_path):
    program = import_onnx(save(integer_chain(), tmp_path))
    assert _ops(program) == ["quantize", "conv2d", "requantize", "maxpool2d", "conv2d",
                             "requantize", "dequantize"]
    assert program.tensors["w1"].scale == (pytest.approx(0.01),) * 4
    assert program.tensors["w1"].axis == 0
    assert program.tensors["xq"].scale == (pytest.approx(0.05),)
    assert program.tensors["xq"].zero_point == (128,)
    assert program.tensors["p1"].zero_point == (10,)  # MaxPool keeps its input's quantization
    again = load_program(save_program(program, tmp_path / "chain.program"))
    x = np.random.default_rng(0).normal(size=(1, 2, 6, 6)).astype(np.float32)
    a = execute(program, SPEC, {"x": x}, backend="reference").outputs["y"]
    b = execute(again, SPEC, {"x": x}, backend="reference").outputs["y"]
    assert np.array_equal(a, b)


def test_requantize_multiplier_is_float32_as_onnxruntime(tmp_path):
    program = import_onnx(save(integer_chain(), tmp_path))
    req = next(n for n in program.nodes if n.op is OpKind.REQUANTIZE)
    expected = (np.float32(0.05) * np.float32(0.01)) / np.float32(0.1)
    assert req.attrs["real_multiplier"] == [float(expected)] * 4
    assert np.float32(req.attrs["real_multiplier"][0]) == expected


def test_model_with_onnx_names_kept(tmp_path):
    model = integer_chain()
    program = import_onnx(save(model, tmp_path))
    onnx_values = {o for n in model.graph.node for o in n.output}
    assert onnx_values <= set(program.tensors)
    assert isinstance(onnx.load(save(model, tmp_path)), onnx.ModelProto)


def test_shape_arithmetic_is_folded_once_inputs_are_static(tmp_path):
    """Slice bounds computed from Shape at run time (as torch exports attention): shape
    inference alone cannot size the Slice; folding Shape of a static input can."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "two"], ["width"], axis=0),
             helper.make_node("Div", ["width", "two"], ["half"]),
             helper.make_node("Unsqueeze", ["half", "zero_axis"], ["end"]),
             helper.make_node("Slice", ["x", "zero_axis", "end", "two_axis"], ["y"],
                              name="slice"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    inits = {"two": np.array(2, np.int64), "zero_axis": np.array([0], np.int64),
             "two_axis": np.array([2], np.int64)}
    model = make_model(nodes, [("x", F, ("N", 4, 6))], ["z"], inits)
    assert model.graph.value_info and not any(
        vi.name == "y" and vi.type.tensor_type.shape.dim[2].HasField("dim_value")
        for vi in model.graph.value_info)
    program = import_onnx(save(model, tmp_path), input_shapes={"x": (2, 4, 6)})
    assert program.metadata["shape_nodes_folded"] == 4
    assert _ops(program) == ["fallback", "clamp"]
    assert program.tensors["y"].shape == (2, 4, 3)
