"""What activations, gates and composed functions cost, and where each chip runs them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from simulator.constraints import COMPOSED, lut_form, view
from simulator.contract import ACTIVATION_FUNCTIONS
from simulator.cost import estimate
from simulator.cost.compute import lookup_cycles
from simulator.cost.host import LUT_FUNCTION_FLOPS, host_flops
from simulator.onnx_import import import_onnx
from simulator.profiles import load_profile


def _program(tmp_path, nodes, inits, inputs=(("x", (1, 16, 8, 8)),)):
    import onnx
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TP.FLOAT, s) for n, s in inputs],
        [helper.make_empty_tensor_value_info("y")],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    path = tmp_path / "m.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(onnx.shape_inference.infer_shapes(model), path)
    return import_onnx(path)


def _conv_then(tmp_path, *activation):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1])] + list(activation)
    return _program(tmp_path, nodes, {"w": np.zeros((16, 16, 1, 1), np.float32)})


def test_a_fused_table_has_no_cycles_and_bounds_its_producer(tmp_path):
    program = _conv_then(tmp_path, helper.make_node("Sigmoid", ["c"], ["y"]))
    chip = load_profile("ethos-u55-128")
    conv, table = estimate(program, chip).ops
    assert table.fused_into == conv.name and table.cost.cycles == 0
    elements = 16 * 8 * 8
    assert conv.cost.compute_cycles >= elements / chip.elementwise.lut_elements_per_cycle


def test_silu_is_composed_on_the_edgetpu_and_a_table_on_ethos(tmp_path):
    program = _conv_then(tmp_path, helper.make_node("Sigmoid", ["c"], ["s"]),
                         helper.make_node("Mul", ["c", "s"], ["y"]))
    table = program.nodes[1]
    assert table.attrs["function"] == "silu"
    edge, ethos = load_profile("edgetpu"), load_profile("ethos-u55-128")
    assert lut_form("silu", edge) == "composed" and lut_form("silu", ethos) == "table"
    v = view(program, table, edge)
    elements = math.prod(v.output.shape)
    rates = edge.elementwise
    assert lookup_cycles(v, edge) == pytest.approx(
        elements / rates.lut_elements_per_cycle + elements / rates.add_elements_per_cycle)
    v = view(program, table, ethos)
    assert lookup_cycles(v, ethos) == pytest.approx(
        elements / ethos.elementwise.lut_elements_per_cycle)


def test_a_gate_is_priced_as_an_elementwise_mul(tmp_path):
    nodes = [helper.make_node("Mul", ["x", "g"], ["y"])]
    program = _program(tmp_path, nodes, {}, inputs=(("x", (1, 16, 8, 8)), ("g", (1, 16, 1, 1))))
    chip = load_profile("rk3588-npu-core")
    (mul,) = estimate(program, chip).ops
    assert mul.type == "mul" and not mul.on_host
    assert mul.cost.compute_cycles == pytest.approx(16 * 8 * 8 /
                                                    chip.elementwise.add_elements_per_cycle)
    (on_k210,) = estimate(program, load_profile("k210-kpu")).ops   # no elementwise mul there
    assert on_k210.on_host and on_k210.fallback_reason == \
        "mul not supported (ops.mul.supported = false)"


def test_every_function_has_host_flops_and_a_composition_is_of_known_functions():
    assert set(LUT_FUNCTION_FLOPS) == set(ACTIVATION_FUNCTIONS)
    for function, (base, _) in COMPOSED.items():
        assert function in ACTIVATION_FUNCTIONS and base in (None, *ACTIVATION_FUNCTIONS)


def test_a_float_table_on_the_host_costs_its_function(tmp_path):
    program = _conv_then(tmp_path, helper.make_node("Tanh", ["c"], ["y"]))
    k210 = load_profile("k210-kpu")
    v = view(program, program.nodes[1], k210)
    assert host_flops(v) == 16 * 8 * 8 * LUT_FUNCTION_FLOPS["tanh"]
