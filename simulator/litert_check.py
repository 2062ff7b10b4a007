"""``simulate --check litert`` on a .tflite: the simulator against LiteRT's reference kernels
(they must agree on every element), and LiteRT's default optimised interpreter against both,
with the semantic that explains the first element where the optimised kernel departs.

Explanations are found by experiment, as in ``compare``: the divergent node is re-run on the
simulator's own inputs (equal to the reference's) under variants of the arithmetic, and every
variant that gives the optimised value is named; for a table the candidate tables are rebuilt.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from simulator.compare import explain, find_divergence
from simulator.contract import (AccumulatorSpec, AddRounding, ArithmeticSpec, AvgPoolSum,
                                FcRequant, GlobalAvgPool, Int16Requant, MulScale, Overflow,
                                QuantizeRounding, RequantMode, RequantSpec, RoundingMode,
                                SaturationPoint)
from simulator.errors import SimulatorError
from simulator.execute import arithmetic_of, run_node
from simulator.ir.ops import MAC_OPS, OpKind
from simulator.ir.program import Node, Program
from simulator.tflite_import.peers import program_views, run_litert

NAMES = ("simulator", "litert-reference")


def _tflite_variants(arith: ArithmeticSpec) -> list[tuple[str, ArithmeticSpec]]:
    """TFLite's own arithmetic switches, each flipped alone, labelled by what they mean."""
    single = dataclasses.replace(arith.requant, rounding=RoundingMode.HALF_UP)
    f32 = RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN, 32)
    acc = AccumulatorSpec(32, Overflow.WRAP, SaturationPoint.FINAL)
    out = [
        ("single rounding (a TFLITE_SINGLE_ROUNDING build: one rounding of acc * M, ties up) "
         "instead of SaturatingRoundingDoublingHighMul then RoundingDivideByPOT",
         dataclasses.replace(arith, requant=single)),
        ("a float32 scale with ties to even (XNNPACK's fp32 requantization) instead of an "
         "integer multiplier", ArithmeticSpec(acc, f32)),
        ("one rounding of the exact two-operand sum instead of TFLite ADD's per-operand "
         "rescale", dataclasses.replace(arith, add_rounding=AddRounding.SINGLE)),
        ("the mean of x - zero point instead of the mean of the stored integers",
         dataclasses.replace(arith, avgpool_sum=AvgPoolSum.CENTRED)),
        ("an integer multiplier instead of the reference FULLY_CONNECTED's float64 scale",
         dataclasses.replace(arith, fc_requantize=FcRequant.SAME)),
        ("a division of the sum by the count (ties away) instead of TFLite MEAN's reciprocal "
         "multiplier", dataclasses.replace(arith, global_avgpool=GlobalAvgPool.DIVIDE)),
        ("float -> int quantize with ties to even (rint, the optimised kernels) instead of the "
         "reference's roundf (ties away)",
         dataclasses.replace(arith, quantize_rounding=QuantizeRounding.HALF_EVEN)),
        ("a 32-bit accumulator and the int8 kernels' double-rounding multiplier instead of the "
         "16x8 kernels' int64 accumulator and 16-bit multiplier rounded once",
         dataclasses.replace(arith, int16_accumulator=None, int16_requantize=Int16Requant.SAME)),
        ("int16 ADD operands shifted left 20 bits (the int8 ADD's) instead of 15",
         dataclasses.replace(arith, int16_add_left_shift=20)),
        ("a MUL scale formed in double instead of TFLite Prepare's float32",
         dataclasses.replace(arith, mul_scale=MulScale.FLOAT64)),
    ]
    return out


def _q8(d, ratio: float) -> np.ndarray:
    """XNNPACK's 8-bit-fraction rescale: ``d * lrintf(256 * ratio)``, before the shift."""
    return np.asarray(d, np.int64) * int(np.rint(np.float32(256.0) * np.float32(ratio)))


def _xnnpack_q8(program: Program, node: Node, inputs) -> np.ndarray | None:
    """What XNNPACK's qs8 convert / leaky ReLU compute: ``(acc + 256 zp + 128) >> 8`` of a
    Q8 multiplier (float32 ``lrintf(256 * scale)``), for an int8 -> int8 requantize or a leaky
    ReLU table; None where the node is neither."""
    src, out = program.tensors[node.inputs[0]], program.tensors[node.outputs[0]]
    if not (src.is_int and src.dtype.bits == 8 and out.is_int and src.scale and out.scale):
        return None
    d = np.asarray(inputs[0], np.int64) - src.zp_scalar
    ratio = float(np.float32(src.scale[0]) / np.float32(out.scale[0]))
    if node.op is OpKind.REQUANTIZE and len(node.attrs["real_multiplier"]) == 1:
        acc = _q8(d, ratio)
    elif node.op is OpKind.LOOKUP_TABLE and node.attrs.get("function") == "leaky_relu":
        alpha = program.metadata.get("tflite_alpha", {}).get(
            _tflite_index(program, node.outputs[0], ())[0])
        if alpha is None:
            return None
        neg = float(np.float32(np.float32(alpha) * np.float32(src.scale[0])) /
                    np.float32(out.scale[0]))
        acc = np.where(d >= 0, _q8(d, ratio), _q8(d, neg))
    else:
        return None
    return np.clip((acc + out.zp_scalar * 256 + 128) >> 8, out.dtype.qmin, out.dtype.qmax)


def _explain_table(program: Program, node: Node, inputs, index, value) -> list[str]:
    fn = node.attrs.get("function")
    src, out = program.tensors[node.inputs[0]], program.tensors[node.outputs[0]]
    x = int(np.asarray(inputs[0])[index])
    reasons = [f"optimised {fn or 'table'} kernel: input {x} gives {value}, TFLite's "
               f"{len(node.attrs['table'])}-entry table (LUTPopulate / the reference kernel) "
               f"gives {node.attrs['table'][x - src.dtype.qmin]}"]
    func = {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh}.get(fn)
    if func is not None:  # a table built in double and rounded to nearest even
        real = float(src.scale[0]) * (x - src.zp_scalar)
        even = int(np.clip(np.rint(func(real) / out.scale[0]) + out.zp_scalar, out.dtype.qmin,
                           out.dtype.qmax))
        if even == value:
            reasons.append(f"{fn} evaluated in double and rounded ties to even reproduces it")
    return reasons


def explain_optimised(program: Program, node: Node, inputs, chip, index, value,
                      optimised: np.ndarray) -> list[str]:
    """TFLite arithmetic variants that give the optimised value here; those that give the
    optimised kernel's whole output are named first (they are the semantic, not a guess)."""
    arith = arithmetic_of(chip)
    whole, here = [], []
    for label, variant in _tflite_variants(arith):
        try:
            got, _ = run_node(node, program, inputs, variant, backend="reference")
        except (SimulatorError, ValueError, OverflowError):
            continue
        got = np.asarray(got)
        if got.shape == optimised.shape and np.array_equal(got, optimised):
            whole.append(f"{label} (reproduces all {got.size} elements)")
        elif got[index] == value:
            here.append(label)
    q8 = _xnnpack_q8(program, node, inputs)
    if q8 is not None and q8.shape == optimised.shape and np.array_equal(q8, optimised):
        whole.insert(0, f"XNNPACK's 8-bit-fraction multiplier lrintf(256 x scale) and one "
                        f"rounding shift by 8 (its qs8 convert / leaky ReLU) instead of "
                        f"TFLite's 31-bit multiplier (reproduces all {q8.size} elements)")
    reasons = whole or here or explain(program, node, inputs, chip, index, value)
    if node.op is OpKind.LOOKUP_TABLE:
        reasons = _explain_table(program, node, inputs, index, value) + reasons
    return reasons


def _tflite_index(program: Program, tensor: str, index) -> tuple[str, list[int]]:
    """The TFLite tensor name and NHWC index of a Program tensor's element."""
    for tfl, views in program.metadata.get("tflite_views", {}).items():
        for layout, name in views.items():
            if name == tensor:
                idx = list(index)
                if layout == "nchw" and len(idx) == 4:
                    idx = [idx[0], idx[2], idx[3], idx[1]]
                return tfl, idx
    return tensor, list(index)


def check_litert(path, program: Program, chip, inputs, result) -> int:
    """Print the three-way comparison; 1 if the simulator and LiteRT's reference differ."""
    reference = program_views(program, run_litert(path, inputs, "reference"))
    div = find_divergence(program, result.tensors, reference, chip, NAMES)
    if div is not None:
        print(div.format())
        return 1
    print(f"bit-exact: simulator and litert-reference agree on every element of "
          f"{sum(1 for n in program.nodes if n.outputs[0] in reference)} tensors")
    kernels = "optimised"
    try:
        optimised = program_views(program, run_litert(path, inputs, kernels))
    except (RuntimeError, ValueError) as exc:  # XNNPACK declines some graphs at prepare
        print(f"litert-optimised (XNNPACK) refused the model ({' '.join(str(exc).split())}); "
              f"comparing LiteRT's optimised kernels without XNNPACK")
        kernels = "optimised-no-xnnpack"
        optimised = program_views(program, run_litert(path, inputs, kernels))
    odiv = find_divergence(program, result.tensors, optimised, chip,
                           ("litert-reference", f"litert-{kernels}"), explain_it=False)
    if odiv is None:
        print(f"litert-{kernels} agrees with the reference on every element")
        return 0
    node = next(n for n in program.nodes if n.outputs[0] == odiv.tensor)
    tfl, idx = _tflite_index(program, odiv.tensor, odiv.index)
    ref_value = np.asarray(reference[odiv.tensor])[odiv.index].item()
    print(f"litert-{kernels} differs from the reference at tensor {tfl!r} element {idx} "
          f"(node {odiv.node!r}, {odiv.op}): simulator={odiv.value_a} reference={ref_value} "
          f"optimised={odiv.value_b} ({odiv.mismatches} of {odiv.elements} elements differ)")
    index, wanted = odiv.index, np.asarray(optimised[odiv.tensor])
    while node.op is OpKind.RESHAPE:  # a view: explain the op that computed these bytes
        producer = program.producer(node.inputs[0])
        if producer is None or producer.op in MAC_OPS:
            break
        shape = program.tensors[node.inputs[0]].shape
        index = tuple(int(i) for i in np.unravel_index(
            np.ravel_multi_index(index, wanted.shape), shape))
        node, wanted = producer, wanted.reshape(shape)
    reasons = explain_optimised(program, node, [result.tensors[i] for i in node.inputs], chip,
                                index, odiv.value_b, wanted)
    for r in reasons or ["no single arithmetic variant reproduces it"]:
        print(f"  explained by: {r}")
    return 0
