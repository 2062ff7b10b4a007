"""The simulator under tflite-reference equals LiteRT's reference kernels (BUILTIN_REF) on every
element of generated int8 graphs: each op alone, then MobileNetV2 and ResNet blocks."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from graphs import (FUSED, LAYER_KINDS, OP, Net, mobilenet_v2_block, random_chain,
                    resnet_basic_block)
from harness import CHIP, check_against_litert
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.contract import RoundingMode


def deit_style_block(n: Net):
    """Token mixing of a ViT/DeiT layer without softmax or layer norm (which the simulator
    lacks in TFLite's form): q k^T by BATCH_MATMUL, a GELU MLP, a residual ADD."""
    d = n.shape(n.x)[-1]
    q, k = n.fc(n.x, d, keep_num_dims=True), n.fc(n.x, d, keep_num_dims=True)
    scores = n.matmul(q, k, adj_y=True)
    mixed = n.matmul(scores, n.fc(n.x, d, keep_num_dims=True))
    hidden = n.lut(OP.GELU, n.fc(mixed, 2 * d, keep_num_dims=True), alpha=0.5)
    return [n.add(n.x, n.fc(hidden, d, keep_num_dims=True))]


CASES = {
    "conv3x3_same_relu": lambda n: [n.conv(n.x, 8, 3, act="RELU")],
    "conv1x1_per_tensor": lambda n: [n.conv(n.x, 8, 1, per_channel=False)],
    "conv3x3_stride2_valid_relu6": lambda n: [n.conv(n.x, 8, 3, 2, "VALID", act="RELU6")],
    "conv_dilated": lambda n: [n.conv(n.x, 4, 3, dilation=2)],
    "depthwise_m1_relu6": lambda n: [n.depthwise(n.x, 1, act="RELU6")],
    "depthwise_m2_stride2": lambda n: [n.depthwise(n.x, 2, stride=2)],
    "fc_2d": lambda n: [n.fc(n.reshape(n.x, (9, 54)), 10)],
    "fc_from_nhwc": lambda n: [n.fc(n.x, 10, act="RELU")],
    "fc_keep_num_dims": lambda n: [n.fc(n.x, 5, keep_num_dims=True)],
    "add_residual_relu": lambda n: [n.add(n.x, n.conv(n.x, 6, 3), act="RELU")],
    "mul_channel_gate": lambda n: [n.mul(n.x, n.gate(n.x))],
    "mul_same_shape": lambda n: [n.mul(n.x, n.conv(n.x, 6, 1))],
    "avgpool_2x2": lambda n: [n.pool("avg", n.x, 2, 2)],
    "avgpool_3x3_same_relu6": lambda n: [n.pool("avg", n.x, 3, 2, "SAME", act="RELU6")],
    "maxpool_3x3_same": lambda n: [n.pool("max", n.x, 3, 2, "SAME")],
    "mean_keep_dims": lambda n: [n.mean(n.x, True)],
    "mean_new_zero_point": lambda n: [n.mean(n.x, True, new_zero_point=True)],
    "mean_squeezed": lambda n: [n.mean(n.x, False)],
    "concat_channels": lambda n: [n.concat([n.x, n.pool("max", n.x, 1, 1)])],
    "reshape_squeeze": lambda n: [n.reshape(n.conv(n.x, 4, 1), (81, 4))],
    "activation_tables": lambda n: [n.lut(OP.LOGISTIC, n.x), n.lut(OP.TANH, n.x),
                                    n.lut(OP.HARD_SWISH, n.x), n.lut(OP.LEAKY_RELU, n.x),
                                    n.lut(OP.RELU6, n.x), n.lut(OP.RELU, n.x),
                                    n.lut(OP.GELU, n.x, 0.1), n.lut(OP.GELU, n.x, 0.5)],
    "pad_into_conv": lambda n: [n.conv(n.pad(n.x, 1, 2, 0, 1), 4, 3, padding="VALID")],
    "quantize_int8_to_int8": lambda n: [n.requantize(n.x)],
    "mobilenet_v2_block": mobilenet_v2_block,
    "deit_style_block": deit_style_block,
    "resnet_basic_block": resnet_basic_block,
}


@pytest.mark.parametrize("pow2", [False, True], ids=["scales", "pow2_scales"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_simulator_equals_litert_reference(case, pow2, tmp_path):
    rng = np.random.default_rng([zlib.crc32(case.encode()), int(pow2)])  # the same every run
    net = Net(rng, (1, 7, 12) if case.startswith("deit") else (1, 9, 9, 6), pow2=pow2)
    model = net.build(*CASES[case](net))
    backends = ("kernels", "reference") if case.endswith("block") else ("kernels",)
    assert check_against_litert(model, net.input_arrays(rng, 2), tmp_path, backends) > 0


@pytest.mark.parametrize("int16,seed,span,runs", [(False, 5, 60, 2), (True, 16, 40000, 3)],
                         ids=["int8", "int16"])
def test_float_edges_quantize_and_dequantize(tmp_path, int16, seed, span, runs):
    """A float input quantized at the edge, int8 (or int16) inside, dequantized to a float
    output. The scales are powers of two and half the inputs sit exactly between two steps: the
    reference QUANTIZE rounds those ties away from zero (its roundf; the optimised kernels round
    them to even)."""
    rng = np.random.default_rng(seed)
    net = Net(rng, (1, 6, 6, 3), pow2=True, int16=int16)
    g = net.g
    g.inputs.clear()
    f = g.input("image", (1, 6, 6, 3), "float32")
    g.op(OP.QUANTIZE, [f], [net.x])
    y = net.conv(net.x, 4, 3, act="RELU")
    out = g.tensor("probabilities", (1, 6, 6, 4), "float32")
    g.op(OP.DEQUANTIZE, [y], [out])
    model = net.build(out)
    step = net.scale(net.x)
    ties = (rng.integers(-span, span, (1, 6, 6, 3)) + 0.5) * step
    inputs = [{"image": np.where(rng.random((1, 6, 6, 3)) < 0.5, ties,
                                 rng.uniform(-2, 2, (1, 6, 6, 3))).astype(np.float32)}
              for _ in range(runs)]
    assert check_against_litert(model, inputs, tmp_path) > 0


@settings(max_examples=30, deadline=None)
@given(stride=st.integers(1, 2), k_half=st.integers(1, 3),
       padding=st.sampled_from(["SAME", "VALID"]), oc=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1))
def test_random_conv_geometry(tmp_path_factory, stride, k_half, padding, oc, seed):
    rng = np.random.default_rng(seed)
    k = 2 * k_half - 1
    net = Net(rng, (1, int(rng.integers(k, 10)), int(rng.integers(k, 10)), 3),
              pow2=bool(seed % 2))
    model = net.build(net.conv(net.x, oc, k, stride, padding, act="RELU"))
    check_against_litert(model, net.input_arrays(rng, 1), tmp_path_factory.mktemp("conv"))


def test_the_litert_wheel_rounds_twice(tmp_path):
    """Power-of-two scales put many CONV_2D products on exact ties; there TFLite's double
    rounding (SRDHM then RoundingDivideByPOT) and a TFLITE_SINGLE_ROUNDING build differ. The
    profile's double rounding matches LiteRT, single rounding would not."""
    import dataclasses

    from simulator.execute import execute
    from simulator.tflite_import import import_tflite
    from simulator.tflite_import.peers import program_views, run_litert
    rng = np.random.default_rng(1)
    net = Net(rng, (1, 12, 12, 16), pow2=True)
    path = tmp_path / "ties.tflite"
    path.write_bytes(net.build(net.conv(net.x, 16, 3)))
    program = import_tflite(path)
    single = dataclasses.replace(CHIP.arithmetic, requant=dataclasses.replace(
        CHIP.arithmetic.requant, rounding=RoundingMode.HALF_UP))
    differ = 0
    for inputs in net.input_arrays(rng, 3):
        litert = program_views(program, run_litert(path, inputs))
        out = program.outputs[0]
        double = execute(program, CHIP, inputs).outputs[out]
        once = execute(program, single, inputs).outputs[out]
        assert np.array_equal(double, litert[out])
        differ += int((once != litert[out]).sum())
    assert differ > 0, "these ties must tell single from double rounding"


ACTIVATIONS = [OP.LOGISTIC, OP.TANH, OP.GELU, OP.HARD_SWISH, OP.LEAKY_RELU, OP.RELU6, OP.RELU]
@settings(max_examples=80, deadline=None)
@given(chain=st.lists(st.sampled_from(LAYER_KINDS), min_size=1, max_size=5),
       head=st.booleans(), pow2=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_random_layer_chains(tmp_path_factory, chain, head, pow2, seed):
    """Random stacks of the supported layers, optionally ending in MEAN + FULLY_CONNECTED."""
    rng = np.random.default_rng(seed)
    net = Net(rng, (1, int(rng.integers(4, 11)), int(rng.integers(4, 11)), 3), pow2=pow2)
    x = random_chain(net, chain, head, rng, tables=ACTIVATIONS, residual_acts=FUSED, alpha=True)
    check_against_litert(net.build(x), net.input_arrays(rng, 2),
                         tmp_path_factory.mktemp("chain"))
