"""16x8 TFLite models (int16 activations, int8 per-channel filters, int64 biases, as TFLite's
converter writes them): the simulator under tflite-reference equals LiteRT's reference kernels
(BUILTIN_REF) on every element, op by op, in MobileNetV2 and ResNet blocks, in random chains and
next to int8 layers in one model; inputs are random int16 with the extremes sprinkled in, and
one set of extremes only.

What TFLite does differently for int16 (each checked here against LiteRT, each a named choice
of the profile's [arithmetic]):
* CONV_2D, DEPTHWISE_CONV_2D: an int64 accumulator, requantized by the Q0.31 multiplier cut to
  16 bits and one rounding half up (``int16_accumulator_bits``, ``int16_requantize``);
* FULLY_CONNECTED: an int64 accumulator, round(double(acc) * scale) as for int8;
* ADD: each operand shifted left 15 bits, not 20 (``int16_add_left_shift``);
* LOGISTIC, TANH: their own fixed-point kernels, as 65536-entry tables.
MUL, the pools, MEAN, QUANTIZE and DEQUANTIZE compute as the int8 kernels do.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from graphs import (LAYER_KINDS, OP, Net, mobilenet_v2_block, random_chain,
                    resnet_basic_block)
from harness import CHIP, check_against_litert
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.contract import Int16Requant
from simulator.execute import execute
from simulator.tflite_import import import_tflite
from simulator.tflite_import.peers import program_views, run_litert

SHAPE = (1, 9, 9, 6)


CASES = {
    "conv3x3_same_relu": lambda n: [n.conv(n.x, 8, 3, act="RELU")],
    "conv1x1_per_tensor": lambda n: [n.conv(n.x, 8, 1, per_channel=False)],
    "conv3x3_stride2_valid_relu6": lambda n: [n.conv(n.x, 8, 3, 2, "VALID", act="RELU6")],
    "conv_dilated_relu_n1_to_1": lambda n: [n.conv(n.x, 4, 3, dilation=2, act="RELU_N1_TO_1")],
    "depthwise_m1_relu6": lambda n: [n.depthwise(n.x, 1, act="RELU6")],
    "depthwise_m2_stride2": lambda n: [n.depthwise(n.x, 2, stride=2)],
    "fc_2d": lambda n: [n.fc(n.reshape(n.x, (9, 54)), 10)],
    "fc_from_nhwc_relu": lambda n: [n.fc(n.x, 10, act="RELU")],
    "fc_keep_num_dims_per_tensor": lambda n: [n.fc(n.x, 5, keep_num_dims=True,
                                                   per_channel=False)],
    "add_residual_relu": lambda n: [n.add(n.x, n.conv(n.x, 6, 3), act="RELU")],
    "mul_same_shape": lambda n: [n.mul(n.x, n.conv(n.x, 6, 1))],
    "mul_channel_gate_relu6": lambda n: [n.mul(n.x, n.gate(n.x), act="RELU6")],
    "avgpool_2x2": lambda n: [n.pool("avg", n.x, 2, 2)],
    "avgpool_3x3_same_relu6": lambda n: [n.pool("avg", n.x, 3, 2, "SAME", act="RELU6")],
    "maxpool_3x3_same_relu": lambda n: [n.pool("max", n.x, 3, 2, "SAME", act="RELU")],
    "mean_keep_dims": lambda n: [n.mean(n.x, True)],
    "mean_new_scale": lambda n: [n.mean(n.x, True, new_zero_point=True)],
    "mean_squeezed": lambda n: [n.mean(n.x, False)],
    "concat_channels": lambda n: [n.concat([n.x, n.pool("max", n.x, 1, 1)])],
    "reshape": lambda n: [n.reshape(n.conv(n.x, 4, 1), (81, 4))],
    "pad_into_conv": lambda n: [n.conv(n.pad(n.x, 1, 2, 0, 1), 4, 3, padding="VALID")],
    "logistic_tanh": lambda n: [n.lut(OP.LOGISTIC, n.x), n.lut(OP.TANH, n.x)],
    "quantize_int16_to_int16": lambda n: [n.requantize(n.x)],
    "quantize_int16_int8_int16": lambda n: [n.requantize(n.requantize(n.x, "int8"), "int16")],
    "mobilenet_v2_block": mobilenet_v2_block,
    "resnet_basic_block": resnet_basic_block,
}


@pytest.mark.parametrize("pow2", [False, True], ids=["scales", "pow2_scales"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_int16_simulator_equals_litert_reference(case, pow2, tmp_path):
    rng = np.random.default_rng([zlib.crc32(case.encode()), int(pow2), 16])
    net = Net(rng, SHAPE, pow2=pow2, int16=True)
    model = net.build(*CASES[case](net))
    blocks = case.endswith("block")
    backends = ("kernels", "reference") if blocks else ("kernels",)
    inputs = net.input_arrays(rng, 6 if blocks else 3)
    assert check_against_litert(model, inputs, tmp_path, backends) > 0


def test_int8_and_int16_layers_in_one_model(tmp_path):
    """An int8 conv, QUANTIZE to int16, a 16x8 conv and ADD, QUANTIZE back, an int8 conv and
    ADD: each layer takes its own type's arithmetic (int32 and double rounding for int8)."""
    rng = np.random.default_rng(816)
    net = Net(rng, SHAPE)
    a = net.conv(net.x, 6, 3, act="RELU")
    net.use(int16=True)
    h = net.requantize(a, "int16")
    h = net.add(h, net.conv(h, 6, 3, act="RELU6"))
    net.use(int16=False)
    b = net.requantize(h, "int8")
    model = net.build(net.add(b, net.conv(b, 6, 1)))
    assert check_against_litert(model, net.input_arrays(rng, 4), tmp_path,
                                ("kernels", "reference")) > 0


def _mismatches(model: bytes, inputs_list, tmp_path, arithmetic) -> int:
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    program = import_tflite(path)
    out, differ = program.outputs[0], 0
    for inputs in inputs_list:
        litert = program_views(program, run_litert(path, inputs))
        differ += int((execute(program, arithmetic, inputs).outputs[out] != litert[out]).sum())
    return differ


def test_the_16x8_conv_needs_the_reduced_multiplier(tmp_path):
    """Power-of-two scales and small inputs put many 16x8 CONV_2D outputs on exact ties: the
    reduced multiplier rounds them half up once; the int8 path's double rounding (SRDHM, then
    ties away from zero) differs."""
    rng = np.random.default_rng(3)
    net = Net(rng, (1, 10, 10, 8), pow2=True, int16=True)
    model = net.build(net.conv(net.x, 8, 3, quant=(2.0 ** -14, 0)))
    small = [{"x": rng.integers(-6, 7, (1, 10, 10, 8)).astype(np.int16)} for _ in range(3)]
    assert _mismatches(model, small, tmp_path, CHIP) == 0
    same = dataclasses.replace(CHIP.arithmetic, int16_requantize=Int16Requant.SAME,
                               int16_accumulator=None)  # small sums: 32 bits hold them
    assert _mismatches(model, small, tmp_path, same) > 0


@pytest.mark.parametrize("op", ["conv", "fc"])
def test_the_16x8_accumulator_is_64_bits(tmp_path, op):
    """1024 products of 32767 and 127 sum to 4.3e9: TFLite's int64 accumulator holds it (the
    output saturates at 32767); a 32-bit one would wrap to a negative sum."""
    from benchmarks.tflite_writer import GraphWriter
    g, k = GraphWriter(), 1024
    shape = (1, 2, 2, k) if op == "conv" else (4, k)
    x = g.input("x", shape, "int16", 1e-4, 0)
    w_shape = (3, 1, 1, k) if op == "conv" else (3, k)
    w = g.tensor("w", w_shape, "int8", [0.01] * 3, data=np.full(w_shape, 127), qdim=0)
    b = g.tensor("b", (3,), "int64", [float(np.float32(1e-4) * np.float32(0.01))] * 3,
                 data=[0, 5, -5])
    y = g.tensor("y", shape[:-1] + (3,), "int16", 1e-3, 0)
    (g.conv2d if op == "conv" else g.fully_connected)(x, w, b, y)
    g.output(y)
    inputs = [{"x": np.full(shape, v, np.int16)} for v in (32767, -32768)]
    assert _mismatches(g.build(), inputs, tmp_path, CHIP) == 0
    acc32 = dataclasses.replace(CHIP.arithmetic, int16_accumulator=CHIP.arithmetic.accumulator)
    assert _mismatches(g.build(), inputs, tmp_path, acc32) > 0


def test_the_int16_add_shifts_by_15(tmp_path):
    """TFLite's int16 ADD shifts each operand left 15 bits (20 for int8): with 20 the three
    rescales round differently."""
    rng = np.random.default_rng(4)
    net = Net(rng, (1, 8, 8, 8), int16=True)
    model = net.build(net.add(net.x, net.conv(net.x, 8, 1)))
    inputs = net.input_arrays(rng, 3)
    assert _mismatches(model, inputs, tmp_path, CHIP) == 0
    shift20 = dataclasses.replace(CHIP.arithmetic, int16_add_left_shift=20)
    assert _mismatches(model, inputs, tmp_path, shift20) > 0


@pytest.mark.parametrize("scale", [2.0 ** -12, 2.0 ** -11, 2.0 ** -15, 3.3e-4, 1e-5, 0.9])
def test_int16_logistic_and_tanh_on_every_input(tmp_path, scale):
    """All 65536 int16 inputs through LOGISTIC and TANH: power-of-two input scales (TFLite's
    multiplier-free path; TANH's left shift of 1) and general ones."""
    net = Net(np.random.default_rng(0), (1, 256, 256, 1), int16=True)
    net.g.tensors[net.x].scale = [float(np.float32(scale))]
    model = net.build(net.lut(OP.LOGISTIC, net.x), net.lut(OP.TANH, net.x))
    every = np.arange(-32768, 32768, dtype=np.int16).reshape(1, 256, 256, 1)
    assert check_against_litert(model, [{"x": every}], tmp_path) >= 3 * 65536


@settings(max_examples=25, deadline=None)
@given(chain=st.lists(st.sampled_from(LAYER_KINDS), min_size=1, max_size=4), head=st.booleans(),
       pow2=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_random_int16_layer_chains(tmp_path_factory, chain, head, pow2, seed):
    """Random stacks of the supported 16x8 layers, optionally ending in MEAN + FULLY_CONNECTED."""
    rng = np.random.default_rng(seed)
    net = Net(rng, (1, int(rng.integers(4, 10)), int(rng.integers(4, 10)), 3), pow2=pow2,
              int16=True)
    x = random_chain(net, chain, head, rng, tables=[OP.TANH, OP.LOGISTIC],
                     residual_acts=["NONE", "RELU"], alpha=False)
    check_against_litert(net.build(x), net.input_arrays(rng, 2),
                         tmp_path_factory.mktemp("chain16"))
