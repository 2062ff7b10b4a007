"""Are two Programs the same computation? A structural comparison that ignores names.

``program_differences(a, b)`` walks both node lists in order and pairs tensors by position (the
graph inputs, then each node's inputs and output), so that a Program and the Program imported
back from its ONNX export compare equal although the importer names accumulators and
requantize nodes its own way. Compared: op kinds in order; attributes (``real_multiplier`` as
float32, a requantize's clamps as the bounds they enforce); every tensor's shape, dtype, zero
points (``(0,)`` and ``(0, 0, ...)`` are the same zero point), per-channel axis, constant data
(exactly) and scales (as float32, within ``scale_ulps``). Returns one line per difference; an
empty list means the same Program.
"""

from __future__ import annotations

import numpy as np

from simulator.execute import clamp_bounds
from simulator.ir.ops import OpKind
from simulator.ir.program import Program, TensorInfo


def f32_ulps(a, b) -> int:
    """Distance in float32 ulps between two positive reals (as float32)."""
    ia = int(np.asarray([a], np.float32).view(np.int32)[0])
    ib = int(np.asarray([b], np.float32).view(np.int32)[0])
    return abs(ia - ib)


def _zero_points(t: TensorInfo) -> tuple:
    z = tuple(int(v) for v in t.zero_point)
    return z[:1] if len(set(z)) == 1 else z


def _axis(t: TensorInfo):
    n = max(len(t.scale or ()), len(t.zero_point))
    if n <= 1 or len(set(_zero_points(t))) <= 1 and len(set(t.scale or ())) <= 1:
        return None
    return t.axis % len(t.shape) if t.axis is not None else None


def _bounds(attrs: dict, out: TensorInfo) -> tuple[int, int]:
    return clamp_bounds(out, attrs)


class _Comparison:
    def __init__(self, a: Program, b: Program, scale_ulps: int, multiplier_ulps: int):
        self.a, self.b = a, b
        self.scale_ulps, self.multiplier_ulps = scale_ulps, multiplier_ulps
        self.pairs: dict[str, str] = {}
        self.diffs: list[str] = []
        self.max_scale_ulps = 0
        self.multiplier_channels: list[tuple[str, int, int]] = []  # node, channel, ulps

    def pair(self, na: str, nb: str, where: str) -> None:
        if na in self.pairs:
            if self.pairs[na] != nb:
                self.diffs.append(f"{where}: tensor {na!r} pairs with {self.pairs[na]!r} and "
                                  f"{nb!r}")
            return
        self.pairs[na] = nb
        self.tensor(self.a.tensors[na], self.b.tensors[nb], where)

    def tensor(self, ta: TensorInfo, tb: TensorInfo, where: str) -> None:
        w = f"{where}: tensor {ta.name!r}" + (f" (vs {tb.name!r})" if ta.name != tb.name else "")
        if ta.shape != tb.shape:
            self.diffs.append(f"{w}: shape {ta.shape} vs {tb.shape}")
        if ta.dtype != tb.dtype:
            self.diffs.append(f"{w}: dtype {ta.dtype} vs {tb.dtype}")
        if _zero_points(ta) != _zero_points(tb):
            self.diffs.append(f"{w}: zero point {ta.zero_point} vs {tb.zero_point}")
        if _axis(ta) != _axis(tb):
            self.diffs.append(f"{w}: per-channel axis {ta.axis} vs {tb.axis}")
        if (ta.scale is None) != (tb.scale is None):
            self.diffs.append(f"{w}: scale {ta.scale} vs {tb.scale}")
        elif ta.scale is not None:
            sa, sb = ta.scale, tb.scale
            if len(set(sa)) == 1 and len(set(sb)) == 1:
                sa, sb = sa[:1], sb[:1]
            if len(sa) != len(sb):
                self.diffs.append(f"{w}: {len(sa)} scales vs {len(sb)}")
            else:
                ulps = max(f32_ulps(x, y) for x, y in zip(sa, sb))
                self.max_scale_ulps = max(self.max_scale_ulps, ulps)
                if ulps > self.scale_ulps:
                    self.diffs.append(f"{w}: scales differ by {ulps} float32 ulps "
                                      f"(allowed {self.scale_ulps})")
        if (ta.data is None) != (tb.data is None):
            self.diffs.append(f"{w}: constant in one Program only")
        elif ta.data is not None and (ta.data.shape != tb.data.shape or
                                      not np.array_equal(ta.data, tb.data)):
            self.diffs.append(f"{w}: constant data differ")

    def node_attrs(self, na, nb, where: str) -> None:
        attrs_a, attrs_b = dict(na.attrs), dict(nb.attrs)
        if na.op is OpKind.REQUANTIZE:
            out_a, out_b = self.a.tensors[na.outputs[0]], self.b.tensors[nb.outputs[0]]
            if _bounds(attrs_a, out_a) != _bounds(attrs_b, out_b):
                self.diffs.append(f"{where}: clamp bounds {_bounds(attrs_a, out_a)} vs "
                                  f"{_bounds(attrs_b, out_b)}")
            ma, mb = attrs_a.pop("real_multiplier"), attrs_b.pop("real_multiplier")
            for k in ("clamp_min", "clamp_max"):
                attrs_a.pop(k), attrs_b.pop(k)
            if len(set(ma)) == 1 and len(set(mb)) == 1:
                ma, mb = ma[:1], mb[:1]
            if len(ma) != len(mb):
                self.diffs.append(f"{where}: {len(ma)} multipliers vs {len(mb)}")
            else:
                for c, (x, y) in enumerate(zip(ma, mb)):
                    u = f32_ulps(x, y)
                    if u:
                        self.multiplier_channels.append((na.name, c, u))
                    if u > self.multiplier_ulps:
                        self.diffs.append(f"{where}: channel {c} multiplier {x!r} vs {y!r} "
                                          f"({u} float32 ulps)")
            if len(ma) == 1 or len(mb) == 1:
                attrs_a.pop("axis", None), attrs_b.pop("axis", None)
        if attrs_a != attrs_b:
            self.diffs.append(f"{where}: attributes {attrs_a} vs {attrs_b}")

    def run(self) -> list[str]:
        a, b = self.a, self.b
        if len(a.inputs) != len(b.inputs) or len(a.outputs) != len(b.outputs):
            self.diffs.append(f"inputs/outputs: {a.inputs} -> {a.outputs} vs {b.inputs} -> "
                              f"{b.outputs}")
            return self.diffs
        for x, y in zip(a.inputs, b.inputs):
            self.pair(x, y, f"input {x!r}")
        if len(a.nodes) != len(b.nodes):
            self.diffs.append(f"{len(a.nodes)} nodes vs {len(b.nodes)}: "
                              f"{[n.op.value for n in a.nodes]} vs {[n.op.value for n in b.nodes]}")
        for i, (na, nb) in enumerate(zip(a.nodes, b.nodes)):
            where = f"node #{i} {na.name!r}"
            if na.op is not nb.op:
                self.diffs.append(f"{where}: op {na.op.value} vs {nb.op.value} ({nb.name!r})")
                break
            if len(na.inputs) != len(nb.inputs):
                self.diffs.append(f"{where}: {len(na.inputs)} inputs vs {len(nb.inputs)}")
                break
            for x, y in zip(na.inputs, nb.inputs):
                self.pair(x, y, where)
            self.pair(na.outputs[0], nb.outputs[0], where)
            self.node_attrs(na, nb, where)
        for x, y in zip(a.outputs, b.outputs):
            if self.pairs.get(x) != y:
                self.diffs.append(f"output {x!r}: pairs with {self.pairs.get(x)!r}, the other "
                                  f"Program's output is {y!r}")
        return self.diffs


def program_differences(a: Program, b: Program, *, scale_ulps: int = 0,
                        multiplier_ulps: int = 0) -> list[str]:
    """Every way ``b`` is not the same Program as ``a`` (see the module doc)."""
    return _Comparison(a, b, scale_ulps, multiplier_ulps).run()


def compare_programs(a: Program, b: Program, *, scale_ulps: int = 0, multiplier_ulps: int = 0):
    """The full comparison: ``.diffs``, ``.pairs`` (a's tensor -> b's), ``.max_scale_ulps`` and
    ``.multiplier_channels`` ((node, channel, ulps) of every multiplier not equal as float32)."""
    c = _Comparison(a, b, scale_ulps, multiplier_ulps)
    c.run()
    return c
