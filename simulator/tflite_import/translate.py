"""The translator: walks a TFLite subgraph in order and emits Program nodes.

Layouts. TFLite keeps activations NHWC, the Program NCHW. Constants are transposed here (filters
OHWI -> OIHW, depthwise [1, H, W, C*m] -> [C*m, 1, H, W]); activations are not copied around:
each TFLite tensor has up to two Program views, ``"nchw"`` (rank 4, what convolutions and pools
read) and ``"tfl"`` (TFLite's own layout, what reshapes, fully connected layers and the graph's
inputs and outputs use), and a transpose is emitted only when an op asks for a view that does
not exist yet. Graph inputs and outputs keep TFLite's names and layout, so the simulator takes
and returns the same arrays as LiteRT.

Errors are one-line ModelImportErrors naming the file, the operator and the tensor at fault.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from simulator.contract import ACCUMULATOR, FLOAT32, parse_dtype
from simulator.errors import ModelImportError, SimulatorError
from simulator.ir.builder import ProgramBuilder, unique_name
from simulator.ir.ops import OpKind, infer_shape
from simulator.ir.program import Program, make_node
from simulator.tflite_import.reader import TflModel, TflOp, TflTensor

NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
PROGRAM_DTYPE = {"INT8": "s8", "UINT8": "u8", "INT16": "s16", "INT32": "s32", "INT64": "s64",
                 "FLOAT32": "f32"}
ACTIVATION_TYPES = ("INT8", "INT16")  # int8, and 16x8: int16 activations with int8 weights
ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
ACTIVATION_RANGE = {"RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}


def round_half_away(v: float) -> int:
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


class Translator:
    def __init__(self, model: TflModel):
        self.m = model
        self.b = ProgramBuilder(Path(model.path).stem or "tflite")
        self.meta: dict = {"source": model.path, "format": "tflite", "estimate_only": False,
                           "tflite_views": {}}
        self.b.metadata = self.meta
        self.views: dict[int, dict[str, str]] = {}
        self.io = set(model.inputs) | set(model.outputs)
        self.consumers: Counter = Counter(i for op in model.ops for i in op.inputs if i >= 0)
        self.consumers.update(model.outputs)
        self.pads: dict[int, tuple[int, list[int]]] = {}   # PAD output -> (its input, pads)
        self.node_names: set[str] = set()

    # ------------------------------------------------------------------ naming and errors
    def tensor(self, index: int) -> TflTensor:
        return self.m.tensors[index]

    def where(self, op: TflOp, index: int | None = None) -> str:
        idx = index if index is not None else (op.outputs[0] if op.outputs else None)
        label = f", tensor {self.tensor(idx).name!r}" if idx is not None and idx >= 0 else ""
        return f"{self.m.path}: operator #{op.index} {op.opcode}{label}"

    def fail(self, op: TflOp, message: str, index: int | None = None) -> ModelImportError:
        return ModelImportError(f"{self.where(op, index)}: {message}")

    def _fresh(self, base: str) -> str:
        return unique_name(base, self.b.tensors)

    def _node_name(self, op: TflOp, suffix: str) -> str:
        return self._unique_node(f"{self.tensor(op.outputs[0]).name}{suffix}" if op.outputs
                                 else op.opcode)

    def _unique_node(self, base: str) -> str:
        name = unique_name(base, self.node_names)
        self.node_names.add(name)
        return name

    def view_name(self, index: int, layout: str) -> str:
        """The Program name of a TFLite tensor's view: TFLite's name for the view TFLite
        itself shows (graph inputs and outputs) or for the NCHW working copy of an inner
        rank-4 tensor; a suffix for the other."""
        t = self.tensor(index)
        if len(t.shape) != 4:
            return self._fresh(t.name)
        primary = "tfl" if index in self.io else "nchw"
        return self._fresh(t.name if layout == primary else f"{t.name}:{layout}")

    # ------------------------------------------------------------------ quantization
    def qparams(self, index: int, op: TflOp | None = None) -> dict:
        """dtype, per-tensor scale and zero point of an activation, as Program tensor kwargs."""
        t = self.tensor(index)
        dtype = PROGRAM_DTYPE.get(t.dtype)
        if dtype is None:
            raise self._err(op, f"tensor {t.name!r} has type {t.dtype}, which the simulator "
                                f"does not run", index)
        if dtype == "f32":
            return {"dtype": FLOAT32}
        if t.scale is None:
            raise self._err(op, f"tensor {t.name!r} ({t.dtype}) carries no quantization", index)
        if t.per_channel:
            raise self._err(op, f"activation {t.name!r} is quantized per channel", index)
        return {"dtype": parse_dtype(dtype), "scale": (t.scale[0],),
                "zero_point": (t.zero_point[0],)}

    def _err(self, op, message, index=None) -> ModelImportError:
        return self.fail(op, message, index) if op is not None else \
            ModelImportError(f"{self.m.path}: {message}")

    def scale(self, index: int) -> float:
        return self.tensor(index).scale[0]

    def zero_point(self, index: int) -> int:
        return self.tensor(index).zero_point[0]

    def activation_types(self, op: TflOp, indices, what: str = "operand") -> str:
        """The one TFLite type (INT8 or INT16) of these activations, or a one-line error; int16
        activations must be symmetric (zero point 0), as TFLite's Prepare insists."""
        kinds = {self.tensor(i).dtype for i in indices}
        for i in indices:
            t = self.tensor(i)
            if t.dtype not in ACTIVATION_TYPES:
                raise self.fail(op, f"{what} {t.name!r} is {t.dtype}; the simulator runs int8 "
                                    f"and int16 (16x8) {op.opcode}", i)
        if len(kinds) > 1:
            i = next(i for i in indices if self.tensor(i).dtype != self.tensor(indices[0]).dtype)
            raise self.fail(op, f"mixes {' and '.join(sorted(kinds))} ({what} "
                                f"{self.tensor(i).name!r}); the simulator runs {op.opcode} on "
                                f"one activation type", i)
        if kinds == {"INT16"}:
            for i in indices:
                t = self.tensor(i)
                if t.zero_point and any(z != 0 for z in t.zero_point):
                    raise self.fail(op, f"int16 {what} {t.name!r} has zero point "
                                        f"{t.zero_point[0]}; TFLite's int16 kernels are "
                                        f"symmetric (zero point 0)", i)
        return kinds.pop()

    def activation_range(self, op: TflOp, out: int, fused: int) -> dict:
        """CalculateActivationRangeQuantized: the fused activation as the output clamp, each
        bound ``zp + roundf(bound / scale)`` in float32, cut to the type's range."""
        name = ACTIVATIONS.get(fused, f"#{fused}")
        if name == "NONE":
            return {}
        if name not in ACTIVATION_RANGE:
            raise self.fail(op, f"fused activation {name} is not supported")
        dtype = self.qparams(out, op)["dtype"]
        scale, zp = np.float32(self.scale(out)), self.zero_point(out)
        lo_f, hi_f = ACTIVATION_RANGE[name]
        lo = max(dtype.qmin, zp + round_half_away(float(np.float32(lo_f) / scale)))
        hi = dtype.qmax if hi_f is None else \
            min(dtype.qmax, zp + round_half_away(float(np.float32(hi_f) / scale)))
        return {"clamp_min": lo if lo > dtype.qmin else None,
                "clamp_max": hi if hi < dtype.qmax else None}

    # ------------------------------------------------------------------ views and emission
    def define(self, index: int, layout: str, name: str) -> None:
        self.views.setdefault(index, {})[layout] = name
        self.meta["tflite_views"].setdefault(self.tensor(index).name, {})[layout] = name

    def view(self, index: int, layout: str, op: TflOp) -> str:
        """The Program tensor holding TFLite tensor ``index`` in ``layout``, made on demand:
        a constant is declared, an activation transposed from the view that exists."""
        t = self.tensor(index)
        if len(t.shape) != 4:
            layout = "tfl"
        have = self.views.get(index, {})
        if layout in have:
            return have[layout]
        if index in self.pads:
            raise self.fail(op, f"reads the output of a PAD ({t.name!r}) that only a following "
                                f"CONV_2D or DEPTHWISE_CONV_2D can absorb", index)
        if t.data is not None:
            data = t.data if layout == "tfl" else t.data.transpose(NHWC_TO_NCHW)
            name = self.b.constant(self._fresh(t.name), np.asarray(data, np.int64),
                                   **self._constant_quant(index, op))
            self.define(index, layout, name)
            return name
        if not have:
            raise self.fail(op, f"input {t.name!r} is not produced by any earlier operator",
                            index)
        src_layout, src = next(iter(have.items()))
        perm = NCHW_TO_NHWC if src_layout == "nchw" else NHWC_TO_NCHW
        out = self.view_name(index, layout)
        shape = tuple(self.b.tensors[src].shape[p] for p in perm)
        kept = [p for p in perm if self.b.tensors[src].shape[p] != 1]
        name = f"{t.name}/{layout}"
        if kept == sorted(kept):  # only size-1 axes move: the same bytes, a reshape
            self.emit(op, OpKind.RESHAPE, [src], out, node_name=name, shape=list(shape))
        else:
            self.emit(op, OpKind.TRANSPOSE, [src], out, node_name=name, perm=list(perm))
        self.define(index, layout, out)
        return out

    def _constant_quant(self, index: int, op: TflOp) -> dict:
        t = self.tensor(index)
        dtype = PROGRAM_DTYPE.get(t.dtype)
        if dtype is None or dtype == "f32":
            raise self.fail(op, f"constant {t.name!r} has type {t.dtype}; a float constant "
                                f"means float compute, which the simulator does not run", index)
        if t.scale is None:
            return {"dtype": dtype}
        return {"dtype": dtype, "scale": t.scale[0], "zero_point": t.zero_point[0]}

    def emit(self, op: TflOp, kind: OpKind, inputs: list[str], output: str, suffix: str = "",
             dtype=None, scale=None, zero_point=0, qaxis=None, node_name: str | None = None,
             **attrs) -> str:
        """Append one Program node for ``op``; a rejected node names the TFLite operator."""
        name = self._unique_node(node_name) if node_name else self._node_name(op, suffix)
        try:
            node = make_node(name, kind, inputs, [output], attrs)
            shape = infer_shape(kind, [self.b.tensors[i].shape for i in inputs], node.attrs,
                                f"node {name!r}")
            if dtype is None:
                first = self.b.tensors[inputs[0]]
                dtype, scale, zero_point = first.dtype, first.scale, first.zero_point
                qaxis = first.axis
            self.b.tensor(output, shape, dtype, scale, zero_point, qaxis)
        except SimulatorError as exc:
            raise self.fail(op, str(exc)) from None
        self.b.nodes.append(node)
        return output

    def emit_to(self, op: TflOp, kind: OpKind, inputs: list[str], out: int, layout: str,
                suffix: str = "", **attrs) -> str:
        """Emit a node that writes TFLite tensor ``out`` (its quantization) in ``layout``."""
        name = self.view_name(out, layout)
        self.emit(op, kind, inputs, name, suffix, **self._out_kwargs(out, op), **attrs)
        expected = self.tensor(out).shape
        if layout == "nchw" and len(expected) == 4:
            expected = tuple(expected[p] for p in NHWC_TO_NCHW)
        if tuple(self.b.tensors[name].shape) != tuple(expected):
            raise self.fail(op, f"computes shape {self.b.tensors[name].shape}, the model "
                                f"declares {list(self.tensor(out).shape)} ({layout})", out)
        self.define(out, layout, name)
        return name

    def _out_kwargs(self, out: int, op: TflOp) -> dict:
        q = self.qparams(out, op)
        return {"dtype": q["dtype"], "scale": q.get("scale"), "zero_point": q.get("zero_point", 0)}

    def layout_of(self, index: int) -> str:
        """The view an elementwise op should work in: NCHW if one exists (rank 4)."""
        have = self.views.get(index, {})
        return "nchw" if "nchw" in have or (len(self.tensor(index).shape) == 4 and
                                           "tfl" not in have) else "tfl"

    # ------------------------------------------------------------------ the walk
    def declare_inputs(self) -> None:
        for index in self.m.inputs:
            t = self.tensor(index)
            if any(d < 1 for d in t.shape):
                raise ModelImportError(f"{self.m.path}: graph input {t.name!r} has shape "
                                       f"{list(t.shape)}; dynamic sizes are not supported")
            q = self.qparams(index)
            self.b.tensor(t.name, t.shape, q["dtype"], q.get("scale"), q.get("zero_point", 0))
            self.b.inputs.append(t.name)
            self.define(index, "tfl", t.name)

    def run(self, handlers: dict) -> Program:
        self.declare_inputs()
        for op in self.m.ops:
            handler = handlers.get(op.opcode)
            if handler is None:
                raise self.fail(op, f"{op.opcode} is an op the simulator lacks")
            handler(self, op)
        last = self.m.ops[-1] if self.m.ops else None
        for index in self.m.outputs:  # TFLite's name and layout, as LiteRT returns them
            name = self.view(index, "tfl", last) if last else self.views[index]["tfl"]
            self.b.outputs.append(name)
        try:
            return self.b.build()
        except SimulatorError as exc:
            raise ModelImportError(f"{self.m.path}: translated Program is invalid: "
                                   f"{' '.join(str(exc).split())}") from None

    # ------------------------------------------------------------------ helpers for handlers
    def option(self, op: TflOp, name: str, default=None):
        getter = getattr(op.options, name, None) if op.options is not None else None
        return getter() if getter is not None else default

    def constant(self, op: TflOp, index: int, what: str) -> TflTensor:
        t = self.tensor(index)
        if t.data is None:
            raise self.fail(op, f"{what} {t.name!r} must be a constant", index)
        return t


def accumulator_kwargs(scales) -> dict:
    return {"dtype": ACCUMULATOR, "scale": tuple(scales),
            "qaxis": 1 if len(scales) > 1 else None}
