"""Bad .tflite input fails in one line naming the file, the operator and the tensor."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import OP, Net
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.tflite_writer import GraphWriter
from simulator.errors import ModelImportError
from simulator.model_files import load_model
from simulator.tflite_import import import_tflite


def _model(rng=None) -> bytes:
    net = Net(rng or np.random.default_rng(0), (1, 6, 6, 3))
    return net.build(net.pool("avg", net.conv(net.x, 4, 3, act="RELU"), 2, 2))


def _fails(path, *fragments) -> str:
    with pytest.raises(ModelImportError) as err:
        import_tflite(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)), message
    for f in fragments:
        assert f in message, message
    return message


def test_every_truncation_is_one_line(tmp_path):
    """Cut after every byte: the flatbuffer is written back to front, so the last bytes hold
    the first objects built (the buffers), which every import reads."""
    blob = _model()
    path = tmp_path / "cut.tflite"
    for length in range(len(blob)):
        path.write_bytes(blob[:length])
        message = _fails(path)
        assert "truncated" in message or "not a TFLite model" in message, message


@settings(max_examples=40, deadline=None)
@given(position=st.integers(0, 10**6), value=st.integers(0, 255))
def test_a_flipped_byte_never_escapes_as_another_error(tmp_path_factory, position, value):
    """One damaged byte: a ModelImportError or a Program that still validates, nothing else."""
    blob = bytearray(_model())
    blob[position % len(blob)] = value
    path = tmp_path_factory.mktemp("flip") / "flip.tflite"
    path.write_bytes(bytes(blob))
    try:
        import_tflite(path)
    except ModelImportError as exc:
        assert "\n" not in str(exc)


def test_not_a_flatbuffer(tmp_path):
    path = tmp_path / "noise.tflite"
    path.write_bytes(bytes(range(256)) * 4)
    _fails(path, "not a TFLite model", "TFL3")


def test_float_model_names_the_op_and_tensor(tmp_path):
    g = GraphWriter()
    x = g.input("image", (1, 4, 4, 2), "float32")
    w = g.tensor("kernel", (3, 1, 1, 2), "float32", data=np.ones((3, 1, 1, 2)))
    b = g.tensor("bias", (3,), "float32", data=np.zeros(3))
    y = g.tensor("features", (1, 4, 4, 3), "float32")
    g.conv2d(x, w, b, y)
    g.output(y)
    path = tmp_path / "float.tflite"
    path.write_bytes(g.build())
    _fails(path, "float model", "CONV_2D", "'image'")


@pytest.mark.parametrize("code, name", [(OP.SOFTMAX, "SOFTMAX"), (OP.EXP, "EXP"),
                                        (OP.SUB, "SUB")])
def test_op_the_simulator_lacks(tmp_path, code, name):
    net = Net(np.random.default_rng(1), (1, 4, 4, 3))
    y = net.g.like("logits_out", net.x)
    if code == OP.SOFTMAX:
        net.g.tensors[y].scale, net.g.tensors[y].zero_point = [1 / 256], [-128]
        net.g.softmax(net.x, y)
    elif code == OP.SUB:
        net.g.op(code, [net.x, net.x], [y])
    else:
        net.g.unary(code, net.x, y)
    path = tmp_path / "lacks.tflite"
    path.write_bytes(net.build(y))
    _fails(path, name, "'logits_out'", "lacks")


def test_pad_not_before_a_conv(tmp_path):
    net = Net(np.random.default_rng(2), (1, 4, 4, 3))
    path = tmp_path / "pad.tflite"
    path.write_bytes(net.build(net.pad(net.x, 1, 1, 1, 1)))
    _fails(path, "PAD", "CONV_2D")


def test_broadcasting_add_is_refused(tmp_path):
    net = Net(np.random.default_rng(3), (1, 4, 4, 3))
    gate = net.gate(net.x)
    path = tmp_path / "bcast.tflite"
    path.write_bytes(net.build(net.add(net.x, gate)))
    _fails(path, "ADD", "broadcast")


def test_load_model_recognises_the_identifier_not_the_suffix(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(_model())
    program = load_model(str(path))
    assert program.metadata["format"] == "tflite"


# ----------------------------------------------------------------------------- 16x8

def _net16(seed=5) -> Net:
    return Net(np.random.default_rng(seed), (1, 4, 4, 3), int16=True)


def _retype(net: Net, index: int, **fields) -> None:
    t = net.g.tensors[index]
    for key, value in fields.items():
        setattr(t, key, value)


def test_int16_conv_with_an_int32_bias(tmp_path):
    """LiteRT 2.3 reads a 16x8 conv's bias as int64 unless the op says otherwise (an int32
    one gives garbage): refused, naming the bias."""
    net = _net16()
    y = net.conv(net.x, 4, 3)
    bias = net.g.ops[-1].inputs[2]
    name = net.g.tensors[bias].name
    _retype(net, bias, dtype="int32")
    net.g.buffers[net.g.tensors[bias].buffer] = np.arange(4, dtype=np.int32).tobytes()
    path = tmp_path / "bias32.tflite"
    path.write_bytes(net.build(y))
    _fails(path, "CONV_2D", f"'{name}'", "int64", "int16")


def test_int16_activation_with_a_zero_point(tmp_path):
    net = _net16()
    _retype(net, net.x, zero_point=[3])
    path = tmp_path / "zp.tflite"
    path.write_bytes(net.build(net.conv(net.x, 4, 3)))
    _fails(path, "CONV_2D", "'x'", "zero point 3", "symmetric")


def test_int16_add_on_the_power_of_two_path(tmp_path):
    """pot_scale_int16 (the schema's default) with power-of-two scales: TFLite's other ADD."""
    net = Net(np.random.default_rng(6), (1, 4, 4, 3), pow2=True, int16=True)
    b = net.conv(net.x, 3, 1)
    y = net.g.tensor("sum", (1, 4, 4, 3), "int16", net.scale(net.x), 0)
    net.g.add(net.x, b, y)
    path = tmp_path / "pot.tflite"
    path.write_bytes(net.build(y))
    _fails(path, "ADD", "'sum'", "pot_scale_int16", "power-of-two")


@pytest.mark.parametrize("code, name", [(OP.GELU, "GELU"), (OP.HARD_SWISH, "HARD_SWISH"),
                                        (OP.LEAKY_RELU, "LEAKY_RELU"), (OP.RELU, "RELU"),
                                        (OP.RELU6, "RELU6")])
def test_int16_activations_other_than_logistic_and_tanh(tmp_path, code, name):
    net = _net16()
    y = net.lut(code, net.x)
    path = tmp_path / "act16.tflite"
    path.write_bytes(net.build(y))
    _fails(path, name, "'x'", "INT16", "only int8", "LOGISTIC and TANH")


def test_int16_logistic_with_another_output_scale(tmp_path):
    net = _net16()
    y = net.lut(OP.LOGISTIC, net.x)
    _retype(net, y, scale=[1 / 16384])
    path = tmp_path / "sig.tflite"
    path.write_bytes(net.build(y))
    _fails(path, "LOGISTIC", f"'{net.g.tensors[y].name}'", "1/32768")


def test_int16_mul_to_int8_and_int16_batch_matmul(tmp_path):
    net = _net16()
    y = net.g.tensor("product", (1, 4, 4, 3), "int8", 0.05, 0)
    net.g.mul(net.x, net.x, y)
    path = tmp_path / "mul.tflite"
    path.write_bytes(net.build(y))
    _fails(path, "MUL", "'product'", "mixes INT16 and INT8")
    net = Net(np.random.default_rng(7), (1, 4, 6), int16=True)
    z = net.g.tensor("scores", (1, 4, 4), "int16", 0.001, 0)
    net.g.batch_matmul(net.x, net.x, z, adj_y=True)
    path = tmp_path / "bmm.tflite"
    path.write_bytes(net.build(z))
    _fails(path, "BATCH_MATMUL", "'x'", "int8 BATCH_MATMUL")


def test_int16_filters_are_refused(tmp_path):
    """16x16 (int16 filters): TFLite's FULLY_CONNECTED has it, the simulator reads int8 only."""
    net = _net16()
    y = net.fc(net.x, 4)
    w = net.g.ops[-1].inputs[1]
    _retype(net, w, dtype="int16")
    net.g.buffers[net.g.tensors[w].buffer] = np.ones(4 * 3, np.int16).tobytes()
    path = tmp_path / "w16.tflite"
    path.write_bytes(net.build(y))
    _fails(path, "FULLY_CONNECTED", f"'{net.g.tensors[w].name}'", "int8 filters")
