"""Quantization parameters of every integer tensor of an ONNX graph.

ONNX gives scales and zero points to *ops* (QuantizeLinear's y, QLinearConv's x/w/y,
DequantizeLinear's x, ConvInteger's zero points); the Program gives them to *tensors*. Each op
that names a tensor's parameters makes a claim; ops that move integers without changing their
meaning (MaxPool, Concat, Relu, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Identity,
Dropout) join their inputs and output into one group that must share one set. Two claims that
disagree are a ModelImportError naming both nodes: the simulator keeps one quantization per
tensor, and the MAC kernels read the zero point from the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from simulator.errors import ModelImportError

PASS_THROUGH = frozenset({"MaxPool", "Concat", "Relu", "Clip", "Pad", "Reshape", "Flatten",
                          "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout"})


@dataclass(frozen=True)
class QParams:
    scale: tuple[float, ...] | None = None
    zero_point: tuple[int, ...] = (0,)
    axis: int | None = None


@dataclass
class _Claim:
    scale: tuple[float, ...] | None
    zero_point: tuple[int, ...] | None
    axis: int | None
    where: str


class _Groups:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _as_tuple(arr, cast) -> tuple:
    return tuple(cast(v) for v in np.asarray(arr).ravel())


def collect(nodes, value: Callable, const_node: Callable, where: Callable,
            rank: Callable[[str], int | None]) -> dict[str, QParams]:
    """QParams per tensor name; ``value(name, node)`` returns a constant's array or raises."""
    groups = _Groups()
    claims: dict[str, list[_Claim]] = {}

    def claim(tensor: str, node, scale_name: str | None, zp_name: str | None,
              axis: int | None = None):
        if not tensor:
            return
        scale = zp = None
        if scale_name:
            s = np.asarray(value(scale_name, node), dtype=np.float32)
            scale = _as_tuple(s, float)
            if not scale or not all(np.isfinite(scale)) or min(scale) <= 0:
                raise ModelImportError(f"{where(node)}: scale {scale_name!r} = {_short(scale)} "
                                       f"must be finite and > 0")
        if zp_name:
            zp = _as_tuple(value(zp_name, node), int)
            if not zp:
                raise ModelImportError(f"{where(node)}: zero point {zp_name!r} is empty")
        elif scale_name:
            zp = (0,)
        n = max(len(scale or ()), len(zp or ()))
        if n > 1:
            r = rank(tensor)
            if axis is None or r is None or not -r <= axis < r:
                raise ModelImportError(f"{where(node)}: per-channel parameters for {tensor!r} "
                                       f"need a valid axis (got {axis}) and a known rank "
                                       f"(got {r})")
            axis = axis % r
        else:
            axis = None
        claims.setdefault(tensor, []).append(_Claim(scale, zp, axis, where(node)))

    def opt(node, i):
        return node.input[i] if len(node.input) > i and node.input[i] else None

    for node in nodes:
        op = node.op_type
        if op == "QuantizeLinear":
            claim(node.output[0], node, opt(node, 1), opt(node, 2), _axis(node))
        elif op == "DequantizeLinear":
            claim(node.input[0], node, opt(node, 1), opt(node, 2), _axis(node))
        elif op == "QLinearConv":
            claim(node.input[0], node, opt(node, 1), opt(node, 2))
            claim(node.input[3], node, opt(node, 4), opt(node, 5), 0)
            claim(node.output[0], node, opt(node, 6), opt(node, 7))
        elif op == "QLinearMatMul":
            claim(node.input[0], node, opt(node, 1), opt(node, 2))
            claim(node.input[3], node, opt(node, 4), opt(node, 5), -1)
            claim(node.output[0], node, opt(node, 6), opt(node, 7))
        elif op == "QGemm" and node.domain == "com.microsoft":
            claim(node.input[0], node, opt(node, 1), opt(node, 2))
            claim(node.input[3], node, opt(node, 4), opt(node, 5), 0 if _trans_b(node) else -1)
            claim(node.output[0], node, opt(node, 7), opt(node, 8))
        elif op in ("QLinearSigmoid", "QLinearLeakyRelu") and node.domain == "com.microsoft":
            claim(node.input[0], node, opt(node, 1), opt(node, 2))
            claim(node.output[0], node, opt(node, 3), opt(node, 4))
        elif op == "QLinearMul" and node.domain == "com.microsoft":
            claim(node.input[0], node, opt(node, 1), opt(node, 2))
            claim(node.input[3], node, opt(node, 4), opt(node, 5))
            claim(node.output[0], node, opt(node, 6), opt(node, 7))
        elif op == "ConvInteger":
            claim(node.input[0], node, None, opt(node, 2))
            claim(node.input[1], node, None, opt(node, 3), 0)
        elif op == "MatMulInteger":
            claim(node.input[0], node, None, opt(node, 2), -2)
            claim(node.input[1], node, None, opt(node, 3), -1)
        elif op in PASS_THROUGH and not const_node(node) and node.input and node.input[0]:
            data = [i for i in node.input if i] if op == "Concat" else [node.input[0]]
            for name in data + [node.output[0]]:
                groups.union(data[0], name)

    members: dict[str, list[str]] = {}
    for tensor in set(claims) | set(groups.parent):
        members.setdefault(groups.find(tensor), []).append(tensor)
    out: dict[str, QParams] = {}
    for root, names in members.items():
        scale = zp = axis = None
        first_scale = first_zp = None
        for name in sorted(names):
            for c in claims.get(name, ()):
                if c.scale is not None:
                    if scale is not None and (c.scale != scale or c.axis != axis):
                        raise ModelImportError(
                            f"{c.where}: gives tensor {name!r} scale {_short(c.scale)}, but "
                            f"{first_scale} gives {_short(scale)} to the same values; the "
                            f"simulator keeps one quantization per tensor")
                    if scale is None:
                        scale, first_scale = c.scale, c.where
                        axis = c.axis if len(c.scale) > 1 else axis
                if c.zero_point is not None:
                    if zp is not None and c.zero_point != zp:
                        raise ModelImportError(
                            f"{c.where}: gives tensor {name!r} zero point "
                            f"{_short(c.zero_point)}, but {first_zp} gives {_short(zp)} to the "
                            f"same values")
                    if zp is None:
                        zp, first_zp = c.zero_point, c.where
                        if len(zp) > 1:
                            axis = c.axis
        per_channel = (scale is not None and len(scale) > 1) or (zp is not None and len(zp) > 1)
        if per_channel and len(names) > 1:
            raise ModelImportError(
                f"{first_scale or first_zp}: per-channel quantization of {sorted(names)[0]!r} "
                f"passes through a layout op (MaxPool/Concat/Reshape/...); only per-tensor "
                f"activations are supported")
        params = QParams(scale, zp or (0,), axis if per_channel else None)
        for name in names:
            out[name] = params
    return out


def _short(values, limit: int = 6) -> str:
    values = list(values)
    head = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:limit])
    return f"[{head}{', ...' if len(values) > limit else ''}]" + \
        (f" ({len(values)} values)" if len(values) > limit else "")


def _axis(node) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return int(a.i)
    return 1


def _trans_b(node) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)
