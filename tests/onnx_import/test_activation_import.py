"""Activations, pooling, padding and gates of float graphs, however the exporter spells them."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper

from import_graphs import make_model, save
from simulator.constraints import place
from simulator.ir.ops import OpKind
from simulator.onnx_import import import_onnx
from simulator.profiles import load_profile

F = TP.FLOAT
X = [("x", F, (1, 4, 6, 6))]


def _import(tmp_path, nodes, outputs=("y",), inits=None, inputs=X, opset=17):
    return import_onnx(save(make_model(nodes, inputs, list(outputs), inits or {}, opset),
                            tmp_path))


def _kinds(program):
    return [(n.op.value, n.attrs.get("function")) if n.op is OpKind.LOOKUP_TABLE else
            (n.op.value, n.attrs.get("op_type")) for n in program.nodes]


def _c(v):
    return np.array(v, np.float32)


def test_gelu_in_tanh_form_is_gelu(tmp_path):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): nine ops, one table."""
    n = helper.make_node
    nodes = [n("Pow", ["x", "three"], ["cube"]), n("Mul", ["cube", "k"], ["kc"]),
             n("Add", ["x", "kc"], ["inner"]), n("Mul", ["inner", "s"], ["scaled"]),
             n("Tanh", ["scaled"], ["t"]), n("Add", ["t", "one"], ["t1"]),
             n("Mul", ["x", "t1"], ["xt"]), n("Mul", ["xt", "half"], ["y"])]
    inits = {"three": _c(3.0), "k": _c(0.044715), "s": _c(np.sqrt(2 / np.pi)), "one": _c(1.0),
             "half": _c(0.5)}
    program = _import(tmp_path, nodes, inits=inits)
    assert _kinds(program) == [("lookup_table", "gelu")]


def test_an_unknown_function_is_an_unnamed_table(tmp_path):
    """Mish, x tanh(softplus(x)): one table no fixed-function unit holds."""
    nodes = [helper.make_node("Softplus", ["x"], ["sp"]), helper.make_node("Tanh", ["sp"], ["t"]),
             helper.make_node("Mul", ["x", "t"], ["y"])]
    program = _import(tmp_path, nodes)
    assert _kinds(program) == [("lookup_table", None)]
    assert not any(p.on_host for p in place(program, load_profile("ethos-u55-128")))
    rk = [p for p in place(program, load_profile("rk3588-npu-core")) if p.on_host]
    assert rk and "a lookup_table of no named function not in ops.lookup_table.functions" in \
        rk[0].reasons[0]


def test_a_gate_of_another_tensor_is_sigmoid_then_mul(tmp_path):
    """sigmoid(g) * x is not a function of one tensor: a sigmoid table and an elementwise mul."""
    nodes = [helper.make_node("Sigmoid", ["g"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    program = _import(tmp_path, nodes, inputs=X + [("g", F, (1, 4, 1, 1))])
    assert _kinds(program) == [("lookup_table", "sigmoid"), ("mul", None)]
    mul = program.nodes[1]
    assert program.tensors[mul.inputs[0]].shape == (1, 4, 6, 6)   # the full operand first


@pytest.mark.parametrize("slope,function", [((1,), "leaky_relu"), ((4, 1, 1), "prelu")])
def test_prelu(tmp_path, slope, function):
    nodes = [helper.make_node("PRelu", ["x", "slope"], ["y"])]
    program = _import(tmp_path, nodes, inits={"slope": np.full(slope, 0.1, np.float32)})
    assert _kinds(program) == [("lookup_table", function)]


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [17, 18])
def test_reduce_mean_over_h_and_w_is_global_pooling(tmp_path, keepdims, opset):
    if opset >= 18:
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)
        inits = {"axes": np.array([-1, 2], np.int64)}
    else:
        node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=keepdims)
        inits = {}
    program = _import(tmp_path, [node], inits=inits, opset=opset)
    assert [n.op.value for n in program.nodes] == \
        ["global_avgpool2d"] + ([] if keepdims else ["reshape"])
    assert program.tensors["y"].shape == ((1, 4, 1, 1) if keepdims else (1, 4))


def test_reduce_mean_over_channels_stays_a_fallback(tmp_path):
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=1)
    assert _kinds(_import(tmp_path, [node])) == [("fallback", "ReduceMean")]


def _pad_conv(pads, value=None, mode="constant", extra_reader=False):
    pad_inputs = ["x", "pads"] + (["value"] if value is not None else [])
    nodes = [helper.make_node("Pad", pad_inputs, ["p"], mode=mode),
             helper.make_node("Conv", ["p", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 0, 1, 0])]
    channels = 4 + pads[1] + pads[5]
    inits = {"pads": np.array(pads, np.int64), "w": np.zeros((2, channels, 3, 3), np.float32)}
    if value is not None:
        inits["value"] = _c(value)
    outputs = ["y", "p"] if extra_reader else ["y"]
    return nodes, inits, outputs


def test_zero_pad_folds_into_the_conv(tmp_path):
    nodes, inits, outputs = _pad_conv([0, 0, 2, 1, 0, 0, 0, 3])
    program = _import(tmp_path, nodes, outputs, inits)
    (conv,) = program.nodes
    assert conv.op is OpKind.CONV2D and conv.attrs["pads"] == [3, 1, 1, 3]
    assert program.tensors["y"].shape == (1, 2, 8, 8)


@pytest.mark.parametrize("case", ["value", "reflect", "channels", "read_twice"])
def test_other_pads_stay_ops(tmp_path, case):
    kw = {"value": dict(value=1.0), "reflect": dict(mode="reflect"),
          "read_twice": dict(extra_reader=True), "channels": {}}[case]
    pads = [0, 1, 1, 1, 0, 0, 1, 1] if case == "channels" else [0, 0, 1, 1, 0, 0, 1, 1]
    nodes, inits, outputs = _pad_conv(pads, **kw)
    program = _import(tmp_path, nodes, outputs, inits)
    assert [k for k in _kinds(program)] == [("fallback", "Pad"), ("conv2d", None)]


def test_clip_with_computed_bounds_is_a_fallback(tmp_path):
    nodes = [helper.make_node("ReduceMax", ["x"], ["hi"], keepdims=0),
             helper.make_node("Clip", ["x", "", "hi"], ["y"])]
    assert _kinds(_import(tmp_path, nodes))[-1] == ("fallback", "Clip")


def test_relu6_after_conv_is_fused(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    inits = {"w": np.zeros((2, 4, 1, 1), np.float32), "lo": _c(0.0), "hi": _c(6.0)}
    program = _import(tmp_path, nodes, inits=inits)
    assert [n.op for n in program.nodes] == [OpKind.CONV2D]
    assert program.metadata["fused_activations"][0]["op_type"] == "Clip"


def test_scaling_by_one_constant_is_the_elementwise_mul(tmp_path):
    """Attention's q / sqrt(d) (no conv to fold it into): a mul by a scalar; c / x stays a
    fallback (a reciprocal, not a rescale)."""
    nodes = [helper.make_node("Div", ["x", "d"], ["q"]), helper.make_node("Div", ["d", "q"], ["y"])]
    program = _import(tmp_path, nodes, inits={"d": _c(8.0)})
    assert _kinds(program) == [("mul", None), ("fallback", "Div")]
    assert program.tensors[program.nodes[0].inputs[1]].shape == ()
