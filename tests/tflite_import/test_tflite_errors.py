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
