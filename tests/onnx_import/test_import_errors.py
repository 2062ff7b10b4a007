"""Every way an ONNX file can be unusable is one ModelImportError line naming the file and the
node or field at fault."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper

from import_graphs import float_net, integer_chain, make_model, save
from simulator.errors import ModelImportError, SimulatorError
from simulator.onnx_import import import_onnx


def _error(path, **kw) -> str:
    with pytest.raises(ModelImportError) as err:
        import_onnx(path, **kw)
    message = str(err.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    assert isinstance(err.value, SimulatorError)
    return message


def test_missing_file(tmp_path):
    assert "no such ONNX file" in _error(tmp_path / "absent.onnx")


def test_directory(tmp_path):
    assert "no such ONNX file" in _error(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert "empty file" in _error(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a protobuf at all\n" * 20)
    assert "not an ONNX model" in _error(path) or "onnx.checker" in _error(path)


def test_truncated_file(tmp_path):
    data = integer_chain().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    message = _error(path)
    assert "not an ONNX model" in message or "onnx.checker" in message


def test_checker_failure_names_the_field(tmp_path):
    node = helper.make_node("Relu", ["nowhere"], ["y"], name="relu")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TP.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    message = _error(save(model, tmp_path))
    assert "onnx.checker" in message and "nowhere" in message


def test_unsupported_op_in_integer_graph_names_the_node(tmp_path):
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="int_add")]
    model = make_model(nodes, [("a", TP.INT8, (4,)), ("b", TP.INT8, (4,))], ["y"])
    message = _error(save(model, tmp_path))
    assert "'int_add' (Add)" in message and "estimate_only=True" in message
    # ... and the same graph imports for estimation
    program = import_onnx(save(model, tmp_path), estimate_only=True)
    assert [n.op.value for n in program.nodes] == ["add"]


def test_float_graph_demanded_executable(tmp_path):
    message = _error(save(float_net(), tmp_path), estimate_only=False)
    assert "'conv' (Conv)" in message


def test_non_constant_weights(tmp_path):
    model = integer_chain()
    graph = model.graph
    w1 = next(t for t in graph.initializer if t.name == "w1")
    graph.input.append(helper.make_tensor_value_info("w1", TP.INT8, list(w1.dims)))
    graph.initializer.remove(w1)
    message = _error(save(model, tmp_path))
    assert "'conv1' (QLinearConv)" in message and "'w1' must be a constant" in message


def test_conflicting_zero_points(tmp_path):
    """Two QLinearConvs read the same tensor with different zero points."""
    inits = {"s": np.float32(0.1), "z": np.uint8(3), "z_other": np.uint8(4),
             "w": np.ones((1, 1, 1, 1), np.int8), "ws": np.float32(0.1), "wz": np.int8(0)}
    nodes = [helper.make_node("QLinearConv", ["x", "s", "z", "w", "ws", "wz", "s", "z"],
                              ["y1"], name="first"),
             helper.make_node("QLinearConv", ["x", "s", "z_other", "w", "ws", "wz", "s", "z"],
                              ["y2"], name="second")]
    model = make_model(nodes, [("x", TP.UINT8, (1, 1, 2, 2))], ["y1", "y2"], inits)
    message = _error(save(model, tmp_path))
    assert "zero point" in message and "'first'" in message and "'second'" in message


def test_unknown_input_in_input_shapes(tmp_path):
    message = _error(save(float_net(), tmp_path), input_shapes={"image": (1, 3, 8, 8)})
    assert "'image'" in message and "'x'" in message


def test_bad_input_shape_values(tmp_path):
    message = _error(save(float_net(), tmp_path), input_shapes={"x": (1, 3, 0, 8)})
    assert "positive" in message


def test_symbolic_non_batch_dim_needs_input_shapes(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = make_model(nodes, [("x", TP.FLOAT, ("batch", "seq", 8))], ["y"])
    message = _error(save(model, tmp_path))
    assert "'x'" in message and "input_shapes" in message
    program = import_onnx(save(model, tmp_path), input_shapes={"x": (2, 5, 8)})
    assert program.tensors["y"].shape == (2, 5, 8)


def test_block_quantization_is_unsupported_when_executable(tmp_path):
    inits = {"s": np.full((2, 2), 0.1, np.float32)}
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["y"], name="blockq", axis=1,
                            block_size=2)
    model = make_model([node], [("x", TP.FLOAT, (2, 4))], ["y"], inits)
    message = _error(save(model, tmp_path), estimate_only=False)
    assert "'blockq' (QuantizeLinear)" in message and "block_size" in message
