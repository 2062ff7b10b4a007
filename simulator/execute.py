"""Run a Program on a chip's arithmetic: the kernels (fast) or the reference (obviously right).

The executor prepares each node once for the chip (real scales -> multipliers and shifts via
``fixed_point``), calls the backend, and records every tensor and every MAC op's accumulator
statistics. Cost is not computed here: numerics and cost meet only in the reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable

import numpy as np

from simulator.contract import (AddRounding, ArithmeticSpec, AvgPoolSum, FcRequant,
                                GlobalAvgPool, Int16Requant, IntType, MulScale,
                                QuantizeRounding)
from simulator.errors import InputError, UnsupportedOpError
from simulator.ir.ops import MAC_OPS, OpKind, reduced_axes
from simulator.ir.program import Node, Program, TensorInfo
from simulator.numerics import fixed_point as fp
from simulator.numerics import host_ops, reference
from simulator.numerics.fixed_point import OverflowStats

BACKENDS = ("kernels", "reference")


@dataclass
class ExecutionResult:
    outputs: dict[str, np.ndarray]
    tensors: dict[str, np.ndarray]
    overflow: dict[str, OverflowStats] = field(default_factory=dict)
    backend: str = "kernels"


def backend_module(name: str) -> ModuleType:
    if name == "reference":
        return reference
    if name == "kernels":
        from simulator.numerics import kernels
        return kernels
    raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def arithmetic_of(chip) -> ArithmeticSpec:
    """Accept a ChipProfile (anything with ``.arithmetic``) or an ArithmeticSpec."""
    return chip if isinstance(chip, ArithmeticSpec) else chip.arithmetic


# ---------------------------------------------------------------------- input checks

def check_input(info: TensorInfo, value, where: str = "input") -> np.ndarray:
    """An input array of the right shape, kind and range, or an InputError naming it."""
    arr = np.asarray(value)
    if tuple(arr.shape) != info.shape:
        raise InputError(f"{where} {info.name!r}: shape {tuple(arr.shape)} != expected {info.shape}")
    if isinstance(info.dtype, IntType):
        if arr.dtype.kind not in "iu":
            raise InputError(f"{where} {info.name!r}: dtype {arr.dtype} is not an integer type "
                             f"(expected values of {info.dtype})")
        lo, hi = info.dtype.qmin, info.dtype.qmax
        held = np.iinfo(arr.dtype)
        if arr.size and (held.min < lo or held.max > hi) and (
                int(arr.min()) < lo or int(arr.max()) > hi):
            raise InputError(f"{where} {info.name!r}: values [{int(arr.min())}, {int(arr.max())}] "
                             f"outside {info.dtype} range [{lo}, {hi}]")
        return _compact(arr)
    if arr.dtype.kind != "f":
        raise InputError(f"{where} {info.name!r}: dtype {arr.dtype} is not float (expected f32)")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{where} {info.name!r}: contains NaN or infinity")
    return arr.astype(np.float32)


def _compact(arr: np.ndarray) -> np.ndarray:
    """An integer array kept in its own dtype when narrower than int64 (the fused kernels read
    it as it is), else int64."""
    if arr.dtype.itemsize < 8:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr, dtype=np.int64)


def _wide(v):
    """A value as every runner and result sees it: integer arrays as int64."""
    if isinstance(v, np.ndarray) and v.dtype.kind in "iu" and v.dtype != np.int64:
        return v.astype(np.int64)
    return v


# ---------------------------------------------------------------------- node runners

# ops whose outputs are some of their inputs' values: the kernels run them on the values' own
# (narrow) dtype, with no round trip through int64
_SELECTIONS = frozenset({OpKind.MAXPOOL2D, OpKind.CONCAT, OpKind.RESHAPE, OpKind.FLATTEN,
                         OpKind.TRANSPOSE})


def _zp_array(t: TensorInfo) -> np.ndarray:
    return np.asarray(t.zero_point, dtype=np.int64)


def _ratio(num: tuple[float, ...] | None, den: tuple[float, ...] | None, where: str) -> float:
    if not num or not den or len(num) != 1 or len(den) != 1:
        raise UnsupportedOpError(f"{where}: needs per-tensor scales on operands and output")
    return num[0] / den[0]


def _activation_bits(t: TensorInfo) -> int:
    return t.dtype.bits if isinstance(t.dtype, IntType) else 32


def _run_mac(node, p, ins, arith, be, state=None):
    t = [p.tensors[i] for i in node.inputs]
    acc = arith.accumulator_for(_activation_bits(t[0]))
    if node.op is OpKind.MATMUL:
        return be.matmul(ins[0], ins[1], t[0].zp_scalar, t[1].zp_scalar, acc)
    bias = ins[2] if len(ins) > 2 else None
    extra = {} if state is None else {"prepared": state}   # the kernels' PreparedConv
    if node.op is OpKind.FULLY_CONNECTED:
        return be.fully_connected(ins[0], ins[1], bias, t[0].zp_scalar, _zp_array(t[1]), acc,
                                  **extra)
    a = node.attrs
    return be.conv2d(ins[0], ins[1], bias, t[0].zp_scalar, _zp_array(t[1]), tuple(a["strides"]),
                     tuple(a["pads"]), tuple(a["dilations"]), a["groups"], acc, **extra)


def clamp_bounds(out: TensorInfo, attrs: dict) -> tuple[int, int]:
    """The integer range a requantize/clamp writes: the type's range cut by clamp_min/max."""
    lo, hi = out.dtype.qmin, out.dtype.qmax
    if attrs.get("clamp_min") is not None:
        lo = max(lo, attrs["clamp_min"])
    if attrs.get("clamp_max") is not None:
        hi = min(hi, attrs["clamp_max"])
    return lo, hi


def requantize_scale(node: Node, p: Program, arith: ArithmeticSpec):
    """How the chip scales this requantize, prepared once: ("float64", real multipliers) where
    TFLite requantizes a fully connected layer in double, else ("scale", PreparedScale)."""
    float64_fc = arith.fc_requantize is FcRequant.FLOAT64_HALF_AWAY
    reduced16 = arith.int16_requantize is Int16Requant.TFLITE_REDUCED_MULTIPLIER
    # the producer is a scan of the nodes: looked up only where TFLite's choices depend on it
    producer = p.producer(node.inputs[0]) if float64_fc or reduced16 else None
    if float64_fc and producer is not None and producer.op is OpKind.FULLY_CONNECTED:
        return "float64", node.attrs["real_multiplier"]
    if (reduced16 and producer is not None and producer.op in MAC_OPS
            and _activation_bits(p.tensors[producer.inputs[0]]) == 16):
        return "scale", fp.prepare_tflite_int64(node.attrs["real_multiplier"])
    return "scale", fp.prepare_scale(node.attrs["real_multiplier"], arith.requant)


def _run_requantize(node, p, ins, arith, be, state=None):
    src, out = p.tensors[node.inputs[0]], p.tensors[node.outputs[0]]
    lo, hi = clamp_bounds(out, node.attrs)
    kind, scale = state if state is not None else requantize_scale(node, p, arith)
    axis = node.attrs["axis"] % len(out.shape)
    if kind == "float64":
        return be.requantize_float64(ins[0], src.zp_scalar, scale, axis, out.zp_scalar, lo, hi)
    return be.requantize(ins[0], src.zp_scalar, scale, axis, out.zp_scalar, lo, hi)


def _run_add(node, p, ins, arith, be):
    ta, tb, out = (p.tensors[n] for n in (*node.inputs, node.outputs[0]))
    b, b_zp = ins[1], tb.zp_scalar
    if node.op is OpKind.SUB:
        # a - b is the add of a and -(b - zb): one rounding of the exact difference. (Under
        # per-operand add rounding the negated operand is rescaled on its own, which rounds
        # ties differently from TFLite's SUB; no profile with that rounding declares sub.)
        b, b_zp = np.int64(b_zp) - np.asarray(b, np.int64), 0
    ins = [ins[0], b]
    ra = _ratio(ta.scale, out.scale, f"node {node.name!r}")
    rb = _ratio(tb.scale, out.scale, f"node {node.name!r}")
    lo, hi = clamp_bounds(out, node.attrs)
    if arith.add_rounding is AddRounding.PER_OPERAND:
        shift = arith.int16_add_left_shift if _activation_bits(ta) == _activation_bits(tb) == 16 \
            else fp.ADD_LEFT_SHIFT
        prepared = fp.prepare_add_per_operand(ta.scale[0], tb.scale[0], out.scale[0],
                                              arith.requant, shift)
        return be.add_per_operand(ins[0], ta.zp_scalar, ins[1], b_zp, prepared,
                                  arith.requant.rounding, out.zp_scalar, lo, hi, shift)
    ma, mb, shift = fp.prepare_add(ra, rb, arith.requant)
    return be.add(ins[0], ta.zp_scalar, ins[1], b_zp, ma, mb, shift, arith.requant.mode,
                  arith.requant.rounding, out.zp_scalar, lo, hi)


def _run_mul(node, p, ins, arith, be):
    ta, tb, out = (p.tensors[n] for n in (*node.inputs, node.outputs[0]))
    if any(not t.scale or len(t.scale) != 1 for t in (ta, tb, out)):
        raise UnsupportedOpError(f"node {node.name!r}: needs per-tensor scales on operands and "
                                 f"output")
    scale = ta.scale[0] * tb.scale[0] / out.scale[0]  # TFLite's order, in double
    if arith.mul_scale is MulScale.FLOAT32:  # ... or in float, as TFLite's Prepare computes it
        f32 = np.float32
        scale = float(f32(f32(ta.scale[0]) * f32(tb.scale[0])) / f32(out.scale[0]))
    lo, hi = clamp_bounds(out, node.attrs)
    return be.mul(ins[0], ta.zp_scalar, ins[1], tb.zp_scalar,
                  fp.prepare_scale(scale, arith.requant), out.zp_scalar, lo, hi)


def _run_global_avgpool(node, p, ins, arith, be):
    src, out = p.tensors[node.inputs[0]], p.tensors[node.outputs[0]]
    if arith.global_avgpool is GlobalAvgPool.TFLITE_MEAN:  # the output's own scale and zp
        count = src.shape[2] * src.shape[3]
        ratio = _ratio(src.scale, out.scale, f"node {node.name!r}")
        prepared = fp.prepare_tflite_mean(ratio, count, arith.requant)
        return be.global_mean(ins[0], src.zp_scalar, prepared, out.zp_scalar, out.dtype.qmin,
                              out.dtype.qmax)
    return be.global_avgpool2d(ins[0], src.zp_scalar, arith.requant.rounding)


def _run_mean(node, p, ins, arith, be):
    src, out = p.tensors[node.inputs[0]], p.tensors[node.outputs[0]]
    axes = reduced_axes(src.shape, node.attrs["axes"])
    count = math.prod(src.shape[a] for a in axes)
    ratio = _ratio(src.scale, out.scale, f"node {node.name!r}")
    # the chip that forms TFLite's MEAN multiplier forms it for every mean
    prepare = fp.prepare_tflite_mean if arith.global_avgpool is GlobalAvgPool.TFLITE_MEAN \
        else fp.prepare_mean
    return be.mean(ins[0], src.zp_scalar, axes, node.attrs["keepdims"],
                   prepare(ratio, count, arith.requant), out.zp_scalar, out.dtype.qmin,
                   out.dtype.qmax)


def _run_lookup_table(node, p, ins, arith, be):
    table = np.asarray(node.attrs["table"], np.int64)
    if node.attrs["interpolated"]:
        return be.lookup_interpolated(ins[0], table)
    return be.lookup_table(ins[0], table, p.tensors[node.inputs[0]].dtype.qmin)


def _run_softmax(node, p, ins, arith, be):
    out = p.tensors[node.outputs[0]]
    out_shift = int(round(-math.log2(out.scale[0])))
    return be.softmax(ins[0], node.attrs["axis"], np.asarray(node.attrs["exp_table"], np.int64),
                      out_shift, out.zp_scalar, out.dtype.qmin, out.dtype.qmax,
                      arith.requant.rounding, mask=ins[1] if len(ins) > 1 else None)


def _dequantized(t: TensorInfo, v: np.ndarray) -> np.ndarray:
    if not t.is_int:
        return v
    scale = np.asarray(t.scale if t.scale else (1.0,), np.float32)
    zp = _zp_array(t)
    if t.axis is not None and (scale.size > 1 or zp.size > 1):
        shape = [1] * v.ndim
        shape[t.axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return fp.dequantize(v, scale, zp)


def _run_fallback(node, p, ins, arith, be):
    out = p.tensors[node.outputs[0]]
    args = [_dequantized(p.tensors[n], v) for n, v in zip(node.inputs, ins)]
    y = host_ops.run_host_op(node.attrs["op_type"], args, node.attrs["attributes"],
                             f"node {node.name!r}")
    if tuple(y.shape) != out.shape:
        raise UnsupportedOpError(f"node {node.name!r}: host {node.attrs['op_type']} gave shape "
                                 f"{y.shape}, Program declares {out.shape}")
    if out.is_int:
        return fp.quantize_float(y, out.scale[0], out.zp_scalar, out.dtype.qmin, out.dtype.qmax)
    return y


def _run_quantize(node, p, ins, arith, be):
    out = p.tensors[node.outputs[0]]
    if len(out.scale) != 1:
        raise UnsupportedOpError(f"node {node.name!r}: per-channel quantize is not supported")
    return fp.quantize_float(ins[0], out.scale[0], out.zp_scalar, out.dtype.qmin, out.dtype.qmax,
                             arith.quantize_rounding is QuantizeRounding.HALF_AWAY)


def _window(node):
    a = node.attrs
    return tuple(a["kernel"]), tuple(a["strides"]), tuple(a["pads"])


RUNNERS: dict[OpKind, Callable] = {
    OpKind.REQUANTIZE: _run_requantize,
    OpKind.ADD: _run_add,
    OpKind.SUB: _run_add,
    OpKind.MUL: _run_mul,
    OpKind.SOFTMAX: _run_softmax,
    OpKind.FALLBACK: _run_fallback,
    OpKind.QUANTIZE: _run_quantize,
    OpKind.DEQUANTIZE: lambda n, p, ins, a, be: _dequantized(p.tensors[n.inputs[0]], ins[0]),
    OpKind.MAXPOOL2D: lambda n, p, ins, a, be: be.maxpool2d(ins[0], *_window(n)),
    # a raw sum keeps the zero point in: the mean of the stored integers, as TFLite's
    OpKind.AVGPOOL2D: lambda n, p, ins, a, be: be.avgpool2d(
        ins[0], 0 if a.avgpool_sum is AvgPoolSum.RAW else p.tensors[n.inputs[0]].zp_scalar,
        *_window(n), n.attrs["count_include_pad"], a.requant.rounding),
    OpKind.GLOBAL_AVGPOOL2D: lambda n, p, ins, a, be: _run_global_avgpool(n, p, ins, a, be),
    OpKind.CONCAT: lambda n, p, ins, a, be: be.concat(ins, n.attrs["axis"]),
    OpKind.CLAMP: lambda n, p, ins, a, be: be.clamp(ins[0], n.attrs["min"], n.attrs["max"]),
    OpKind.LOOKUP_TABLE: _run_lookup_table,
    OpKind.MINIMUM: lambda n, p, ins, a, be: be.minimum(ins[0], ins[1]),
    OpKind.GATHER: lambda n, p, ins, a, be: be.gather(ins[0], ins[1]),
    OpKind.MEAN: _run_mean,
    OpKind.RESHAPE: lambda n, p, ins, a, be: reference.reshape(ins[0], p.tensors[n.outputs[0]].shape),
    OpKind.FLATTEN: lambda n, p, ins, a, be: reference.reshape(ins[0], p.tensors[n.outputs[0]].shape),
    OpKind.TRANSPOSE: lambda n, p, ins, a, be: reference.transpose(ins[0], n.attrs["perm"]),
}


def run_node(node: Node, program: Program, inputs: list[np.ndarray], arith: ArithmeticSpec,
             backend: str = "kernels", state=None) -> tuple[np.ndarray, OverflowStats | None]:
    """Run one node; MAC ops also return their accumulator statistics. ``state``: what
    ``prepare`` made ready for this node (None: prepared on the spot)."""
    be = backend_module(backend)
    if node.op in MAC_OPS:
        for name in node.inputs:
            if not program.tensors[name].is_int:
                raise UnsupportedOpError(
                    f"node {node.name!r}: {node.op.value} on float tensor {name!r} cannot be "
                    f"executed (this Program was imported for estimation only)")
        return _run_mac(node, program, inputs, arith, be, state)
    if node.op is OpKind.REQUANTIZE:
        return _run_requantize(node, program, inputs, arith, be, state), None
    return RUNNERS[node.op](node, program, inputs, arith, be), None


@dataclass
class _Step:
    node: Node
    state: object = None            # the node's prepared constants (PreparedConv, a scale)
    requantize: Node | None = None  # a requantize computed in this conv's epilogue
    requantize_scale: object = None  # its PreparedScale


@dataclass
class PreparedProgram:
    """A Program made ready once for one chip's arithmetic and one backend: integer constants
    as int64, requantize scales as the chip's integers, conv weights packed for the kernels,
    and (kernels) each conv whose accumulator only a requantize reads fused with it. Execute
    it as often as wanted; it holds no state between runs."""
    program: Program
    arith: ArithmeticSpec
    backend: str
    constants: dict[str, np.ndarray]
    steps: list[_Step]
    readers: dict[str, int]   # tensor -> how many nodes read it (to drop it after the last)


def _fusable_requantize(node: Node, p: Program, readers: dict[str, list[Node]],
                        arith: ArithmeticSpec):
    """(the requantize to compute in this conv's epilogue, its PreparedScale), or None: the
    only reader of the accumulator, which is no output of the Program, with one chip scale
    (or one per output channel)."""
    acc_name = node.outputs[0]
    users = readers.get(acc_name, [])
    if len(users) != 1 or users[0].op is not OpKind.REQUANTIZE or acc_name in p.outputs:
        return None
    rq = users[0]
    kind, scale = requantize_scale(rq, p, arith)
    out = p.tensors[rq.outputs[0]]
    return (rq, scale) if kind == "scale" and rq.attrs["axis"] % len(out.shape) == 1 else None


def prepare(program: Program, chip, backend: str = "kernels") -> PreparedProgram:
    """Make ``program`` ready for ``chip``'s arithmetic (see PreparedProgram)."""
    arith = arithmetic_of(chip)
    be = backend_module(backend)
    if not program.executable:
        raise UnsupportedOpError(f"program {program.name!r} holds float compute and was imported "
                                 f"for estimation only; it cannot be executed")
    constants = {name: t.data.astype(np.int64) if t.is_int else t.data
                 for name, t in program.tensors.items() if t.data is not None}
    readers: dict[str, list[Node]] = {}
    for node in program.nodes:
        for name in dict.fromkeys(node.inputs):
            readers.setdefault(name, []).append(node)
    steps: list[_Step] = []
    fused: set[str] = set()
    for node in program.nodes:
        if node.name in fused:
            continue
        step = _Step(node)
        if node.op is OpKind.REQUANTIZE:
            step.state = requantize_scale(node, program, arith)
        elif (node.op in (OpKind.CONV2D, OpKind.FULLY_CONNECTED) and backend == "kernels"
              and all(n in constants for n in node.inputs[1:])
              and all(program.tensors[n].is_int for n in node.inputs)):
            a = node.attrs
            w = program.tensors[node.inputs[1]]
            bias = constants[node.inputs[2]] if len(node.inputs) > 2 else None
            if node.op is OpKind.FULLY_CONNECTED:   # as the 1x1 conv the kernels run it as
                step.state = be.PreparedConv(constants[w.name][:, :, None, None], bias,
                                             _zp_array(w), (1, 1), (0, 0, 0, 0), (1, 1), 1)
            else:
                step.state = be.PreparedConv(constants[w.name], bias, _zp_array(w),
                                             tuple(a["strides"]), tuple(a["pads"]),
                                             tuple(a["dilations"]), a["groups"])
                fusion = _fusable_requantize(node, program, readers, arith)
                if fusion is not None:
                    step.requantize, step.requantize_scale = fusion
                    fused.add(fusion[0].name)
        steps.append(step)
    counts = {n: len(readers.get(n, ())) for n in program.tensors}
    return PreparedProgram(program, arith, backend, constants, steps, counts)


def _run_fused(step: _Step, p: Program, values: dict, arith: ArithmeticSpec, trace: bool,
               wide_results: bool = True):
    """A conv and the requantize in its epilogue: the requantize's output (and, traced, the
    accumulator) into ``values``; returns the conv's statistics."""
    from simulator.numerics import kernels
    node, rq = step.node, step.requantize
    x = p.tensors[node.inputs[0]]
    acc_t, out = p.tensors[node.outputs[0]], p.tensors[rq.outputs[0]]
    lo, hi = clamp_bounds(out, rq.attrs)
    y, acc, stats = kernels.conv2d_requantize(
        values[node.inputs[0]], step.state, x.zp_scalar,
        arith.accumulator_for(_activation_bits(x)), step.requantize_scale, 1,
        acc_t.zp_scalar, out.zp_scalar, lo, hi, keep_acc=trace,
        # a result returned as int64 is made int64: no second pass to widen it
        wide=wide_results and rq.outputs[0] in p.outputs,
        # an 8-bit input's type range plans as its values would (the 8-bit engines)
        x_range=(x.dtype.qmin, x.dtype.qmax) if x.dtype.bits <= 8 else None)
    if trace:
        values[node.outputs[0]] = acc
    values[rq.outputs[0]] = y
    return stats


def execute(program: Program | PreparedProgram, chip, inputs: dict[str, np.ndarray],
            backend: str = "kernels", trace: bool = True,
            progress: Callable[[int, int, Node], None] | None = None,
            narrow_outputs: bool = False) -> ExecutionResult:
    """Run ``program`` on the chip's arithmetic; every tensor is kept when ``trace``. A
    ``PreparedProgram`` (``prepare``) skips the preparation; it must be for this chip's
    arithmetic and this backend. Results are int64, or with ``narrow_outputs`` (and no
    ``trace``) the outputs in whatever integer dtype computed them (same values)."""
    arith = arithmetic_of(chip)
    if isinstance(program, PreparedProgram):
        prepared = program
        if prepared.arith != arith or prepared.backend != backend:
            raise InputError(f"program {prepared.program.name!r} was prepared for another "
                             f"arithmetic or backend ({prepared.backend}); prepare it again")
    else:
        prepared = prepare(program, arith, backend)
    program = prepared.program
    missing = [n for n in program.inputs if n not in inputs]
    if missing:
        raise InputError(f"missing input(s) {missing}; the Program takes {program.inputs}")
    extra = [n for n in inputs if n not in program.inputs]
    if extra:
        raise InputError(f"unknown input(s) {extra}; the Program takes {program.inputs}")
    values = {n: check_input(program.tensors[n], inputs[n]) for n in program.inputs}
    wide_results = trace or not narrow_outputs
    values.update(prepared.constants)
    overflow: dict[str, OverflowStats] = {}
    remaining = dict(prepared.readers)
    keep = set(program.outputs) | set(program.inputs)
    done = 0
    for step in prepared.steps:
        node = step.node
        if progress:
            progress(done, len(program.nodes), node)
        if step.requantize is not None:
            overflow[node.name] = _run_fused(step, program, values, arith, trace, wide_results)
            ran = (node, step.requantize)
        else:
            narrow = backend == "kernels" and node.op in _SELECTIONS
            value, stats = run_node(node, program,
                                    [values[n] if narrow else _wide(values[n])
                                     for n in node.inputs], arith, backend, step.state)
            values[node.outputs[0]] = value
            if stats is not None:
                overflow[node.name] = stats
            ran = (node,)
        done += len(ran)
        if not trace:
            for name in {n for r in ran for n in r.inputs}:  # a tensor read twice counts once
                remaining[name] -= 1
                if (remaining[name] == 0 and name not in keep and name in values
                        and program.tensors[name].data is None):
                    del values[name]
    outputs = {n: _wide(values[n]) if wide_results else values[n] for n in program.outputs}
    tensors = {n: _wide(v) for n, v in values.items()} if trace else dict(outputs)
    return ExecutionResult(outputs, tensors, overflow, backend)


def output_array(info: TensorInfo, value: np.ndarray) -> np.ndarray:
    """A tensor value in the smallest NumPy dtype that holds its type, for saving."""
    if not isinstance(info.dtype, IntType):
        return np.asarray(value, np.float32)
    value = np.asarray(value)
    lo = min(info.dtype.qmin, int(value.min(initial=0)))
    hi = max(info.dtype.qmax, int(value.max(initial=0)))  # accumulators may be wider than s32
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64):
        lim = np.iinfo(dt)
        if lim.min <= lo and hi <= lim.max:
            return np.asarray(value).astype(dt)
    return np.asarray(value, np.int64)
