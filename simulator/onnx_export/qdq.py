"""The ``qdq`` and ``int4`` forms: quantized tensors around float ops (the QDQ format).

Every integer tensor of the Program is an integer ONNX value under its own name; an op reads
its inputs through DequantizeLinear, computes in float (Conv, Gemm with transB=1, MatMul,
MaxPool, AveragePool, GlobalAveragePool, Add, Concat, Flatten, Reshape, Transpose, Relu/Clip)
and its output is QuantizeLinear'd to the Program tensor's type, scale and zero point. Weights
and biases are integer initializers read through DequantizeLinear (per output channel, axis 0;
the bias with scale ``x_scale * w_scale``). A requantize's clamp narrower than the ONNX type is
a Relu (when it clamps at the real zero) or a Clip on the real values before QuantizeLinear;
in ``int4`` a Max and/or Min, because onnxruntime 1.32 with graph optimizations on removes a
Relu before an INT4 QuantizeLinear (wrong results: negative outputs after a ReLU) and refuses a
Clip before one.

``int4``: every tensor of at most 4 bits has ONNX type INT4 / UINT4 (opset 21), so a 4-bit
activation or a 2-bit weight is stored as a 4-bit integer, as the ecosystem (onnxruntime's
quantizer, TensorRT, OpenVINO) writes sub-byte QDQ models; the exact width is in the metadata
(``archnet.dtypes``). Graph inputs and outputs keep 8-bit types (onnxruntime's Python API passes
no 4-bit arrays). ``qdq``: 8-bit types (or 16/32) everywhere.

Arithmetic: a QDQ graph means "dequantize, compute in real numbers, quantize". onnxruntime
1.32 runs the int4 graph in float32 between the quantizers, so a convolution's sum and its
requantization are rounded in float32 rather than computed on int32 and rounded once: the
integers equal the simulator's (``onnx-qlinear``) except where the float32 value lands within
its rounding error of a .5, and such a difference then travels downstream. At 8 bits
onnxruntime's optimizer fuses DequantizeLinear -> Conv/Gemm -> QuantizeLinear back into integer
QLinearConv / QGemm kernels (scales chosen as in ``requant``), but use form ``qlinear`` when
the integers must be exact: that graph is integer by construction. ``import_onnx`` reads a QDQ
graph as the float graph it is (estimate-only).
"""

from __future__ import annotations

import numpy as np

from simulator.errors import ExportError
from simulator.ir.ops import MAC_OPS, OpKind
from simulator.ir.program import Node, Program, TensorInfo
from simulator.onnx_export.graph import (FLOAT, INT32, RANGES, GraphWriter, clamp_bounds,
                                         consumers, container, per_tensor)
from simulator.onnx_export.requant import matching_weight_scales

DEFAULT_OPSET = 21
FLOAT_OPS = ("conv2d+requantize, fully_connected+requantize, matmul+requantize, maxpool2d, "
             "avgpool2d, global_avgpool2d, add, concat, flatten, reshape, transpose, clamp, "
             "quantize, dequantize")


class FloatGraphExporter:
    """Shared walk of the float-compute forms; subclasses say how a real value becomes a
    Program tensor (``quantize``), how a tensor is read as real values (``real``), and how
    constants are written (``constant``)."""

    form = "?"
    supported = FLOAT_OPS
    max_min = False  # clamps as Max/Min instead of Relu/Clip

    def __init__(self, program: Program):
        self.p = program
        self.g = GraphWriter(program, self.form)
        self.readers = consumers(program)
        self._real: dict[str, str] = {}

    def where(self, node: Node) -> str:
        return f"node {node.name!r} ({node.op.value})"

    def refuse(self, node: Node, why: str = "") -> ExportError:
        return ExportError(f"node {node.name!r} ({node.op.value}): {why or 'not expressible'} "
                           f"in ONNX form {self.form!r}; it expresses {self.supported}")

    # subclass interface ------------------------------------------------------------
    def graph_input(self, name: str) -> str:
        raise NotImplementedError

    def real(self, name: str, where: str) -> str:
        raise NotImplementedError

    def quantize(self, real: str, name: str, where: str) -> str:
        raise NotImplementedError

    def weight(self, name: str, scale: np.ndarray, where: str) -> str:
        raise NotImplementedError

    def bias(self, name: str, scale: np.ndarray, where: str) -> str:
        raise NotImplementedError

    def output_type(self, name: str) -> int:
        raise NotImplementedError

    # the walk -----------------------------------------------------------------------
    def run(self, opset: int, doc: str):
        p, g = self.p, self.g
        inputs = [self.graph_input(n) for n in p.inputs]
        done: set[str] = set()
        for node in p.nodes:
            if node.name in done:
                continue
            if node.op in MAC_OPS:
                readers = self.readers[node.outputs[0]]
                if len(readers) != 1 or readers[0].op is not OpKind.REQUANTIZE or \
                        node.outputs[0] in p.outputs:
                    raise self.refuse(node, "a MAC whose accumulator is not requantized (read "
                                            "by exactly one requantize) is")
                self.mac_requantize(node, readers[0])
                done.add(readers[0].name)
            elif node.op is OpKind.REQUANTIZE:
                raise self.refuse(node, "a requantize that is not the only reader of a MAC "
                                        "accumulator")
            else:
                self.simple(node)
        return g.model(inputs, list(p.outputs), opset, doc=doc)

    def clamp_then_quantize(self, real: str, name: str, lo: int, hi: int, where: str,
                            type_range: tuple[int, int]) -> str:
        """Relu/Clip the real values to the integers [lo, hi] (when the quantizer's own
        saturation ``type_range`` is wider), then quantize into Program tensor ``name``."""
        g = self.g
        t = self.p.tensors[name]
        scale, zp = per_tensor(t, where)
        need_lo, need_hi = lo > type_range[0], hi < type_range[1]
        if (need_lo or need_hi) and self.max_min:
            for needed, op, bound in ((need_lo, "Max", lo), (need_hi, "Min", hi)):
                if needed:
                    c = g.scalar(f"{name}/{op.lower()}", np.float32(np.float32(bound - zp) *
                                                                     np.float32(scale)), FLOAT)
                    real = g.add(op, [real, c], g.typed(g.fresh(f"{name}/{op.lower()}_out"),
                                                        FLOAT, t.shape), name=f"{name}/{op}")
        elif need_lo or need_hi:
            shape = t.shape
            if need_lo and not need_hi and lo == zp:
                real = g.add("Relu", [real], g.typed(g.fresh(f"{name}/relu"), FLOAT, shape),
                             name=f"{name}/relu")
            else:
                bounds = [g.scalar(f"{name}/clip_min", np.float32(np.float32(lo - zp) *
                                                                  np.float32(scale)), FLOAT)
                          if need_lo else "",
                          g.scalar(f"{name}/clip_max", np.float32(np.float32(hi - zp) *
                                                                  np.float32(scale)), FLOAT)
                          if need_hi else ""]
                while bounds and bounds[-1] == "":
                    bounds.pop()
                real = g.add("Clip", [real, *bounds],
                             g.typed(g.fresh(f"{name}/clip"), FLOAT, shape), name=f"{name}/clip")
        return self.quantize(real, name, where)

    def quantizer_range(self, t: TensorInfo) -> tuple[int, int]:
        """The integers a quantizer into tensor ``t`` saturates to (subclasses: the ONNX type's
        or the Quant node's bit width)."""
        return t.dtype.qmin, t.dtype.qmax

    def mac_requantize(self, mac: Node, rq: Node) -> None:
        p, g = self.p, self.g
        where = self.where(mac)
        x, w = mac.inputs[0], mac.inputs[1]
        bias = mac.inputs[2] if len(mac.inputs) > 2 else None
        y = rq.outputs[0]
        tx, tw, ty = p.tensors[x], p.tensors[w], p.tensors[y]
        xs, _ = per_tensor(tx, where)
        ys, _ = per_tensor(ty, self.where(rq))
        lo, hi = clamp_bounds(rq, ty)
        mult = rq.attrs["real_multiplier"]
        channels = ty.shape[1] if mac.op is not OpKind.MATMUL else 1
        if len(mult) > 1 and (rq.attrs["axis"] % len(ty.shape) != 1 or len(mult) != channels):
            raise self.refuse(rq, f"per-channel multipliers along axis {rq.attrs['axis']}")
        if mac.op is OpKind.MATMUL:
            if bias:
                raise self.refuse(mac, "matmul with a bias")
            w_in = self.real(w, where)
        else:
            if tw.scale is None or tw.data is None:
                raise self.refuse(mac, f"weights {w!r} need data and a scale")
            # scales whose float32 multiplier is the Program's where one is: what onnxruntime
            # uses when it fuses the QDQ pattern into QLinearConv / QGemm
            w_scale = matching_weight_scales(xs, tw.scale, ys, mult)
            w_in = self.weight(w, w_scale, where)
        ins = [self.real(x, where), w_in]
        if bias:
            ins.append(self.bias(bias, (np.float32(xs) * w_scale).astype(np.float32), where))
        acc = g.typed(g.fresh(f"{y}/acc_real"), FLOAT, ty.shape)
        a = mac.attrs
        if mac.op is OpKind.CONV2D:
            g.add("Conv", ins, acc, name=mac.name, kernel_shape=list(tw.shape[2:]),
                  strides=a["strides"], pads=a["pads"], dilations=a["dilations"],
                  group=a["groups"])
        elif mac.op is OpKind.FULLY_CONNECTED:
            g.add("Gemm", ins, acc, name=mac.name, transB=1)
        else:
            g.add("MatMul", ins, acc, name=mac.name)
        self.clamp_then_quantize(acc, y, lo, hi, self.where(rq), self.quantizer_range(ty))

    def simple(self, node: Node) -> None:
        p, g = self.p, self.g
        where = self.where(node)
        out = node.outputs[0]
        t = p.tensors[out]
        a = node.attrs
        if node.op is OpKind.QUANTIZE:
            if p.tensors[node.inputs[0]].is_int:
                raise self.refuse(node, "quantize of an integer tensor")
            self.clamp_then_quantize(node.inputs[0], out, t.dtype.qmin, t.dtype.qmax, where,
                                     self.quantizer_range(t))
            return
        if node.op is OpKind.DEQUANTIZE:
            g.add("Identity", [self.real(node.inputs[0], where)], out, name=node.name)
            g.typed(out, FLOAT, t.shape)
            g.holds(out, out)
            return
        if node.op in (OpKind.FALLBACK, OpKind.LOOKUP_TABLE, OpKind.SOFTMAX):
            raise self.refuse(node)
        ins = [self.real(n, where) for n in node.inputs]
        real = g.typed(g.fresh(f"{out}/real_out"), FLOAT, t.shape)
        lo, hi = t.dtype.qmin, t.dtype.qmax
        if node.op is OpKind.MAXPOOL2D:
            g.add("MaxPool", ins, real, name=node.name, kernel_shape=a["kernel"],
                  strides=a["strides"], pads=a["pads"])
        elif node.op is OpKind.AVGPOOL2D:
            g.add("AveragePool", ins, real, name=node.name, kernel_shape=a["kernel"],
                  strides=a["strides"], pads=a["pads"],
                  count_include_pad=int(a["count_include_pad"]))
        elif node.op is OpKind.GLOBAL_AVGPOOL2D:
            g.add("GlobalAveragePool", ins, real, name=node.name)
        elif node.op is OpKind.ADD:
            g.add("Add", ins, real, name=node.name)
            lo, hi = clamp_bounds(node, t)
        elif node.op is OpKind.CONCAT:
            g.add("Concat", ins, real, name=node.name, axis=a["axis"])
        elif node.op is OpKind.FLATTEN:
            g.add("Flatten", ins, real, name=node.name, axis=a["axis"])
        elif node.op is OpKind.RESHAPE:
            g.add("Reshape", [ins[0], g.shape_constant(f"{out}/shape", t.shape)], real,
                  name=node.name)
        elif node.op is OpKind.TRANSPOSE:
            g.add("Transpose", ins, real, name=node.name, perm=a["perm"])
        elif node.op is OpKind.CLAMP:
            g.add("Identity", ins, real, name=node.name)
            lo, hi = max(lo, a["min"]), min(hi, a["max"])
        else:
            raise self.refuse(node)
        self.clamp_then_quantize(real, out, lo, hi, where, self.quantizer_range(t))


class QDQExporter(FloatGraphExporter):
    supported = FLOAT_OPS

    def __init__(self, program: Program, int4: bool):
        self.form = "int4" if int4 else "qdq"
        self.int4 = int4
        # onnxruntime 1.32's optimizer drops a Relu before an INT4 QuantizeLinear and fails on a
        # Clip before one (ClipQuantFusion: "Unexpected data type"); Max/Min it leaves alone
        self.max_min = int4
        super().__init__(program)

    def type_of(self, name: str, io: bool = False) -> int:
        t = self.p.tensors[name]
        return container(t.dtype, int4=self.int4 and not io, where=f"tensor {name!r}")

    def quantizer_range(self, t: TensorInfo) -> tuple[int, int]:
        return RANGES[self.type_of(t.name, t.name in self.p.outputs)]

    def qparams(self, name: str, where: str, et: int) -> tuple[str, str]:
        scale, zp = per_tensor(self.p.tensors[name], where)
        return (self.g.scalar(f"{name}/scale", np.float32(scale), FLOAT, key=("scale", name)),
                self.g.scalar(f"{name}/zero_point", zp, et, key=("zp", name, et)))

    def graph_input(self, name: str) -> str:
        t = self.p.tensors[name]
        self.g.typed(name, self.type_of(name, io=True) if t.is_int else FLOAT, t.shape)
        return self.g.holds(name, name)

    def real(self, name: str, where: str) -> str:
        t = self.p.tensors[name]
        if not t.is_int:
            return name
        if name not in self._real:
            et = self.g.value_info[name][0]
            self._real[name] = self.g.add(
                "DequantizeLinear", [name, *self.qparams(name, where, et)],
                self.g.typed(self.g.fresh(f"{name}/real"), FLOAT, t.shape),
                name=f"{name}/dequantize")
        return self._real[name]

    def quantize(self, real: str, name: str, where: str) -> str:
        t = self.p.tensors[name]
        et = self.type_of(name, io=name in self.p.outputs)
        self.g.add("QuantizeLinear", [real, *self.qparams(name, where, et)], name,
                   name=f"{name}/quantize")
        self.g.typed(name, et, t.shape)
        return self.g.holds(name, name)

    def _dequantized_constant(self, name: str, data, scale, zp, et: int) -> str:
        g = self.g
        g.initializer(name, data, et, exact=True)
        g.holds(name, name)
        scale = np.asarray(scale, np.float32)
        zp = np.asarray(zp)
        if zp.size != scale.size:
            zp = np.broadcast_to(zp, scale.shape)
        per_axis = scale.size > 1
        s = g.initializer(f"{name}/scale", scale if per_axis else scale.reshape(()), FLOAT)
        z = g.initializer(f"{name}/zero_point", zp if per_axis else zp.reshape(()), et)
        real = g.typed(g.fresh(f"{name}/real"), FLOAT, np.shape(data))
        g.add("DequantizeLinear", [name, s, z], real, name=f"{name}/dequantize",
              **({"axis": 0} if per_axis else {}))
        return real

    def weight(self, name: str, scale, where: str) -> str:
        t = self.p.tensors[name]
        return self._dequantized_constant(name, t.data, scale, np.asarray(t.zero_point),
                                          self.type_of(name))

    def bias(self, name: str, scale, where: str) -> str:
        t = self.p.tensors[name]
        if not t.is_int or t.dtype.bits > 32:
            raise ExportError(f"{where}: bias {name!r} is {t.dtype}; ONNX biases are int32")
        return self._dequantized_constant(name, t.data, scale, np.zeros(1, np.int64), INT32)


def export_qdq(program: Program, opset: int | None = None, *, int4: bool = False):
    opset = DEFAULT_OPSET if opset is None else int(opset)
    need = 21 if int4 else 13
    if opset < need:
        raise ExportError(f"form {'int4' if int4 else 'qdq'!r} needs opset >= {need}, got {opset}")
    doc = ("archnet Program as QDQ ONNX with INT4/UINT4 types for tensors of <= 4 bits (form "
           "'int4')" if int4 else "archnet Program as QDQ ONNX (form 'qdq')")
    return QDQExporter(program, int4).run(opset, doc)
