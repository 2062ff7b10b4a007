"""The teacher's graph on each chip: ONNX export, estimate-only import, per-profile latency rows;
and the importer's fold of a Linear's bias Add into its fully_connected, which that graph needs
(nn.Linear on [N, T, H] exports as MatMul then Add)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from archnet.errors import TeacherError
from simulator.ir.ops import OpKind
from simulator.onnx_import import import_onnx
from simulator.profiles import list_profiles

GELU_PARTS = {"Gelu", "Erf"}          # one node at opset 20, erf and its arithmetic before
LAYERNORM_PARTS = {"LayerNormalization", "ReduceMean", "Pow", "Sqrt"}


def _fallback_types(program) -> set[str]:
    return {n.attrs["op_type"] for n in program.nodes if n.op is OpKind.FALLBACK}


# ----------------------------------------------------------------------------- bias fold

def _linear(tmp_path, bias_shape, x_shape=(1, 5, 8), extra_reader=False):
    """x @ w (+ bias): what torch.onnx writes for nn.Linear on a rank-3 input."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 6)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(bias_shape, np.float32), "bias")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("Add", ["h", "bias"], ["y"], name="proj_bias")]
    outputs = ["y"]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["h"], ["r"], name="other_reader"))
        outputs.append("r")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, x_shape)],
                              [helper.make_empty_tensor_value_info(o) for o in outputs], inits)
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    path = tmp_path / "linear.onnx"
    onnx.save(model, path)
    return import_onnx(path, estimate_only=True)


@pytest.mark.parametrize("bias_shape,x_shape", [((6,), (1, 5, 8)), ((1, 1, 6), (1, 5, 8)),
                                                ((6,), (5, 8))])
def test_linear_bias_folds_into_fully_connected(tmp_path, bias_shape, x_shape):
    program = _linear(tmp_path, bias_shape, x_shape)
    assert not _fallback_types(program)
    fc = next(n for n in program.nodes if n.op is OpKind.FULLY_CONNECTED)
    assert len(fc.inputs) == 3 and program.tensors[fc.inputs[2]].shape == (6,)
    assert program.metadata["folded_bias"] == [{"node": "proj_bias", "into": "proj"}]
    assert program.tensors[program.outputs[0]].shape == tuple(x_shape[:-1]) + (6,)


@pytest.mark.parametrize("bias_shape,extra_reader", [((5, 1), False), ((1, 5, 6), False),
                                                     ((6,), True)])
def test_other_adds_after_a_matmul_stay_fallbacks(tmp_path, bias_shape, extra_reader):
    program = _linear(tmp_path, bias_shape, extra_reader=extra_reader)
    assert "Add" in _fallback_types(program) and "folded_bias" not in program.metadata
    fc = next(n for n in program.nodes if n.op is OpKind.FULLY_CONNECTED)
    assert len(fc.inputs) == 2


# ----------------------------------------------------------------------------- the teacher graph

@pytest.fixture(scope="module")
def tiny_program(tiny_teacher):
    from archnet.text.teacher_graph import teacher_program
    return teacher_program(tiny_teacher, 16)


def _macs(shape, seq_len: int) -> int:
    """Linear layers (q, k, v, out, up, down) plus attention's two matmuls, per layer."""
    h, i, T = shape.hidden, shape.intermediate, seq_len
    return shape.layers * (T * (4 * h * h + 2 * h * i) + 2 * T * T * h)


def test_tiny_teacher_program(tiny_program, tiny_teacher):
    p = tiny_program
    assert not p.executable and p.name == f"teacher {tiny_teacher.name}"
    assert list(p.inputs) == ["input_ids", "attention_mask"]
    assert p.tensors[p.outputs[0]].shape == (1, 16, 32)
    types = _fallback_types(p)
    assert "Gather" in types            # word embeddings
    assert types & LAYERNORM_PARTS
    # GELU, however the exporter spells it, is one activation function per layer
    gelu = [n for n in p.nodes if n.op is OpKind.LOOKUP_TABLE and n.attrs["function"] == "gelu"]
    assert len(gelu) == tiny_teacher.config.layers and not types & GELU_PARTS
    fcs = [n for n in p.nodes if n.op is OpKind.FULLY_CONNECTED]
    assert len(fcs) == 6 * 2 and all(len(n.inputs) == 3 for n in fcs)  # biases folded
    assert p.metadata["teacher_fingerprint"] == tiny_teacher.fingerprint


def test_tiny_teacher_latency_rows(tiny_program, tiny_teacher):
    from archnet.text.teacher_graph import latency_rows
    chips = list_profiles()
    rows = latency_rows(tiny_program, None)
    assert [r["chip"] for r in rows] == chips and len(chips) >= 8
    for r in rows:
        assert r["latency_s"] > 0 and r["host_latency_s"] > 0 and r["host_ops"] > 0
        assert r["host_latency_s"] <= r["latency_s"] * (1 + 1e-9)
        assert r["macs"] == _macs(tiny_teacher.config, 16)
        assert sum(r["fallback_types"].values()) == r["host_ops"]
        assert "LayerNormalization" in r["fallback_types"] and "Gather" in r["fallback_types"]


def test_rows_from_a_spec_and_one_chip(tiny_bert_dir):
    from archnet.text.teacher_graph import teacher_latency_rows
    rows = teacher_latency_rows(tiny_bert_dir, 8, "ideal", batch=2)
    assert len(rows) == 1 and rows[0]["chip"] == "ideal"
    assert rows[0]["seq_len"] == 8 and rows[0]["batch"] == 2
    from archnet.text.teacher import load_text_teacher
    assert rows[0]["macs"] == 2 * _macs(load_text_teacher(tiny_bert_dir).config, 8)


@pytest.mark.parametrize("seq_len,batch,message", [
    (41, 1, "seq_len 41 is above its 40 positions"), (0, 1, "seq_len must be a positive"),
    (8, 0, "batch must be a positive")])
def test_teacher_program_arguments(tiny_teacher, seq_len, batch, message):
    from archnet.text.teacher_graph import teacher_program
    with pytest.raises(TeacherError, match=message):
        teacher_program(tiny_teacher, seq_len, batch)


def test_minilm_graph(minilm):
    from archnet.text.teacher_graph import teacher_latency_rows
    rows = teacher_latency_rows(minilm, 16, ["ideal", "rk3588-npu-core"])
    assert [r["macs"] for r in rows] == [_macs(minilm.config, 16)] * 2
    for r in rows:
        assert r["latency_s"] > r["host_latency_s"] > 0
        assert r["fallback_types"]["LayerNormalization"] == 2 * minilm.config.layers + 1
    # GELU runs where the activation unit has it (ideal: any table); the RK NPUs' has no GELU
    ideal, rk = rows
    assert "lookup_table" not in ideal["fallback_types"]
    assert rk["fallback_types"]["lookup_table"] == minilm.config.layers
