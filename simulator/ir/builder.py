"""Build Programs in code: importers, exporters and tests all use this instead of raw dicts."""

from __future__ import annotations

import numpy as np

from simulator.contract import ACCUMULATOR, DType, FloatType, parse_dtype
from simulator.ir.ops import MAC_OPS, OpKind, infer_shape
from simulator.ir.program import Node, Program, TensorInfo, make_node


def _tuple(v, cast):
    if v is None:
        return None
    return tuple(cast(x) for x in np.atleast_1d(np.asarray(v)).ravel())


def _narrowest(data: np.ndarray, dtype) -> np.ndarray:
    """Integer constants in the narrowest NumPy type that holds their declared type and values:
    a Transformer's int8 tables would otherwise take eight bytes a weight in memory and on disk."""
    lo = min(dtype.qmin, int(data.min(initial=0)))
    hi = max(dtype.qmax, int(data.max(initial=0)))
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return data.astype(dt, copy=False)
    return data



def unique_name(base: str, *taken) -> str:
    """``base``, else ``base_1``, ``base_2`` ...: the first name in none of ``taken``."""
    name, i = base, 1
    while any(name in names for names in taken):
        name, i = f"{base}_{i}", i + 1
    return name

class ProgramBuilder:
    def __init__(self, name: str, metadata: dict | None = None):
        self.name = name
        self.tensors: dict[str, TensorInfo] = {}
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.metadata = dict(metadata or {})

    def _unique(self, base: str) -> str:
        return unique_name(base, self.tensors)

    def tensor(self, name: str, shape, dtype: DType | str, scale=None, zero_point=0,
               axis: int | None = None, data=None) -> str:
        dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
        if data is not None:
            data = np.asarray(data)
            if isinstance(dtype, FloatType):
                data = data.astype(np.float32)
            else:
                data = _narrowest(data if data.dtype.kind in "iu" else data.astype(np.int64), dtype)
        self.tensors[name] = TensorInfo(name, tuple(int(d) for d in shape), dtype,
                                        _tuple(scale, float), _tuple(zero_point, int) or (0,),
                                        axis, data)
        return name

    def input(self, name, shape, dtype, scale=None, zero_point=0) -> str:
        self.tensor(name, shape, dtype, scale, zero_point)
        self.inputs.append(name)
        return name

    def constant(self, name, data, dtype, scale=None, zero_point=0, axis=None) -> str:
        name = self._unique(name)
        data = np.asarray(data)
        return self.tensor(name, data.shape, dtype, scale, zero_point, axis, data)

    def node(self, op: str | OpKind, inputs, output: str, dtype: DType | str | None = None,
             scale=None, zero_point=0, quant_axis=None, name: str | None = None,
             out_shape=None, **attrs) -> str:
        """Append a node; its output shape is inferred unless ``out_shape`` is given (fallbacks).

        ``quant_axis`` is the output tensor's per-channel axis; op attributes (including an op's
        own ``axis``) go in ``attrs``.
        """
        axis = quant_axis
        node = make_node(name or output, op, inputs, [output], attrs)
        shape = out_shape
        if shape is None:
            shape = infer_shape(node.op, [self.tensors[i].shape for i in inputs], node.attrs,
                                f"node {node.name!r}")
        if dtype is None:
            if node.op in MAC_OPS:
                dtype = ACCUMULATOR
            else:
                first = self.tensors[inputs[0]]
                dtype, scale = first.dtype, first.scale if scale is None else scale
                zero_point = first.zero_point if zero_point == 0 else zero_point
                axis = first.axis if axis is None else axis
        self.tensor(output, shape, dtype, scale, zero_point, axis)
        self.nodes.append(node)
        return output

    def output(self, *names: str) -> None:
        self.outputs.extend(names)

    def build(self) -> Program:
        return Program(self.name, dict(self.tensors), list(self.nodes), list(self.inputs),
                       list(self.outputs), dict(self.metadata)).validate(f"program {self.name!r}")
