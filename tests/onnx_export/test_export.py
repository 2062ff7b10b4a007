"""ONNX export: bit-exact on onnxruntime at 8 bits, back to the same Program through import,
readable (and run) below 8 bits, refused cleanly where ONNX cannot say it.

The students are the digits ResNet-8 teacher converted and calibrated (no distillation: the
numbers only need to be a real network's), 8w8a for onnx-qlinear, 4w4a and 2w4a for ideal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from simulator.errors import ExportError
from simulator.execute import execute
from simulator.ir.builder import ProgramBuilder
from simulator.onnx_export import choose_form, export_onnx
from simulator.onnx_export.compare import compare_programs, program_differences
from simulator.onnx_export.run import run_exported
from simulator.onnx_import import import_onnx
from simulator.profiles import load_profile

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "reports" / "teachers" / "digits_resnet8.pt"
QLINEAR = load_profile("onnx-qlinear")


def _student(profile: str, bits: str, batch: int):
    torch = pytest.importorskip("torch")
    from archnet.data import load_dataset
    from archnet.lowering import calibrate_activations, calibrate_batchnorm, convert_resnet
    from archnet.teachers import load_teacher

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t, m = load_teacher(TEACHER)
        imgs = load_dataset("digits", split="train", labels=False).images[:256]
        s = convert_resnet(t, profile, bits, m["input_shape"])
        calibrate_batchnorm(s, imgs)
        calibrate_activations(s, imgs)
        program = s.export((batch, *m["input_shape"]))
        test = load_dataset("digits", split="test", labels=False).images[:batch]
    finally:
        torch.set_num_threads(threads)
    image = np.rint(np.clip(test.numpy(), 0, 1) * 255).astype(np.uint8)  # QInput's grid
    return program, {"image": image}


@pytest.fixture(scope="module")
def s8(tmp_path_factory):
    program, inputs = _student("onnx-qlinear", "8w8a", 32)
    path = export_onnx(program, tmp_path_factory.mktemp("s8") / "student8.onnx")
    return program, inputs, path


@pytest.fixture(scope="module", params=["4w4a", "2w4a"])
def narrow(request):
    return (request.param, *_student("ideal", request.param, 8))


def _props(path) -> dict:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def _compare(program, inputs, got) -> tuple[int, list[str]]:
    sim = execute(program, QLINEAR, inputs).tensors
    compared, bad = 0, []
    for name, value in got.items():
        assert value.shape == sim[name].shape, name
        compared += value.size
        n = int(np.count_nonzero(value != sim[name]))
        if n:
            bad.append(f"{name}: {n} of {value.size}")
    return compared, bad


# ---------------------------------------------------------------------- 8 bits: qlinear

def test_student_8w8a_onnxruntime_equals_simulator_on_every_tensor(s8):
    program, inputs, path = s8
    assert choose_form(program) == "qlinear" and _props(path)["archnet.form"] == "qlinear"
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"QLinearConv", "QGemm"} <= ops and not ops & {"Conv", "Gemm", "MatMul"}
    got = run_exported(path, program, inputs)  # every node's output, optimisations off
    # every tensor but the int32 accumulators, which live inside QLinearConv / QGemm
    accumulators = {n.outputs[0] for n in program.nodes if n.op.value in ("conv2d",
                                                                          "fully_connected")}
    assert set(got) == {n for n, t in program.tensors.items() if t.data is None} - accumulators
    compared, bad = _compare(program, inputs, got)
    assert not bad, bad
    assert compared > 1_000_000  # 32 images, every activation of every layer
    # onnxruntime as users run it: fused kernels, same logits
    optimised = run_exported(path, program, inputs, intermediates=False, optimize=True)
    assert list(optimised) == program.outputs
    assert not _compare(program, inputs, optimised)[1]


def test_student_8w8a_writes_the_programs_own_scales(s8):
    """Built for onnx-qlinear, the student's multipliers are onnxruntime's own float32
    arithmetic on its scales: every layer is a QLinear op with the Program's scales, nothing
    adjusted (test_exact_requant proves the integers for every accumulator)."""
    program, _, path = s8
    props = _props(path)
    assert "archnet.requant_adjustments" not in props
    assert json.loads(props["archnet.profile"]) == "onnx-qlinear"
    model = onnx.load(path)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type in ("QLinearConv", "QGemm")):
        w = program.tensors[node.input[3]]
        assert np.array_equal(inits[node.input[4]], np.asarray(w.scale, np.float32))


def test_student_8w8a_round_trip_gives_the_same_program(s8):
    program, inputs, path = s8
    back = import_onnx(path)
    assert back.executable
    c = compare_programs(program, back)  # scales and multipliers equal as float32
    assert c.diffs == [] and c.multiplier_channels == []
    assert [n.op for n in back.nodes] == [n.op for n in program.nodes]
    # tensors keep their names, except the importer's accumulators
    renamed = {a for a, b in c.pairs.items() if a != b}
    assert renamed == {n.outputs[0] for n in program.nodes if n.op.value in
                       ("conv2d", "fully_connected")}
    # and the imported Program computes the same integers
    a = execute(program, QLINEAR, inputs).tensors
    b = execute(back, QLINEAR, inputs).tensors
    for name, other in c.pairs.items():
        if program.tensors[name].data is None:
            assert np.array_equal(a[name], b[other]), name


def _onnx_consistent_program(batch: int = 4):
    """u8 image -> conv (u8 -> s8, ReLU) -> maxpool -> concat with a second conv (s8) ->
    flatten -> fully connected (s8 -> s8), multipliers computed as ONNX computes them."""
    rng = np.random.default_rng(5)
    f32 = np.float32
    b = ProgramBuilder("onnx_consistent")
    x = b.input("image", (batch, 2, 8, 8), "u8", scale=float(f32(1 / 255)))
    xs, s1, s2 = f32(1 / 255), f32(0.037), f32(0.051)

    def mac(op, src, src_scale, shape, out, out_scale, out_type, **attrs):
        clamp = attrs.pop("clamp", None)
        ws = rng.uniform(0.002, 0.01, shape[0]).astype(f32)
        w = b.constant(f"{out}.weight", rng.integers(-128, 128, shape), "s8",
                       scale=ws.tolist(), axis=0)
        bias = b.constant(f"{out}.bias", rng.integers(-2000, 2000, shape[0]), "s32",
                          scale=(src_scale * ws).astype(np.float64).tolist(), axis=0)
        acc = b.node(op, [src, w, bias], f"{out}.acc",
                     scale=(src_scale * ws).astype(np.float64).tolist(), quant_axis=1, **attrs)
        mult = [float(v) for v in (src_scale * ws) / out_scale]  # float32, as onnxruntime
        return b.node("requantize", [acc], out, dtype=out_type, scale=float(out_scale),
                      real_multiplier=mult, axis=1, **({"clamp_min": 0} if clamp else {}))

    def conv(src, src_scale, cin, cout, out, out_scale, out_type, relu=False):
        return mac("conv2d", src, src_scale, (cout, cin, 3, 3), out, out_scale, out_type,
                   pads=[1, 1, 1, 1], **({"clamp": True} if relu else {}))

    c1 = conv(x, xs, 2, 4, "c1", s1, "s8", relu=True)
    p1 = b.node("maxpool2d", [c1], "p1", kernel=[2, 2], strides=[2, 2])
    c2 = conv(p1, s1, 4, 4, "c2", s1, "s8")
    cat = b.node("concat", [p1, c2], "cat", axis=1)
    flat = b.node("flatten", [cat], "flat", axis=1)
    y = mac("fully_connected", flat, s1, (10, 8 * 4 * 4), "logits", s2, "s8")
    b.output(y)
    program = b.build()
    image = rng.integers(0, 256, (batch, 2, 8, 8)).astype(np.uint8)
    return program, {"image": image}


def test_onnx_consistent_program_round_trips_exactly(tmp_path):
    """Float32 scales and ONNX's own multipliers: nothing is adjusted, everything identical."""
    program, inputs = _onnx_consistent_program()
    path = export_onnx(program, tmp_path / "small.onnx", form="qlinear")
    assert "archnet.requant_adjustments" not in _props(path)
    assert program_differences(program, import_onnx(path)) == []
    got = run_exported(path, program, inputs)
    compared, bad = _compare(program, inputs, got)
    assert not bad and compared == sum(v.size for v in got.values()) > 0


# ---------------------------------------------------------------------- below 8 bits

@pytest.mark.parametrize("form", ["int4", "qonnx"])
def test_narrow_students_are_checked_recorded_and_run(narrow, form, tmp_path):
    bits, program, inputs = narrow
    assert choose_form(program) == "int4"
    path = export_onnx(program, tmp_path / f"{bits}.onnx", form=form)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    dtypes = json.loads(_props(path)["archnet.dtypes"])
    w_bits = int(bits[0])
    weights = [n.inputs[1] for n in program.nodes if n.op.value == "conv2d"]
    assert {dtypes[w] for w in weights} >= {f"s{w_bits}"}
    inits = {t.name: t for t in model.graph.initializer}
    if form == "int4":
        types = {inits[w].data_type for w in weights if w in inits}
        assert onnx.TensorProto.INT4 in types
        typed = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
        assert onnx.TensorProto.UINT4 in typed.values() and onnx.TensorProto.INT4 in typed.values()
        runs = [run_exported(path, program, inputs, optimize=o) for o in (False, True)]
    else:
        quants = [n for n in model.graph.node if n.op_type == "Quant"]
        widths = {int(onnx.numpy_helper.to_array(inits[n.input[3]])) for n in quants}
        assert {w_bits, 4, 8, 32} <= widths
        assert all(n.domain == "qonnx.custom_op.general" for n in quants)
        runs = [run_exported(path, program, inputs)]  # onnx.reference with QONNX Quant
    for got in runs:
        compared, bad = _compare(program, inputs, got)
        # float compute between the quantizers: equal unless float32 rounding crosses a .5
        differing = sum(int(b.split(": ")[1].split()[0]) for b in bad)
        assert compared > 100_000 and differing <= compared * 1e-3, bad
        assert not any(b.startswith("head.fc:") for b in bad) or differing <= 8


def test_exports_import_for_estimation(narrow, tmp_path):
    bits, program, _ = narrow
    macs = sum(n.op.value == "conv2d" for n in program.nodes)
    for form in ("int4", "qonnx"):
        estimate = import_onnx(export_onnx(program, tmp_path / f"{form}.onnx", form=form))
        assert not estimate.executable
        assert sum(n.op.value == "conv2d" for n in estimate.nodes) == macs


def test_qdq_form_runs_at_8_bits(s8, tmp_path):
    program, inputs, _ = s8
    small = {"image": inputs["image"]}
    path = export_onnx(program, tmp_path / "qdq.onnx", form="qdq")
    model = onnx.load(path)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= \
        {n.op_type for n in model.graph.node}
    compared, bad = _compare(program, small, run_exported(path, program, small, optimize=True,
                                                          intermediates=False))
    assert not bad and compared > 0


# ---------------------------------------------------------------------- refusals

def _with_fallback():
    b = ProgramBuilder("with_fallback")
    x = b.input("x", (1, 4), "s8", scale=0.1)
    y = b.node("fallback", [x], "y", dtype="s8", scale=0.1, out_shape=(1, 4),
               name="mystery", op_type="Erf", attributes={})
    b.output(y)
    return b.build()


@pytest.mark.parametrize("form", ["auto", "qlinear", "qdq", "int4", "qonnx"])
def test_fallback_is_refused_and_nothing_is_written(form, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError) as err:
        export_onnx(_with_fallback(), out / "model.onnx", form=form)
    message = str(err.value)
    assert "'mystery'" in message and "fallback" in message and "expresses" in message
    assert "\n" not in message
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("form", ["auto", "qlinear", "qdq", "int4", "qonnx"])
def test_masked_softmax_is_refused_in_one_line_naming_the_node(form, tmp_path):
    # no form expresses softmax; the key mask (an input without a scale) must not be what the
    # message talks about
    b = ProgramBuilder("masked")
    x = b.input("x", (2, 1, 3, 3), "s8", scale=0.1)
    m = b.input("key_mask", (2, 1, 1, 3), "u8")
    b.output(b.node("softmax", [x, m], "y", dtype="u8", scale=1 / 256, name="attention_probs",
                    exp_table=list(range(256, 0, -1))))
    with pytest.raises(ExportError) as err:
        export_onnx(b.build(), tmp_path / "model.onnx", form=form)
    message = str(err.value)
    assert "'attention_probs'" in message and "masked softmax is not exportable" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_refusal_keeps_an_existing_file(tmp_path):
    from simulator.examples import example_program

    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ExportError, match=r"node 'residual' \(add\).*form 'qlinear'"):
        export_onnx(example_program(), target, form="qlinear")
    assert target.read_bytes() == b"previous" and len(list(tmp_path.iterdir())) == 1


def test_sub8_program_refused_by_qlinear(narrow, tmp_path):
    _, program, _ = narrow
    with pytest.raises(ExportError, match="8-bit integers only .* form='int4' or form='qonnx'"):
        export_onnx(program, tmp_path / "x.onnx", form="qlinear")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- command line

def _cli(capsys, *argv):
    from simulator.cli import run
    from simulator.onnx_export.cli import add_commands

    parser = argparse.ArgumentParser(prog="archnet")
    add_commands(parser.add_subparsers(dest="command"))
    code = run(parser, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_export_and_one_line_errors(tmp_path, capsys):
    from simulator.ir import save_program

    program, _ = _onnx_consistent_program()
    save_program(program, tmp_path / "good.program")
    save_program(_with_fallback(), tmp_path / "fallback.program")
    code, out, err = _cli(capsys, "export-onnx", str(tmp_path / "good.program"),
                          "--out", str(tmp_path / "good.onnx"))
    assert code == 0 and "form qlinear" in out and (tmp_path / "good.onnx").is_file()
    code, out, err = _cli(capsys, "export-onnx", str(tmp_path / "good.program"),
                          "--out", str(tmp_path / "k210.onnx"), "--chip", "k210-kpu")
    assert code == 0 and _props(tmp_path / "k210.onnx")["archnet.profile"] == '"k210-kpu"'
    (tmp_path / "k210.onnx").unlink()
    for argv, text in [
        ([str(tmp_path / "missing.program"), "--out", str(tmp_path / "m.onnx")], "no such"),
        ([str(tmp_path / "good.program"), "--out", str(tmp_path / "g.txt")], "must end in .onnx"),
        ([str(tmp_path / "fallback.program"), "--out", str(tmp_path / "f.onnx")], "'mystery'"),
        ([str(tmp_path / "good.program"), "--out", str(tmp_path / "o.onnx"), "--opset", "9"],
         "opset >= 13"),
        ([str(tmp_path / "good.program"), "--out", str(tmp_path / "c.onnx"), "--chip",
          "no-such-chip"], "no-such-chip"),
    ]:
        code, out, err = _cli(capsys, "export-onnx", *argv)
        assert code == 2 and text in err and err.count("\n") == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["fallback.program", "good.onnx", "good.program"]


# ---------------------------------------------------------------------- the importer's side

def test_import_folds_only_an_integer_identity_dequantize_quantize(tmp_path):
    """requantize -> DequantizeLinear -> QuantizeLinear is one requantize only when the pair
    returns every integer; with another scale it stays three nodes (and still runs exactly)."""
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    from simulator.onnx_import.peers import run_onnxruntime

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, 2, 6, 6)).astype(np.uint8)
    for q_scale, folded in ((0.04, True), (0.06, False)):
        inits = {"xs": np.float32(0.02), "xz": np.uint8(0),
                 "w": rng.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8),
                 "ws": np.full(3, 0.01, np.float32), "wz": np.int8(0),
                 "ys": np.float32(0.04), "yz": np.uint8(128), "qs": np.float32(q_scale),
                 "qz": np.int8(0)}
        nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                                  ["c"], pads=[1, 1, 1, 1]),
                 helper.make_node("DequantizeLinear", ["c", "ys", "yz"], ["r"]),
                 helper.make_node("QuantizeLinear", ["r", "qs", "qz"], ["y"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.UINT8,
                                                                             list(x.shape))],
                                  [helper.make_tensor_value_info("y", TP.INT8,
                                                                 [1, 3, 6, 6])],
                                  [numpy_helper.from_array(np.asarray(v), k)
                                   for k, v in inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        model.ir_version = 10
        path = tmp_path / f"fold_{folded}.onnx"
        onnx.save(model, path)
        program = import_onnx(path)
        ops = [n.op.value for n in program.nodes]
        assert ops == (["conv2d", "requantize"] if folded else
                       ["conv2d", "requantize", "dequantize", "quantize"])
        y = execute(program, QLINEAR, {"x": x}).outputs["y"]
        assert np.array_equal(y, run_onnxruntime(path, {"x": x})["y"])
