"""When two executions disagree: the first layer and element that differ, and why.

The "why" is found by experiment, not guessed: the divergent node is re-run with the reference
on side A's own inputs under variants of the arithmetic contract (another rounding mode, single
vs double rounding, float vs integer requantization, a wider or non-saturating accumulator,
another MAC order), and every variant that reproduces side B's value is named. A rounding tie
is detected exactly from the integers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from simulator.contract import (AccumulatorSpec, ArithmeticSpec, MacOrder, Overflow, RequantMode,
                                RequantSpec, RoundingMode, SaturationPoint)
from simulator.errors import SimulatorError
from simulator.execute import arithmetic_of, run_node
from simulator.ir.ops import MAC_OPS, OpKind
from simulator.ir.program import Node, Program
from simulator.numerics import fixed_point as fp


@dataclass
class Divergence:
    node: str
    op: str
    tensor: str
    index: tuple[int, ...]
    value_a: int | float
    value_b: int | float
    mismatches: int
    elements: int
    explanations: list[str]
    names: tuple[str, str] = ("a", "b")

    def format(self) -> str:
        a, b = self.names
        lines = [f"first divergence at node {self.node!r} ({self.op}), tensor {self.tensor!r}, "
                 f"element {list(self.index)}: {a}={self.value_a} {b}={self.value_b} "
                 f"({self.mismatches} of {self.elements} elements differ)"]
        if self.explanations:
            lines += [f"  explained by: {e}" for e in self.explanations]
        else:
            lines.append("  no single contract variant reproduces it; compare the inputs of this node")
        return "\n".join(lines)


def _requant_variants(arith: ArithmeticSpec) -> list[tuple[str, ArithmeticSpec]]:
    rq = arith.requant
    out = []
    for rounding in RoundingMode:
        if rounding is rq.rounding and rq.mode is RequantMode.MULTIPLIER_SHIFT:
            continue
        bits = 32 if rounding is RoundingMode.TFLITE else rq.multiplier_bits
        label = ("double rounding (tflite: SRDHM then rounding shift)" if rounding is RoundingMode.TFLITE
                 else f"single rounding {rounding.value}")
        was = rq.rounding.value if rq.mode is RequantMode.MULTIPLIER_SHIFT else "a float32 scale"
        out.append((f"integer multiplier with {label} instead of {was}",
                    RequantSpec(RequantMode.MULTIPLIER_SHIFT, rounding, bits)))
    if rq.mode is RequantMode.MULTIPLIER_SHIFT:
        out.append(("float32 scale with ties to even (ONNX QLinear) instead of an integer multiplier",
                    RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN, 32)))
        if rq.multiplier_bits < 32 and rq.rounding is not RoundingMode.TFLITE:
            out.append((f"a 32-bit multiplier instead of {rq.multiplier_bits} bits",
                        dataclasses.replace(rq, multiplier_bits=32)))
    # requantize-type nodes never touch the accumulator, so a 32-bit one keeps every variant valid
    acc32 = AccumulatorSpec(32, Overflow.WRAP, SaturationPoint.FINAL)
    return [(label, ArithmeticSpec(acc32, spec)) for label, spec in out]


def _accumulator_variants(arith: ArithmeticSpec) -> list[tuple[str, ArithmeticSpec]]:
    acc = arith.accumulator
    # MAC nodes never requantize, so a float requant spec keeps every accumulator width valid
    neutral = RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN, 32)
    out = [(f"no accumulator overflow (exact sum) instead of {acc.bits}-bit "
            f"{acc.overflow.value} at {acc.saturation_point.value}",
            AccumulatorSpec(48, Overflow.SATURATE, SaturationPoint.FINAL))]
    flips = {Overflow.WRAP: Overflow.SATURATE, Overflow.SATURATE: Overflow.WRAP}
    out.append((f"accumulator {flips[acc.overflow].value} instead of {acc.overflow.value}",
                dataclasses.replace(acc, overflow=flips[acc.overflow])))
    for point in SaturationPoint:
        if point is acc.saturation_point or (point is SaturationPoint.PER_TILE and acc.tile_k < 1):
            continue
        out.append((f"saturation {point.value} instead of {acc.saturation_point.value}",
                    dataclasses.replace(acc, saturation_point=point, overflow=Overflow.SATURATE)))
    if not acc.order_independent:
        other = MacOrder.KH_KW_CIN if acc.mac_order is MacOrder.CIN_KH_KW else MacOrder.CIN_KH_KW
        out.append((f"MAC order {other.value} instead of {acc.mac_order.value}",
                    dataclasses.replace(acc, mac_order=other)))
    return [(label, ArithmeticSpec(spec, neutral)) for label, spec in out]


def _tie(program: Program, node: Node, inputs: list[np.ndarray], arith: ArithmeticSpec,
         index: tuple[int, ...]) -> str | None:
    """Is the requantized value exactly halfway between two integers?"""
    if node.op is not OpKind.REQUANTIZE:
        return None
    src = program.tensors[node.inputs[0]]
    scales = node.attrs["real_multiplier"]
    axis = node.attrs["axis"] % len(program.tensors[node.outputs[0]].shape)
    ch = index[axis] if len(scales) > 1 else 0
    v = int(inputs[0][index]) - src.zp_scalar
    if arith.requant.mode is RequantMode.FLOAT_SCALE:
        product = float(np.float32(v) * np.float32(scales[ch]))
        if product - np.floor(product) == 0.5:
            return f"rounding tie: float32 product {product} is exactly halfway"
        return None
    m, s = fp.quantize_multiplier(scales[ch], arith.requant.multiplier_bits)
    m, s = int(m[0]), int(s[0])
    if s > 0 and (v * m) % (1 << s) == 1 << (s - 1):
        return f"rounding tie: ({v} * {m}) / 2**{s} = {v * m / 2 ** s} is exactly halfway"
    return None


def explain(program: Program, node: Node, inputs: list[np.ndarray], chip, index: tuple[int, ...],
            value_b) -> list[str]:
    """Contract variants under which the reference, on these inputs, gives ``value_b`` here."""
    arith = arithmetic_of(chip)
    reasons = []
    tie = _tie(program, node, inputs, arith, index)
    if tie:
        reasons.append(tie)
    variants = _accumulator_variants(arith) if node.op in MAC_OPS else _requant_variants(arith)
    for label, variant in variants:
        try:
            value, stats = run_node(node, program, inputs, variant, backend="reference")
        except (SimulatorError, ValueError, OverflowError):
            continue
        if np.asarray(value)[index] == value_b:
            reasons.append(label)
    out = program.tensors[node.outputs[0]]
    if out.is_int and value_b in (out.dtype.qmin, out.dtype.qmax) and node.op not in MAC_OPS:
        reasons.append(f"{value_b} is the edge of {out.dtype}: the other side saturated here")
    return reasons


def find_divergence(program: Program, trace_a: dict[str, np.ndarray], trace_b: dict[str, np.ndarray],
                    chip, names: tuple[str, str] = ("a", "b"), explain_it: bool = True
                    ) -> Divergence | None:
    """The first node (in execution order) whose output differs between the two traces."""
    for node in program.nodes:
        name = node.outputs[0]
        if name not in trace_a or name not in trace_b:
            continue
        a, b = np.asarray(trace_a[name]), np.asarray(trace_b[name])
        if a.shape != b.shape:
            return Divergence(node.name, node.op.value, name, (), str(a.shape), str(b.shape), -1,
                              a.size, ["the two sides give different shapes"], names)
        if program.tensors[name].is_int:
            differ = a.astype(np.int64) != b.astype(np.int64)
        else:
            differ = ~np.isclose(a, b, rtol=1e-5, atol=1e-6)
        if not differ.any():
            continue
        index = tuple(int(i) for i in np.argwhere(differ)[0])
        va, vb = a[index].item(), b[index].item()
        reasons = []
        if explain_it and all(i in trace_a for i in node.inputs):
            reasons = explain(program, node, [trace_a[i] for i in node.inputs], chip, index, vb)
        return Divergence(node.name, node.op.value, name, index, va, vb, int(differ.sum()),
                          a.size, reasons, names)
    return None
