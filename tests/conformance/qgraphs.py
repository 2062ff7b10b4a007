"""Generated integer ONNX graphs and the three-way check: simulator, onnxruntime, onnx.reference.

Each case is a tiny ONNX model built with ``onnx.helper`` plus its inputs. ``check_case``
writes it to disk, imports it with ``import_onnx``, executes it with the onnx-qlinear arithmetic
and compares every value the simulator computes under an ONNX name (outputs and intermediates)
with onnxruntime's and the ONNX reference evaluator's, element by element, exactly.

The simulator must equal onnxruntime everywhere. The reference evaluator is run node by node
on onnxruntime's inputs and must equal onnxruntime too, except for these documented
disagreements of onnx.reference 1.23 (found by these tests; onnxruntime follows the spec in
each, and the simulator is compared with onnxruntime there):

1. QLinearConv/QLinearMatMul add the output zero point *before* rounding half to even:
   an exact tie with an odd zero point rounds the other way (``explain_reference_mismatch``).
2. QLinearConv/QLinearMatMul multiply in float64, onnxruntime in float32: where the float32
   product lands on a .5 the exact product does not, they round apart (same function).
3. MaxPool with auto_pad=SAME_LOWER and odd total padding pads at the end, not the beginning.
4. MaxPool of int8 with padding pads with NaN, which raises ValueError on some paths.
5. DequantizeLinear has no implementation before opset 19 in a whole-model run.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from simulator.contract import (AccumulatorSpec, ArithmeticSpec, Overflow, RequantMode,
                                RequantSpec, RoundingMode, SaturationPoint)
from simulator.errors import SimulatorError
from simulator.execute import execute
from simulator.ir.ops import OpKind
from simulator.onnx_import import import_onnx
from simulator.onnx_import.peers import run_onnx_reference, run_onnxruntime

OPSET = 21
NP_OF = {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8, TensorProto.INT32: np.int32,
         TensorProto.FLOAT: np.float32}

ONNX_QLINEAR_SPEC = ArithmeticSpec(
    AccumulatorSpec(32, Overflow.WRAP, SaturationPoint.FINAL),
    RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN, 32))


def onnx_qlinear_arithmetic():
    """The onnx-qlinear chip profile when the profile loader can give it, else its spec."""
    try:
        from simulator.profiles import load_profile
    except ImportError:  # no profile loader: the spec the profile must carry
        return ONNX_QLINEAR_SPEC
    try:
        return load_profile("onnx-qlinear")
    except SimulatorError:  # no such profile (yet)
        return ONNX_QLINEAR_SPEC


def backends() -> list[str]:
    """The reference always; the numba kernels once they exist."""
    found = importlib.util.find_spec("simulator.numerics.kernels") is not None
    return ["reference", "kernels"] if found else ["reference"]


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    # values whose reference/ORT disagreement is allowed when explained (see below)
    notes: list[str] = field(default_factory=list)


def make_model(nodes, inputs, outputs, initializers: dict, opset: int = OPSET) -> onnx.ModelProto:
    """``inputs``: [(name, elem_type, shape)]; ``outputs``: names (types and shapes inferred)."""
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(n, et, list(s)) for n, et, s in inputs],
        [helper.make_empty_tensor_value_info(n) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="archnet-conformance")
    model.ir_version = 10 if opset >= 21 else 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


# ------------------------------------------------------------------ random parameters

def rand_int(rng, dtype, shape, lo=None, hi=None):
    info = np.iinfo(dtype)
    lo = info.min if lo is None else lo
    hi = info.max if hi is None else hi
    return rng.integers(lo, hi + 1, size=shape).astype(dtype)


def rand_scale(rng, size=None, lo=-9.0, hi=-3.0, pow2: bool | None = None):
    """Positive float32 scales, log-uniform; with ``pow2`` exact powers of two, which make the
    requantization multiplier a power of two and so put many products exactly on .5 (ties)."""
    e = rng.uniform(lo, hi, size=size)
    pow2 = rng.random() < 0.3 if pow2 is None else pow2
    s = np.exp2(np.round(e)) if pow2 else np.exp2(e)
    return np.asarray(s, dtype=np.float32)


def zero_point(rng, dtype, per_channel: int = 0):
    info = np.iinfo(dtype)
    lo, hi = (info.min // 2, info.max // 2) if info.min < 0 else (0, info.max)
    if per_channel:
        return rand_int(rng, dtype, (per_channel,), lo, hi)
    return np.asarray(rng.integers(lo, hi + 1), dtype=dtype)


def output_scale_for(rng, x_scale, w_scale, k: int, x_spread: float, w_spread: float,
                     pow2: bool = False):
    """An output scale that puts typical accumulators across the output range (some clip)."""
    typical = float(np.max(x_scale) * np.max(w_scale) * x_spread * w_spread * np.sqrt(k))
    scale = typical / rng.uniform(20, 90)
    return np.float32(2.0 ** np.round(np.log2(scale)) if pow2 else scale)


# ------------------------------------------------------------------ comparison

@dataclass
class Outcome:
    compared: int = 0                    # values compared with onnxruntime (all backends)
    backends: list[str] = field(default_factory=list)
    reference_mismatches: int = 0        # elements where onnx.reference != onnxruntime (explained)
    messages: list[str] = field(default_factory=list)


def explain_reference_mismatch(program, trace, tensor: str, index, ort_value, ref_value) -> str:
    """Why onnx.reference and onnxruntime may differ on one element of a requantized output.

    onnxruntime (MlasRequantizeOutput) computes ``round(float32(float32(acc) * M)) + zp``:
    the product is rounded to float32, then rounded half to even, and the zero point is added
    to the integer. onnx.reference's QLinearConv/QLinearMatMul compute ``round(acc * M + zp)``
    with NumPy promotion, i.e. in float64 (where the product is exact), *with the zero point
    added before rounding*. Two disagreements follow, both one apart:

    - an exact tie ``acc * M = k + 0.5`` with an odd zero point: half-to-even picks k for
      onnxruntime but ``k + zp + 0.5`` rounds to the other neighbour (frequent when scales are
      powers of two);
    - the float32 product lands on (or crosses) a .5 that the exact product does not.

    The simulator's FLOAT_SCALE requantize is onnxruntime's arithmetic (it must equal
    onnxruntime everywhere), so here the reference's value must be reproduced by the reference's
    formula and onnxruntime's by onnxruntime's. Returns the explanation or raises AssertionError.
    """
    node = program.producer(tensor)
    while node is not None and node.op in (OpKind.RESHAPE, OpKind.FLATTEN):
        src = program.tensors[node.inputs[0]]
        index = tuple(int(i) for i in np.unravel_index(
            np.ravel_multi_index(index, program.tensors[node.outputs[0]].shape), src.shape))
        tensor, node = src.name, program.producer(src.name)
    assert node is not None and node.op is OpKind.REQUANTIZE, \
        f"{tensor}{index}: onnx.reference {ref_value} != onnxruntime {ort_value} outside a " \
        f"requantization (node {node.op.value if node else None})"
    acc = int(trace[node.inputs[0]][index])
    out = program.tensors[tensor]
    m = node.attrs["real_multiplier"]
    ch = index[node.attrs["axis"] % len(index)] if len(m) > 1 else 0
    m32 = np.float32(m[ch])
    zp = out.zero_point[0]
    lo, hi = out.dtype.qmin, out.dtype.qmax
    ort_model = int(np.clip(np.rint(np.float32(acc) * m32) + zp, lo, hi))
    ref_model = int(np.clip(np.rint(np.float64(acc) * np.float64(m32) + zp), lo, hi))
    assert (ort_model, ref_model) == (int(ort_value), int(ref_value)), \
        f"{tensor}{index}: acc {acc} * {m32!r} + zp {zp}: onnxruntime's formula gives " \
        f"{ort_model}, the reference's {ref_model}; onnxruntime {ort_value}, onnx.reference " \
        f"{ref_value}: unexplained"
    exact = acc * float(m32)
    why = "zero point added before rounding a tie" if exact % 1 == 0.5 else \
        "float32 product rounds across .5"
    return f"{tensor}{index}: acc {acc} x {float(m32)!r} = {exact!r}, zp {zp}: {why}"


def _same(a, b) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return (np.asarray(a, np.float32) == np.asarray(b, np.float32)) | \
            (np.isnan(np.asarray(a, np.float64)) & np.isnan(np.asarray(b, np.float64)))
    return np.asarray(a, np.int64) == np.asarray(b, np.int64)


def known_reference_deviation(node, model) -> str | None:
    """Why onnx.reference (1.23) may be wrong or fail on ``node``, if this is a known case.

    Found by these conformance tests, checked against the ONNX spec by hand:
    - MaxPool with auto_pad=SAME_LOWER and an odd total padding: the reference puts the extra
      pad at the end (as SAME_UPPER), so windows shift by one; onnxruntime follows the spec
      ("extra padding at the beginning"). Wrong for float inputs too.
    - MaxPool of int8 with padding: the reference pads with NaN; on some paths (unit strides)
      the cast to int8 raises ValueError. (uint8 gets NaN cast to 0, its minimum: harmless.)
    """
    if node.op_type != "MaxPool":
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "SAME_LOWER":  # (only odd total paddings differ; all are let through)
        return "onnx.reference MaxPool SAME_LOWER pads at the end (spec: at the beginning)"
    padded = any(attrs.get("pads", [0])) or auto_pad == "SAME_UPPER"
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(model.graph.input) + list(model.graph.value_info)}
    if padded and types.get(node.input[0]) == TensorProto.INT8:
        return "onnx.reference MaxPool pads int8 with NaN (ValueError on some paths)"
    return None


def _reference_node(model, node, values: dict) -> list[np.ndarray]:
    """One ONNX node on the reference evaluator, fed onnxruntime's values of its inputs."""
    from onnx.reference import ReferenceEvaluator

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    feeds = {n: values[n] for n in node.input if n}
    return ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)


def check_case(case: Case, tmp_path: Path, backend_names: list[str] | None = None) -> Outcome:
    """Simulator == onnxruntime on every ONNX-named value, for every backend (the reference and,
    once they exist, the numba kernels); onnx.reference == onnxruntime on every node (fed
    onnxruntime's inputs), except explained or known deviations; and the whole model on
    onnx.reference == onnxruntime's outputs when no node deviated."""
    path = tmp_path / f"{case.name}.onnx"
    onnx.save(case.model, path)
    program = import_onnx(path)
    assert program.executable, f"{case.name}: imported as estimate-only"
    ort = run_onnxruntime(path, case.inputs, intermediates=True)
    arithmetic = onnx_qlinear_arithmetic()
    outcome = Outcome()
    # a folded node (a Pad taken into its conv's padding) has no value of its own by design
    removed = {r["node"] for r in program.metadata.get("removed_nodes", [])
               if r["op_type"] == "Pad"}
    folded = {o for n in case.model.graph.node if (n.name or n.output[0]) in removed
              for o in n.output}
    for backend in backend_names or backends():
        sim = execute(program, arithmetic, case.inputs, backend=backend).tensors
        for name in ort:
            if name in folded:
                continue
            assert name in sim, f"{case.name}: simulator has no value for ONNX tensor {name!r}"
            s, o = np.asarray(sim[name]), np.asarray(ort[name])
            assert s.shape == o.shape, f"{case.name}: {name!r} shape {s.shape} vs ORT {o.shape}"
            bad = ~_same(s, o)
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise AssertionError(
                    f"{case.name} ({backend}): simulator != onnxruntime at {name!r}: "
                    f"{int(bad.sum())} of {bad.size} elements, first at {first}: simulator "
                    f"{s[first]}, onnxruntime {o[first]}")
            outcome.compared += 1
        outcome.backends.append(backend)
    assert outcome.compared >= len(case.model.graph.output) * len(outcome.backends)
    # onnxruntime as users run it (all graph optimisations, fused kernels) gives the same outputs
    optimised = run_onnxruntime(path, case.inputs, optimize=True)
    for name, value in optimised.items():
        assert _same(value, ort[name]).all(), \
            f"{case.name}: optimised onnxruntime differs from unoptimised at {name!r}"

    values = {t.name: numpy_helper.to_array(t) for t in case.model.graph.initializer}
    values.update({k: np.asarray(v) for k, v in case.inputs.items()})
    values.update(ort)
    deviated = False
    for node in case.model.graph.node:
        known = known_reference_deviation(node, case.model)
        try:
            results = _reference_node(case.model, node, values)
        except Exception as exc:
            if known is None:
                raise
            outcome.messages.append(f"{node.name or node.output[0]}: {known} ({exc})")
            deviated = True
            continue
        for name, r in zip(node.output, results):
            r, o = np.asarray(r), np.asarray(ort[name])
            assert r.shape == o.shape, f"{case.name}: {name!r} reference shape {r.shape}"
            bad = np.argwhere(~_same(r, o))
            if len(bad) and known is not None:
                outcome.messages.append(f"{name}: {known}; {len(bad)} elements differ")
                deviated = True
                continue
            for idx in bad:
                idx = tuple(int(i) for i in idx)
                outcome.messages.append(
                    explain_reference_mismatch(program, sim, name, idx, o[idx], r[idx]))
                outcome.reference_mismatches += 1
                deviated = True
    if not deviated:
        try:
            ref = run_onnx_reference(path, case.inputs)
        except SimulatorError as exc:
            # onnx.reference 1.23 registers DequantizeLinear only from opset 19 on: a whole
            # model of an older opset does not run (each node above ran with the newest
            # implementation, the same arithmetic for per-tensor and per-axis scales)
            if "No implementation for operator 'DequantizeLinear'" not in str(exc):
                raise
            outcome.messages.append(f"whole-model reference skipped: {exc}")
            return outcome
        for name, r in ref.items():
            assert np.array_equal(_same(r, ort[name]), np.ones(np.shape(r), bool)), \
                f"{case.name}: onnx.reference output {name!r} differs from onnxruntime"
    return outcome
