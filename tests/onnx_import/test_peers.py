"""The peers: onnxruntime and onnx.reference, whole model or every intermediate."""

from __future__ import annotations

import numpy as np
import pytest

from import_graphs import integer_chain, save
from simulator.errors import SimulatorError
from simulator.onnx_import.peers import run_onnx_reference, run_onnxruntime

X = {"x": np.random.default_rng(0).normal(size=(1, 2, 6, 6)).astype(np.float32)}


def test_onnxruntime_outputs_and_intermediates(tmp_path):
    pytest.importorskip("onnxruntime")
    path = save(integer_chain(), tmp_path)
    outputs = run_onnxruntime(path, X)
    assert list(outputs) == ["y"]
    every = run_onnxruntime(path, X, intermediates=True)
    assert set(every) == {"xq", "c1", "p1", "c2", "y"}
    assert every["xq"].dtype == np.uint8 and every["c1"].shape == (1, 4, 6, 6)
    assert np.array_equal(every["y"], outputs["y"])
    optimised = run_onnxruntime(path, X, optimize=True)
    assert np.array_equal(optimised["y"], outputs["y"])


def test_reference_evaluator_outputs_and_intermediates(tmp_path):
    path = save(integer_chain(), tmp_path)
    every = run_onnx_reference(path, X, intermediates=True)
    assert set(every) == {"xq", "c1", "p1", "c2", "y"}
    assert np.array_equal(run_onnx_reference(path, X)["y"], every["y"])


def test_integer_inputs_are_cast_to_the_declared_type(tmp_path):
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto as TP
    from onnx import helper

    from import_graphs import make_model
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", TP.INT8, (3,))], ["y"])
    path = save(model, tmp_path)
    x = np.array([-3, 0, 5], np.int64)  # the simulator holds integers as int64
    assert run_onnxruntime(path, {"x": x})["y"].tolist() == [0, 0, 5]
    assert run_onnx_reference(path, {"x": x})["y"].tolist() == [0, 0, 5]
    with pytest.raises(SimulatorError, match="outside int8"):
        run_onnxruntime(path, {"x": np.array([0, 0, 300])})
    with pytest.raises(SimulatorError, match="missing input 'x'"):
        run_onnx_reference(path, {})
