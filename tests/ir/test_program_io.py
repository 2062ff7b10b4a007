"""The Program file: exact round trips, strict validation, and no crash on any damaged file."""

import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import given, strategies as st

from simulator.contract import AccumulatorSpec, ArithmeticSpec, Overflow, RequantMode, RequantSpec
from simulator.contract import RoundingMode, SaturationPoint
from simulator.errors import ProgramError
from simulator.examples import example_input, example_program
from simulator.execute import execute
from simulator.ir import ProgramBuilder, load_program, save_program
from simulator.ir.program import HASH_KEY, program_content_hash

ARITH = ArithmeticSpec(AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL),
                       RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE, 32))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("prog") / "example.program"
    save_program(example_program(), path)
    return path


def test_round_trip_is_exact(saved, tmp_path):
    original = example_program()
    loaded = load_program(saved)
    assert loaded.nodes == original.nodes
    assert loaded.inputs == original.inputs and loaded.outputs == original.outputs
    for name, t in original.tensors.items():
        u = loaded.tensors[name]
        assert (u.shape, u.dtype, u.scale, u.zero_point, u.axis) == (t.shape, t.dtype, t.scale,
                                                                      t.zero_point, t.axis)
        if t.data is not None:
            assert np.array_equal(u.data, t.data) and u.data.dtype == t.data.dtype
    again = save_program(loaded, tmp_path / "again.program")
    assert load_program(again).nodes == loaded.nodes
    x = {"image": example_input()}
    a = execute(original, ARITH, x, backend="reference").outputs["logits"]
    b = execute(loaded, ARITH, x, backend="reference").outputs["logits"]
    assert np.array_equal(a, b)


def _doc(path):
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("program.json")), {n: zf.read(n) for n in zf.namelist()}


def _restamp(doc, members):
    """``doc`` with the content hash of its (mutated) self: the validation behind the hash check
    is what these tests exercise."""
    tensors = doc.get("tensors") if isinstance(doc, dict) else None
    if not isinstance(tensors, dict):
        return doc
    indexes = sorted({t["constant"] for t in tensors.values()
                      if isinstance(t, dict) and type(t.get("constant")) is int
                      and f"constants/{t['constant']}.npy" in members})
    arrays = [np.load(io.BytesIO(members[f"constants/{i}.npy"]), allow_pickle=False) for i in indexes]
    doc[HASH_KEY] = program_content_hash(doc, arrays)
    return doc


def _write(path, doc, members, restamp=True):
    if restamp:
        doc = _restamp(doc, members)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, json.dumps(doc) if name == "program.json" else data)
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["nodes"][0].update(op="conv7"), "unknown op 'conv7'"),
    (lambda d: d["nodes"][0]["attrs"].update(strides=[1]), "strides must have 2 values"),
    (lambda d: d["nodes"][0]["attrs"].update(colour=1), "unknown attribute"),
    (lambda d: d["tensors"]["stem_out"].update(shape=[1, 8, 16, 15]), "declared"),
    (lambda d: d["tensors"]["image"].update(zero_point=[300]), "zero point"),
    (lambda d: d["nodes"].reverse(), "used before it is produced"),
    (lambda d: d.update(version=99), "version 99 unsupported"),
    (lambda d: d["tensors"]["pool"].update(scale=[0.0]), "must be finite and > 0"),
    (lambda d: d["tensors"]["stem_w"].update(dtype="s3"), "data outside s3"),
    (lambda d: d.pop("nodes"), "missing field 'nodes'"),
])
def test_invalid_programs_name_the_fault(saved, tmp_path, mutate, message):
    doc, members = _doc(saved)
    mutate(doc)
    with pytest.raises(ProgramError, match=message) as err:
        load_program(_write(tmp_path / "bad.program", doc, members))
    assert "\n" not in str(err.value) and "bad.program" in str(err.value)


def test_concat_needs_one_scale():
    b = ProgramBuilder("c")
    x = b.input("x", (1, 2, 3, 3), "u8", scale=0.1)
    y = b.input("y", (1, 2, 3, 3), "u8", scale=0.2)
    b.tensor("z", (1, 4, 3, 3), "u8", scale=0.1)
    from simulator.ir.program import make_node
    b.nodes.append(make_node("cat", "concat", [x, y], ["z"], {"axis": 1}))
    b.output("z")
    with pytest.raises(ProgramError, match="insert a requantize"):
        b.build()


def _softmax_with_mask(x_shape, mask_shape, mask_dtype="u8", through_builder=True):
    b = ProgramBuilder("attention")
    x = b.input("x", x_shape, "s8", scale=0.1)
    m = b.input("mask", mask_shape, mask_dtype)
    attrs = {"axis": -1, "exp_table": list(range(256, 0, -1))}
    if through_builder:
        b.output(b.node("softmax", [x, m], "y", dtype="u8", scale=1 / 256, **attrs))
    else:  # declared by hand: only Program.validate stands between it and execution
        from simulator.ir.program import make_node
        b.tensor("y", x_shape, "u8", scale=1 / 256)
        b.nodes.append(make_node("y", "softmax", [x, m], ["y"], attrs))
        b.output("y")
    return b.build()


@pytest.mark.parametrize("mask_shape", [(2, 1, 1, 5), (1, 5), (5,), (2, 3, 4, 5), (1, 1, 1, 1)])
def test_softmax_takes_a_key_mask_that_broadcasts_to_its_input(mask_shape, tmp_path):
    program = _softmax_with_mask((2, 3, 4, 5), mask_shape)
    assert load_program(save_program(program, tmp_path / "a.program")).nodes[0].inputs == \
        ("x", "mask")


@pytest.mark.parametrize("through_builder", [True, False])
@pytest.mark.parametrize("mask_shape", [(2, 1, 1, 4), (3, 5), (1, 2, 3, 4, 5), (2, 1, 1, 5, 1)])
def test_softmax_key_mask_that_does_not_broadcast_is_refused(mask_shape, through_builder):
    with pytest.raises(ProgramError, match=r"node 'y'.*key mask shape .* does not broadcast to "
                                           r"the input shape \(2, 3, 4, 5\)") as err:
        _softmax_with_mask((2, 3, 4, 5), mask_shape, through_builder=through_builder)
    assert "\n" not in str(err.value)


def test_softmax_key_mask_must_be_an_integer_tensor():
    with pytest.raises(ProgramError, match="softmax key mask 'mask' must be an integer tensor"):
        _softmax_with_mask((2, 5), (2, 5), "f32", through_builder=False)


def test_softmax_takes_at_most_a_key_mask():
    b = ProgramBuilder("three")
    x = b.input("x", (2, 5), "s8", scale=0.1)
    m = b.input("mask", (2, 5), "u8")
    b.tensor("y", (2, 5), "u8", scale=1 / 256)
    from simulator.ir.program import make_node
    b.nodes.append(make_node("y", "softmax", [x, m, m], ["y"], {"exp_table": [1] * 256}))
    b.output("y")
    with pytest.raises(ProgramError, match="softmax takes 1..2 inputs, has 3"):
        b.build()


def test_missing_and_non_program_files(tmp_path):
    with pytest.raises(ProgramError, match="no such Program file"):
        load_program(tmp_path / "nope.program")
    (tmp_path / "text.program").write_text("hello")
    with pytest.raises(ProgramError, match="not a zip archive"):
        load_program(tmp_path / "text.program")


@given(data=st.data())
def test_fuzzed_files_fail_cleanly(saved, tmp_path_factory, data):
    raw = saved.read_bytes()
    kind = data.draw(st.sampled_from(["truncate", "flip", "random", "json"]))
    if kind == "truncate":
        blob = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        blob = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
        blob = bytes(blob)
    elif kind == "random":
        blob = data.draw(st.binary(max_size=2048))
    else:
        doc, members = _doc(saved)
        json_value = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) |
                                  st.floats(allow_nan=True) | st.text(max_size=5),
                                  lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                                  max_leaves=6)
        for _ in range(data.draw(st.integers(1, 3))):
            target = data.draw(st.sampled_from(["tensor", "node", "top"]))
            tensors, nodes = doc.get("tensors"), doc.get("nodes")
            if target == "tensor" and isinstance(tensors, dict) and tensors:
                t = tensors[data.draw(st.sampled_from(sorted(tensors)))]
                if isinstance(t, dict):
                    t[data.draw(st.sampled_from(sorted(t) + ["extra"]))] = data.draw(json_value)
            elif target == "node" and isinstance(nodes, list) and nodes:
                n = nodes[data.draw(st.integers(0, len(nodes) - 1))]
                key = data.draw(st.sampled_from(["op", "inputs", "outputs", "attrs", "name"]))
                if isinstance(n, dict) and key == "attrs" and isinstance(n.get("attrs"), dict) \
                        and n["attrs"] and data.draw(st.booleans()):
                    n["attrs"][data.draw(st.sampled_from(sorted(n["attrs"])))] = data.draw(json_value)
                elif isinstance(n, dict):
                    n[key] = data.draw(json_value)
            else:
                doc[data.draw(st.sampled_from(sorted(doc)))] = data.draw(json_value)
        if data.draw(st.booleans()):  # else the content hash alone must catch it
            try:
                _restamp(doc, members)
            except Exception:  # a mutation no hash can be computed for: left as it is
                pass
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, content in members.items():
                zf.writestr(name, json.dumps(doc) if name == "program.json" else content)
        blob = buf.getvalue()
    path = tmp_path_factory.mktemp("fuzz") / "f.program"
    path.write_bytes(blob)
    try:
        program = load_program(path)
    except ProgramError as exc:
        assert "\n" not in str(exc)
        return
    program.validate()
