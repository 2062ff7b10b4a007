"""Activation functions of a float graph, found as one unit whatever ops spell them.

An exporter writes SiLU as Sigmoid then Mul, GELU as Div, Erf, Add, Mul, Mul (or a Tanh and a
cube), hard-swish as HardSwish or HardSigmoid then Mul. On an integer chip each is one function
of one 8-bit value, so one lookup table (or the activation unit's fixed function) computes all of
it: that is how TFLite and Vela run them. ``find_functions`` finds every subgraph of elementwise
ops whose only non-constant input is one tensor ``x`` and whose only result read outside it is
one tensor ``y``, with at least one nonlinear op, and names the function it computes by its
values (``identify``), not by its spelling. Constants must be single values: a per-channel
constant makes one table per channel, which no activation unit has.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Elementwise ops a function subgraph may hold; the second set is what makes it nonlinear.
ELEMENTWISE = frozenset({"Mul", "Add", "Sub", "Div", "Pow", "Erf", "Tanh", "Sigmoid",
                         "HardSigmoid", "HardSwish", "Exp", "Neg", "Sqrt", "Relu", "LeakyRelu",
                         "Elu", "Softplus", "Gelu", "Clip", "Max", "Min", "Abs"})
NONLINEAR = frozenset({"Pow", "Erf", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish", "Exp",
                       "Sqrt", "LeakyRelu", "Elu", "Softplus", "Gelu", "Abs"})
# A lone clamp is the requantize's own clamp, not a table (ops_layout fuses it).
CLAMPS = frozenset({"Relu", "Clip"})
# Single ops whose function is their name, whatever their attributes.
NAMED_OPS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "HardSigmoid": "hardsigmoid",
             "HardSwish": "hardswish", "LeakyRelu": "leaky_relu", "Elu": "elu",
             "Softplus": "softplus", "Exp": "exp", "Gelu": "gelu"}


def _erf(x):
    return np.vectorize(math.erf)(x)


# Reference values of the functions an activation unit may hold (contract.ACTIVATION_FUNCTIONS)
KNOWN: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "silu": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    "hardswish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "hardsigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1),
    "softplus": lambda x: np.log1p(np.exp(x)),
    "exp": np.exp,
}
PROBE = np.linspace(-6.0, 6.0, 241)
# GELU's tanh form is within 1e-3 of the erf form; a different function is off by far more.
MATCH_TOLERANCE = 2e-3


@dataclass(frozen=True)
class Function:
    """One elementwise function of ``x``: its ops (``members``, in graph order) and result."""

    x: str
    y: str
    members: tuple[int, ...]      # indices into the graph's node list
    function: str | None          # a name of contract.ACTIVATION_FUNCTIONS, or None


def _scalar_constant(name: str, is_const, value) -> bool:
    if not is_const(name):
        return False
    v = value(name)
    return v is not None and np.asarray(v).size == 1


def find_functions(nodes, outputs, is_const, value, opset: int) -> list[Function]:
    """Every maximal single-input elementwise function subgraph of ``nodes`` (graph order).

    ``is_const(name)`` tells constants, ``value(name)`` folds one (or None); ``outputs`` are the
    graph outputs, which count as read outside.
    """
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name:
                readers.setdefault(name, []).append(i)
    taken: set[int] = set()
    found = []
    for seed, node in enumerate(nodes):
        if seed in taken or node.op_type not in ELEMENTWISE or node.domain not in ("", "ai.onnx") \
                or len([o for o in node.output if o]) != 1:
            continue
        live = [n for n in node.input if n and not is_const(n)]
        if len(set(live)) != 1 or not all(_scalar_constant(n, is_const, value)
                                          for n in node.input if n and n not in live):
            continue
        region = _grow(nodes, seed, live[0], readers, taken, is_const, value)
        fn = _as_function(nodes, region, live[0], readers, outputs, value, opset)
        if fn is not None:
            taken.update(region)
            found.append(fn)
    return found


def _grow(nodes, seed, x, readers, taken, is_const, value) -> list[int]:
    """The seed and every later elementwise node computed from it and ``x`` alone, visiting
    only readers of what the region makes (in graph order), so a large graph costs its edges."""
    region, made = [seed], {nodes[seed].output[0]}
    pending = list(readers.get(nodes[seed].output[0], []))
    heapq.heapify(pending)
    seen = set(pending)
    while pending:
        i = heapq.heappop(pending)
        node = nodes[i]
        if i in taken or node.op_type not in ELEMENTWISE or node.domain not in ("", "ai.onnx") \
                or len([o for o in node.output if o]) != 1:
            continue
        ins = [n for n in node.input if n]
        live = [n for n in ins if not is_const(n)]
        if not all(n in made or n == x for n in live) or \
                not all(_scalar_constant(n, is_const, value) for n in ins if is_const(n)):
            continue
        region.append(i)
        made.add(node.output[0])
        for r in readers.get(node.output[0], []):
            if r not in seen:
                seen.add(r)
                heapq.heappush(pending, r)
    return sorted(region)


def _as_function(nodes, region, x, readers, outputs, value, opset) -> Function | None:
    members = set(region)
    escaping = [nodes[i].output[0] for i in region
                if nodes[i].output[0] in outputs
                or any(r not in members for r in readers.get(nodes[i].output[0], []))]
    while len(escaping) > 1 or (escaping and escaping[0] != nodes[region[-1]].output[0]):
        # a value read outside before the end: the function is the part up to that value
        cut = min(region.index(next(i for i in region if nodes[i].output[0] == e))
                  for e in escaping)
        region = region[:cut + 1]
        members = set(region)
        escaping = [nodes[i].output[0] for i in region
                    if nodes[i].output[0] in outputs
                    or any(r not in members for r in readers.get(nodes[i].output[0], []))]
    if not escaping:
        return None
    ops = {nodes[i].op_type for i in region}
    squares = any(nodes[i].op_type == "Mul" and len({n for n in nodes[i].input if n}) == 1
                  for i in region)
    nonlinear = bool(ops & NONLINEAR) or squares or _product_of_live(nodes, region, x)
    if not nonlinear or ops <= CLAMPS:
        return None
    return Function(x, escaping[0], tuple(region), identify(nodes, region, x, value, opset))


def _product_of_live(nodes, region, x) -> bool:
    """A Mul of x (or a value made from x) by another such value: x * f(x) is nonlinear."""
    made = {nodes[i].output[0] for i in region} | {x}
    return any(nodes[i].op_type in ("Mul", "Div") and
               sum(n in made for n in nodes[i].input if n) == 2 for i in region)


def identify(nodes, region, x, value, opset: int) -> str | None:
    """The name of the function ``region`` computes of ``x``, by its values on PROBE."""
    if len(region) == 1 and nodes[region[0]].op_type in NAMED_OPS:
        return NAMED_OPS[nodes[region[0]].op_type]
    got = evaluate(nodes, region, x, value, PROBE, opset)
    if got is None:
        return None
    for name, fn in KNOWN.items():
        with np.errstate(over="ignore"):
            want = fn(PROBE)
        if np.all(np.abs(got - want) <= MATCH_TOLERANCE * np.maximum(1.0, np.abs(want))):
            return name
    return None


def evaluate(nodes, region, x, value, probe: np.ndarray, opset: int) -> np.ndarray | None:
    """The region's result for ``x = probe`` (float32), with onnx's reference evaluator."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    members = [nodes[i] for i in region]
    made = {o for n in members for o in n.output}
    constants = {n for node in members for n in node.input if n and n != x and n not in made}
    inits = []
    for name in sorted(constants):
        v = value(name)
        if v is None:
            return None
        inits.append(numpy_helper.from_array(np.asarray(v), name))
    y = members[-1].output[0]
    graph = helper.make_graph(
        [onnx.NodeProto.FromString(n.SerializeToString()) for n in members], "function",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [len(probe)])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], inits)
    try:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        out = ReferenceEvaluator(model).run(None, {x: probe.astype(np.float32)})[0]
    except Exception:  # an op the evaluator lacks at this opset: the table stays unnamed
        return None
    out = np.asarray(out, dtype=np.float64)
    return out if out.shape == probe.shape else None
