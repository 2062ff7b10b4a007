"""The qlinear export is exact for every input: checked over every accumulator each layer can
produce, not over sample images.

For each MAC + requantize of a Program (the committed fashion_mnist 8w8a student under several
chip profiles, the digits student built for onnx-qlinear, small Programs built here for each
rounding mode and clamp), the exported graph's requantize is computed for every accumulator
of each output channel and compared with the simulator's ``fixed_point.requantize``:

- a QLinear op as onnxruntime computes it, from the graph's own initializers: the float32
  multiplier ``(x_scale * w_scale[c]) / y_scale``, ``rint(float32(acc) * m) + y_zp``
  saturated, then the DequantizeLinear -> QuantizeLinear after it, if any (``_qlinear``); a
  sample of accumulators (every one next to a change of the output) also through onnxruntime's
  own kernel, on a 1x1 QLinearConv / QGemm built around the node's scales;
- an explicit form by onnxruntime itself, on the exported nodes from the accumulator to the
  output, fed every accumulator.

The accumulators: ``[bias + sum_k min, bias + sum_k max]`` of ``(x - x_zp) * (w - w_zp)`` over
the input's type (computed here, not by the exporter). Every value is enumerated inside the
window beyond which the simulator's requantize saturates; the test asserts that both sides are
saturated at the window's ends, which, both being monotone in the accumulator, covers the rest
of the range; 2,048 random accumulators per channel from the whole range are checked as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from simulator.contract import (AccumulatorSpec, ArithmeticSpec, Overflow, RequantMode,
                                RequantSpec, RoundingMode)
from simulator.errors import ExportError
from simulator.execute import clamp_bounds, execute
from simulator.ir import load_program
from simulator.ir.builder import ProgramBuilder
from simulator.numerics import fixed_point as fp
from simulator.onnx_export import to_onnx_model
from simulator.onnx_export.run import run_exported
from simulator.profiles import load_profile

ort = pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]
FASHION = ROOT / "reports" / "fashion_mnist" / "8w8a" / "model.program"
CHUNK = 1 << 22          # accumulators (rows x channels) evaluated at once
SAMPLE = 2048            # random accumulators per channel over the whole reachable range


# ---------------------------------------------------------------------- the two sides

def _reachable(program, mac):
    """[lo, hi] per output channel, from the weights and the input's type."""
    x, w = program.tensors[mac.inputs[0]], program.tensors[mac.inputs[1]]
    d = np.array([x.dtype.qmin - x.zp_scalar, x.dtype.qmax - x.zp_scalar], np.int64)
    if mac.op.value == "matmul":  # any two operands of their types
        e = np.array([w.dtype.qmin - w.zp_scalar, w.dtype.qmax - w.zp_scalar], np.int64)
        k = x.shape[-1]
        return np.array([k * np.outer(d, e).min()]), np.array([k * np.outer(d, e).max()])
    data = w.data.astype(np.int64)
    zp = np.broadcast_to(np.asarray(w.zero_point, np.int64).ravel(), (data.shape[0],))
    terms = (data - zp.reshape((-1,) + (1,) * (data.ndim - 1))).reshape(data.shape[0], -1)
    lo = np.minimum(terms * d[0], terms * d[1]).sum(1)
    hi = np.maximum(terms * d[0], terms * d[1]).sum(1)
    bias = program.tensors[mac.inputs[2]].data.astype(np.int64) if len(mac.inputs) > 2 else 0
    return lo + bias, hi + bias


def _simulator(rq, program, spec):
    """The simulator's requantize of accumulators [k, C] (fixed_point, the profile's spec)."""
    out = program.tensors[rq.outputs[0]]
    lo, hi = clamp_bounds(out, rq.attrs)
    prepared = fp.prepare_scale(rq.attrs["real_multiplier"], spec)
    return lambda acc: fp.requantize(acc, 0, prepared, out.zp_scalar, lo, hi, axis=1)


def _init(model, name):
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def _qlinear_params(model, node):
    """(x_scale, w_scale, y_scale, y_zp) of a QLinearConv / QGemm / QLinearMatMul node."""
    i = node.input
    if node.op_type == "QGemm":
        return _init(model, i[1]), _init(model, i[4]), _init(model, i[7]), _init(model, i[8])
    return _init(model, i[1]), _init(model, i[4]), _init(model, i[6]), _init(model, i[7])


def _saturate(q, zp):
    info = np.iinfo(np.asarray(zp).dtype)
    return np.clip(q + np.int64(zp), info.min, info.max)


def _qlinear_op(params, acc):
    """onnxruntime's QLinear requantization of accumulators [k, C]."""
    xs, ws, ys, yz = params
    m = (np.float32(xs) * np.asarray(ws, np.float32).ravel()) / np.float32(ys)
    return _saturate(np.rint(acc.astype(np.float32) * m).astype(np.int64), yz)


def _qlinear(model, node):
    """The QLinear node's requantize and the DequantizeLinear -> QuantizeLinear after it."""
    params = _qlinear_params(model, node)
    readers = [n for n in model.graph.node if node.output[0] in n.input]
    chain = None
    if readers and readers[0].op_type == "DequantizeLinear":
        q = next(n for n in model.graph.node if readers[0].output[0] in n.input)
        chain = ([_init(model, v) for v in readers[0].input[1:]],
                 [_init(model, v) for v in q.input[1:]])

    def run(acc):
        y = _qlinear_op(params, acc)
        if chain:
            (s1, z1), (s2, z2) = chain
            real = (y - np.int64(z1)).astype(np.float32) * np.float32(s1)
            y = _saturate(np.rint(real / np.float32(s2)).astype(np.int64), z2)
        return y
    return run


def _session(model):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _explicit(model, acc_name, y_name, ndim):
    """onnxruntime on the exported nodes from the accumulator to the requantize's output."""
    producers = {o: n for n in model.graph.node for o in n.output}
    nodes, todo = [], [y_name]
    inits = {t.name: t for t in model.graph.initializer}
    used = set()
    while todo:
        v = todo.pop()
        if v == acc_name or v in inits or v in used or v == "":
            continue
        used.add(v)
        n = producers[v]
        if n not in nodes:
            nodes.append(n)
            todo.extend(n.input)
    nodes.reverse()
    nodes.sort(key=list(model.graph.node).index)
    needed = {i for n in nodes for i in n.input} & set(inits)
    out_type = next(vi for vi in model.graph.value_info if vi.name == y_name) \
        if any(vi.name == y_name for vi in model.graph.value_info) else \
        next(o for o in model.graph.output if o.name == y_name)
    dims = [f"d{k}" for k in range(ndim)]
    graph = helper.make_graph(
        nodes, "requantize", [helper.make_tensor_value_info(acc_name, onnx.TensorProto.INT32,
                                                            dims)],
        [helper.make_tensor_value_info(y_name, out_type.type.tensor_type.elem_type, dims)],
        [inits[n] for n in sorted(needed)])
    sub = helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    session = _session(sub)

    def run(acc):
        shaped = acc.astype(np.int32).reshape(acc.shape + (1,) * (ndim - 2))
        return session.run(None, {acc_name: shaped})[0].reshape(acc.shape).astype(np.int64)
    return run


def _onnx_requantize(model, program, mac, rq):
    """(kind, accumulators [k, C] -> the exported graph's integers) for one layer."""
    node = next(n for n in model.graph.node if n.name == mac.name)
    if node.op_type in ("QLinearConv", "QGemm", "QLinearMatMul"):
        return "qlinear", _qlinear(model, node)
    ndim = len(program.tensors[rq.outputs[0]].shape)
    return "explicit", _explicit(model, mac.outputs[0], rq.outputs[0], ndim)


# ---------------------------------------------------------------------- onnxruntime's kernel

def _digits(offsets, n):
    """x values (each 0..127) with offsets = x0 + 127 * (x1 + ... + x_{n-1}), x0 < 127."""
    x0, rest = offsets % 127, offsets // 127
    parts = [np.clip(rest - 127 * j, 0, 127) for j in range(n - 1)]
    return np.stack([x0] + parts, axis=-1)


def _kernel_sample(model, node, acc):
    """onnxruntime's own QLinearConv / QGemm with the node's scales on accumulators acc [P, C]
    (a 1x1 kernel over inputs that spell each accumulator in base 127, the bias its start)."""
    xs, ws, ys, yz = _qlinear_params(model, node)
    i = node.input
    x_type = _init(model, i[2]).dtype
    w_type = _init(model, i[5]).dtype
    p, c = acc.shape
    base = acc.min(0)
    offsets = acc - base
    n = 2 + int(offsets.max()) // (127 * 127)
    x = _digits(offsets, n)                                   # [P, C, n]
    w = np.array([1] + [127] * (n - 1))
    bias = base.astype(np.int32)
    zx = np.zeros((), x_type)
    zw = np.zeros(np.shape(ws) if node.op_type == "QGemm" else (), w_type)
    if node.op_type == "QLinearConv":
        feed = x.transpose(1, 2, 0).reshape(1, c * n, p, 1).astype(x_type)
        weight = np.broadcast_to(w.reshape(1, n, 1, 1), (c, n, 1, 1)).astype(w_type)
        inits = [xs, zx, weight, ws, zw, ys, yz, bias]
        op = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz",
                                              "b"], ["y"], kernel_shape=[1, 1], group=c)
        out_shape = [1, c, p, 1]
    else:
        feed = x.reshape(p, c * n).astype(x_type)
        weight = np.zeros((c, c * n), w_type)
        for k in range(c):
            weight[k, k * n:(k + 1) * n] = w
        inits = [xs, zx, weight, ws, zw, bias, ys, yz]
        op = helper.make_node("QGemm", ["x", "xs", "xz", "w", "ws", "wz", "b", "ys", "yz"],
                              ["y"], domain="com.microsoft", transB=1)
        out_shape = [p, c]
    names = [n_ for n_ in op.input if n_ != "x"]
    graph = helper.make_graph(
        [op], "kernel", [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(
            feed.dtype), list(feed.shape))],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(
            np.asarray(yz).dtype), out_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in zip(names, inits, strict=True)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    y = _session(m).run(None, {"x": feed})[0]
    got = y.reshape(c, p).T if node.op_type == "QLinearConv" else y
    return got.astype(np.int64), _qlinear_op((xs, ws, ys, yz), acc)


# ---------------------------------------------------------------------- the check

def check_every_accumulator(program, model, spec, rng) -> dict:
    """Every layer's exported requantize equals the simulator's on every reachable accumulator
    (module doc); returns counts per kind of layer and the accumulators checked."""
    seen = {"qlinear": 0, "explicit": 0, "accumulators": 0, "kernel_samples": 0}
    producers = {n.outputs[0]: n for n in program.nodes}
    for rq in (n for n in program.nodes if n.op.value == "requantize"):
        mac = producers[rq.inputs[0]]
        kind, exported = _onnx_requantize(model, program, mac, rq)
        simulator = _simulator(rq, program, spec)
        seen[kind] += 1
        a, b = _reachable(program, mac)
        out = program.tensors[rq.outputs[0]]
        lo, hi = clamp_bounds(out, rq.attrs)
        z = out.zp_scalar
        real = np.broadcast_to(np.asarray(rq.attrs["real_multiplier"], np.float64), a.shape)
        w0 = np.maximum(a, np.floor((lo - z - 1) / real).astype(np.int64) - 64)
        w1 = np.minimum(b, np.ceil((hi - z + 1) / real).astype(np.int64) + 64)
        ends = np.stack([w0, w1])
        for f in (simulator, exported):  # saturated at the window's ends (or at the range's)
            got = f(ends)
            assert np.all((got[0] == lo) | (w0 == a)), (rq.name, got[0])
            assert np.all((got[1] == hi) | (w1 == b)), (rq.name, got[1])
        changes = []
        rows = int(min(max(1, CHUNK // a.size), (w1 - w0).max() + 1))
        for start in range(0, int((w1 - w0).max()) + 1, rows):
            acc = np.minimum(w0 + start + np.arange(rows, dtype=np.int64)[:, None], w1)
            want, got = simulator(acc), exported(acc)
            bad = np.nonzero(want != got)
            assert bad[0].size == 0, (f"{rq.name}: channel {bad[1][0]} accumulator "
                                      f"{acc[bad][0]}: simulator {want[bad][0]}, onnx "
                                      f"{got[bad][0]}")
            seen["accumulators"] += int(np.sum(np.minimum(w1 - w0 + 1 - start, rows)
                                               .clip(0)))
            if kind == "qlinear":
                step = np.nonzero(np.diff(want, axis=0))
                changes.append((acc[step[0] + 1, step[1]], step[1]))
        sample = a + (rng.random((SAMPLE, a.size)) * (b - a + 1)).astype(np.int64)
        assert np.array_equal(simulator(sample), exported(sample)), rq.name
        if kind == "qlinear" and changes:
            seen["kernel_samples"] += _check_kernel(model, mac, changes, a.size, a, b)
    return seen


def _check_kernel(model, mac, changes, channels, a, b) -> int:
    """onnxruntime's kernel equals ``_qlinear_op`` next to every change of the output."""
    node = next(n for n in model.graph.node if n.name == mac.name)
    if node.op_type == "QLinearMatMul":
        return 0
    per = [[] for _ in range(channels)]
    for values, chans in changes:
        for v, ch in zip(values, chans, strict=True):
            per[ch].extend((v - 1, v))
    width = max(1, max(len(p) for p in per))
    acc = np.empty((width, channels), np.int64)
    for ch, vals in enumerate(per):
        vals = vals or [a[ch]]
        acc[:, ch] = np.resize(np.clip(vals, a[ch], b[ch]), width)
    got, want = _kernel_sample(model, node, acc)
    assert np.array_equal(got, want), mac.name
    return acc.size


# ---------------------------------------------------------------------- the Programs

def _notes(model) -> list[dict]:
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props.get("archnet.requant_adjustments", "[]"))


@pytest.mark.parametrize("chip, explicit", [("onnx-qlinear", "float32 ops"),
                                            ("k210-kpu", "int64 ops")])
def test_committed_student_every_accumulator(chip, explicit):
    """The fashion_mnist 8w8a student (built for k210-kpu, float64 multipliers) exported for
    its chip and for onnxruntime's own arithmetic: QLinear ops where float32 scales are
    proven, the rest explicit. (TFLite's rounding is enumerated on the small Programs below:
    on this one it takes ~25 s.)"""
    program = load_program(FASHION)
    profile = load_profile(chip)
    model = to_onnx_model(program, form="qlinear", profile=chip)
    again = to_onnx_model(program, form="qlinear", profile=chip)
    assert model.SerializeToString() == again.SerializeToString()  # byte-reproducible
    seen = check_every_accumulator(program, model, profile.arithmetic.requant,
                                   np.random.default_rng(0))
    assert seen["qlinear"] + seen["explicit"] == 16 and seen["accumulators"] > 10 ** 7
    forms = {n["node"]: n["form"] for n in _notes(model)}
    assert set(forms.values()) <= {"qlinear", explicit}
    assert sum(f == explicit for f in forms.values()) == seen["explicit"]
    # and the graph, run whole on onnxruntime, on random images
    shape = program.tensors["image"].shape
    image = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    got = run_exported_model(model, program, {"image": image})
    sim = execute(program, profile, {"image": image}).tensors
    assert all(np.array_equal(v, sim[k]) for k, v in got.items()) and len(got) > 20


@pytest.mark.parametrize("chip", ["edgetpu", "rk3588-npu-core", "ideal"])
def test_committed_student_other_chips(chip):
    """TFLite's double rounding, 16-bit multipliers, a 40-bit accumulator: the export proves
    every layer (or fails), and onnxruntime on the whole graph agrees on random images."""
    program = load_program(FASHION)
    profile = load_profile(chip)
    model = to_onnx_model(program, form="qlinear", profile=chip)
    rng = np.random.default_rng(2)
    for _ in range(2):
        image = rng.integers(0, 256, program.tensors["image"].shape).astype(np.uint8)
        got = run_exported_model(model, program, {"image": image})
        sim = execute(program, profile, {"image": image}).tensors
        assert all(np.array_equal(v, sim[k]) for k, v in got.items()) and len(got) > 20


def run_exported_model(model, program, inputs):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        onnx.save(model, path)
        return run_exported(path, program, inputs)


def test_digits_student_for_onnx_qlinear_has_onnx_multipliers_bit_for_bit(tmp_path):
    """Built for onnx-qlinear, the student computes its multipliers as onnxruntime does: every
    layer is a QLinear op whose float32 multiplier is the Program's, with the Program's scales."""
    from test_export import _student

    program, inputs = _student("onnx-qlinear", "8w8a", 4)
    model = to_onnx_model(program, form="qlinear")
    assert _notes(model) == []  # no weight scale moved, no channel equal in integers only
    seen = check_every_accumulator(program, model, load_profile("onnx-qlinear").arithmetic
                                   .requant, np.random.default_rng(2))
    assert seen["explicit"] == 0 and seen["qlinear"] == 15 and seen["kernel_samples"] > 10 ** 5
    for n in (n for n in model.graph.node if n.op_type in ("QLinearConv", "QGemm")):
        xs, ws, ys, _ = _qlinear_params(model, n)
        rq = next(r for r in program.nodes if r.op.value == "requantize" and
                  program.producer(r.inputs[0]).name == n.name)
        want = np.asarray(rq.attrs["real_multiplier"], np.float32)
        assert np.array_equal((np.float32(xs) * ws.astype(np.float32)) / np.float32(ys), want)


def _arith(rounding, bits=32, mode=RequantMode.MULTIPLIER_SHIFT, acc_bits=32):
    spec = ArithmeticSpec(AccumulatorSpec(acc_bits, Overflow.SATURATE),
                          RequantSpec(mode, rounding, bits))
    return SimpleNamespace(name=f"test-{rounding.value}-{bits}", arithmetic=spec)


def _small_program(seed: int, big_multiplier: bool = False):
    """u8 image -> conv (u8 -> s8, ReLU) -> conv (s8, clamp [-20, 90]: both bounds inside) ->
    flatten -> fully connected (s8 -> u8), and a matmul of a second input (s8) with constant
    keys; each multiplier is x_scale * w_scale / y_scale (in float64, as a student's)."""
    rng = np.random.default_rng(seed)
    b = ProgramBuilder(f"small{seed}")
    x = b.input("image", (2, 3, 6, 6), "u8", scale=1 / 255)
    q = b.input("query", (2, 4, 5), "s8", scale=0.05)

    def mac(op, src, shape, out, mult, dtype, **attrs):
        clamp = {k: attrs.pop(k) for k in ("clamp_min", "clamp_max") if k in attrs}
        xs = b.tensors[src].scale[0]
        ws = [float(m) * 0.05 / xs for m in mult]
        w = b.constant(f"{out}.weight", rng.integers(-128, 128, shape), "s8", scale=ws, axis=0)
        acc_scale = [xs * s for s in ws]
        bias = b.constant(f"{out}.bias", rng.integers(-3000, 3000, shape[0]), "s32",
                          scale=acc_scale, axis=0)
        acc = b.node(op, [src, w, bias], f"{out}.acc", scale=acc_scale, quant_axis=1, **attrs)
        return b.node("requantize", [acc], out, dtype=dtype, scale=0.05,
                      real_multiplier=[xs * s / 0.05 for s in ws], axis=1, **clamp)

    c1 = mac("conv2d", x, (4, 3, 3, 3), "c1", rng.uniform(1.0, 3.0, 4) if big_multiplier
             else rng.uniform(2e-3, 1e-2, 4), "s8", pads=[1, 1, 1, 1], clamp_min=0)
    c2 = mac("conv2d", c1, (4, 4, 3, 3), "c2", rng.uniform(1e-3, 5e-3, 4), "s8",
             pads=[1, 1, 1, 1], clamp_min=-20, clamp_max=90)
    flat = b.node("flatten", [c2], "flat", axis=1)
    fc = mac("fully_connected", flat, (5, 144), "fc", rng.uniform(5e-4, 3e-3, 5), "u8")
    qk_acc = b.node("matmul", [q, b.constant("keys", rng.integers(-128, 128, (5, 3)), "s8",
                                             scale=0.05)], "qk.acc", scale=0.0025)
    qk = b.node("requantize", [qk_acc], "qk", dtype="s8", scale=0.1, real_multiplier=[0.025])
    b.output(fc, qk)
    return b.build()


@pytest.mark.parametrize("rounding, bits", [(r, b) for r in RoundingMode for b in (16, 32)
                                             if r is not RoundingMode.TFLITE or b == 32])
def test_every_rounding_every_accumulator(rounding, bits):
    """Small Programs: conv with ReLU and a retype, a clamp inside both bounds, a fully
    connected layer, a matmul; multipliers above 1 too (TFLite's left shift)."""
    chip = _arith(rounding, bits)
    for seed, big in ((3, False), (4, True)):
        program = _small_program(seed, big)
        model = to_onnx_model(program, form="qlinear", profile=chip)
        seen = check_every_accumulator(program, model, chip.arithmetic.requant,
                                       np.random.default_rng(seed))
        assert seen["qlinear"] + seen["explicit"] == 4
        inputs = {"image": np.random.default_rng(seed).integers(0, 256, (2, 3, 6, 6))
                  .astype(np.uint8),
                  "query": np.random.default_rng(seed).integers(-128, 128, (2, 4, 5))
                  .astype(np.int8)}
        got = run_exported_model(model, program, inputs)
        sim = execute(program, chip.arithmetic, inputs).tensors
        assert all(np.array_equal(v, sim[k]) for k, v in got.items())


def test_float_scale_small_program_every_accumulator():
    chip = load_profile("onnx-qlinear")
    program = _small_program(5)
    model = to_onnx_model(program, form="qlinear", profile=chip)
    check_every_accumulator(program, model, chip.arithmetic.requant, np.random.default_rng(5))


def test_accumulator_beyond_the_profile_or_int32_is_an_error_naming_the_layer():
    program = _small_program(6)
    with pytest.raises(ExportError) as err:
        to_onnx_model(program, form="qlinear",
                      profile=_arith(RoundingMode.HALF_UP, 16, acc_bits=16))
    message = str(err.value)
    assert "'c1.acc'" in message and "16-bit accumulator" in message and "\n" not in message
