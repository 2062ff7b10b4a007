"""The teacher's graph as the converter reads it: operator nodes in a small vocabulary.

A ``TeacherGraph`` is what capture (``archnet.capture.export``) makes of any ``torch.nn.Module``
and what the normalising passes (``archnet.capture.passes``) rewrite: a straight-line list of
``TeacherNode`` over named values, with the weights held by name in ``params``. Each node's
``op`` is a family name the rules know (``conv2d``, ``linear``, ``batch_norm``, ``relu``,
``add`` ...; ``OPS``), or the ATen target it came from when capture knows no family for it, so
that planning can name it. ``run`` evaluates the graph in float with ``torch.nn.functional``:
the passes are proven by comparing ``run`` before and after, and capture by comparing ``run``
with the model itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from archnet.errors import ConversionError


@dataclass(frozen=True)
class TeacherNode:
    """One operator: ``inputs`` are value names (graph inputs or other nodes), ``params`` maps a
    role (``weight``, ``bias``, ``running_mean`` ...) to a name in ``TeacherGraph.params``,
    ``attrs`` the operator's settings; ``module``/``module_type`` say where it sits in the
    user's model (``layer1.0.conv1``, ``Conv2d``); ``shape`` is its output's shape on the
    example input."""

    name: str
    op: str
    inputs: tuple[str, ...]
    params: Mapping[str, str] = field(default_factory=dict)
    attrs: Mapping[str, object] = field(default_factory=dict)
    module: str = ""
    module_type: str = ""
    shape: tuple[int, ...] = ()

    @property
    def where(self) -> str:
        """How an error names the node: its module path, else its graph name."""
        return self.module or self.name


@dataclass
class TeacherGraph:
    inputs: list[str]
    input_shapes: dict[str, tuple[int, ...]]
    nodes: list[TeacherNode]
    outputs: list[str]
    params: dict[str, torch.Tensor]

    @cached_property
    def _by_name(self) -> dict[str, TeacherNode]:    # graphs are never changed in place
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> TeacherNode:
        return self._by_name[name]

    def shape(self, value: str) -> tuple[int, ...]:
        if value in self.input_shapes:
            return self.input_shapes[value]
        return self.node(value).shape

    def with_nodes(self, nodes: list[TeacherNode], params: dict | None = None,
                   outputs: list[str] | None = None) -> "TeacherGraph":
        """A new graph with these nodes (passes never change a graph in place)."""
        return TeacherGraph(list(self.inputs), dict(self.input_shapes), list(nodes),
                            list(self.outputs if outputs is None else outputs),
                            dict(self.params if params is None else params))

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """The graph's outputs in float for these inputs (one per graph input, in order)."""
        values = self.values(*inputs, keep=set(self.outputs))
        return [values[o] for o in self.outputs]

    def values(self, *inputs: torch.Tensor, keep: set[str]) -> dict[str, torch.Tensor]:
        """The values named in ``keep`` (node or input names) for these inputs; every other
        value is dropped once its last reader has run."""
        if len(inputs) != len(self.inputs):
            raise ConversionError(f"graph takes {len(self.inputs)} inputs, got {len(inputs)}")
        values: dict[str, object] = dict(zip(self.inputs, inputs))
        last = {v: i for i, n in enumerate(self.nodes) for v in n.inputs}
        with torch.no_grad():
            for i, n in enumerate(self.nodes):
                fn = _EVAL.get(n.op)
                if fn is None:
                    raise ConversionError(f"{n.where}: no float evaluation for op {n.op!r}")
                args = [values[v] for v in n.inputs]
                params = {k: self.params[v] for k, v in n.params.items()}
                values[n.name] = fn(args, params, dict(n.attrs))
                for v in n.inputs:
                    if last[v] == i and v not in keep:
                        del values[v]
        return {k: values[k] for k in keep}

    def op_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.op] = out.get(n.op, 0) + 1
        return out


def renamed_inputs(node: TeacherNode, mapping: Mapping[str, str]) -> TeacherNode:
    return replace(node, inputs=tuple(mapping.get(i, i) for i in node.inputs))


# ----------------------------------------------------------------------------- float semantics

def _p(params, key):
    return params.get(key)


def _conv(a, p, at):
    return F.conv2d(a[0], p["weight"], _p(p, "bias"), at["stride"], at["padding"],
                    at["dilation"], at["groups"])


def _batch_norm(a, p, at):
    return F.batch_norm(a[0], p["running_mean"], p["running_var"], _p(p, "weight"),
                        _p(p, "bias"), False, 0.0, at["eps"])


def _max_pool(a, p, at):
    return F.max_pool2d(a[0], at["kernel"], at["stride"], at["padding"], at["dilation"],
                        ceil_mode=at["ceil_mode"])


def _avg_pool(a, p, at):
    return F.avg_pool2d(a[0], at["kernel"], at["stride"], at["padding"], at["ceil_mode"],
                        at["count_include_pad"], at.get("divisor"))


def _scalar_or_tensor(a, p, key="other"):
    return a[1] if len(a) > 1 else (p[key] if key in p else None)


def _binary(fn):
    def ev(a, p, at):
        other = _scalar_or_tensor(a, p)
        if other is None:
            other = at["scalar"]
        return fn(a[0], other)
    return ev


def _operands(a, p, at) -> list[torch.Tensor]:
    """cat's operands in order, constants (captured at the example's batch) taken per row."""
    out, it = [], iter(a)
    batch = a[0].shape[0] if a else 1
    for i in range(len(a) + len(at.get("constants_at", []))):
        if i in at.get("constants_at", []):
            c = p[f"operand{i}"]
            out.append(c[:1].expand(batch, *c.shape[1:]) if c.dim() > 1 and at["dim"] != 0 else c)
        else:
            out.append(next(it))
    return out


def _masked(a) -> torch.Tensor:
    """Scores with the keys a key mask ``[batch, keys]`` drops (0) pushed to the lowest float,
    as models add their masks."""
    if len(a) < 2:
        return a[0]
    x, mask = a
    keep = (mask != 0).reshape(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[-1])
    return x.masked_fill(~keep, torch.finfo(x.dtype).min)


_EVAL: dict[str, Callable] = {
    "conv2d": _conv,
    "linear": lambda a, p, at: F.linear(a[0], p["weight"], _p(p, "bias")),
    "batch_norm": _batch_norm,
    "layer_norm": lambda a, p, at: F.layer_norm(a[0], at["normalized_shape"], _p(p, "weight"),
                                                _p(p, "bias"), at["eps"]),
    "relu": lambda a, p, at: F.relu(a[0]),
    "clamp": lambda a, p, at: torch.clamp(a[0], at["min"], at["max"]),
    "gelu": lambda a, p, at: F.gelu(a[0], approximate=at.get("approximate", "none")),
    "silu": lambda a, p, at: F.silu(a[0]),
    "sigmoid": lambda a, p, at: torch.sigmoid(a[0]),
    "tanh": lambda a, p, at: torch.tanh(a[0]),
    "hardswish": lambda a, p, at: F.hardswish(a[0]),
    "hardsigmoid": lambda a, p, at: F.hardsigmoid(a[0]),
    "leaky_relu": lambda a, p, at: F.leaky_relu(a[0], at["negative_slope"]),
    "max_pool2d": _max_pool,
    "avg_pool2d": _avg_pool,
    "global_avg_pool": lambda a, p, at: a[0].mean(dim=(2, 3), keepdim=at["keepdim"]),
    "mean": lambda a, p, at: a[0].mean(dim=at["dims"], keepdim=at["keepdim"]),
    "add": _binary(torch.add),
    "mul": _binary(torch.mul),
    "cat": lambda a, p, at: torch.cat(_operands(a, p, at), at["dim"]),
    "select": lambda a, p, at: a[0].select(at["dim"], at["index"]),
    "slice": lambda a, p, at: a[0].narrow(at["dim"], at["start"], at["end"] - at["start"]),
    "flatten": lambda a, p, at: torch.flatten(a[0], at["start"], at["end"]),
    "reshape": lambda a, p, at: a[0].reshape(
        [a[0].shape[0] if i == 0 and d == 0 else d for i, d in enumerate(at["shape"])]),
    "transpose": lambda a, p, at: a[0].permute(at["perm"]),
    "matmul": lambda a, p, at: torch.matmul(a[0], a[1] if len(a) > 1 else p["other"]),
    "softmax": lambda a, p, at: torch.softmax(_masked(a), at["dim"]),
    "embedding": lambda a, p, at: F.embedding(a[0], p["weight"]),
    "identity": lambda a, p, at: a[0],
    "cast": lambda a, p, at: a[0].to(getattr(torch, at["dtype"].removeprefix("torch."))),
}
OPS = tuple(_EVAL)
