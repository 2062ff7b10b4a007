"""The ``qlinear`` form: an 8-bit integer ONNX graph whose integers onnxruntime computes as the
Program does under a chip profile, for every input; ``import_onnx`` maps its QLinear ops back to
the same Program.

Program                                  ONNX (opset >= 13; 21 by default)
---------------------------------------  -----------------------------------------------------
conv2d -> requantize                     QLinearConv (int32 bias)
fully_connected -> requantize            com.microsoft QGemm, transB=1 (int32 bias): the op
                                         onnxruntime's own quantizer writes for a biased Gemm;
                                         standard QLinearMatMul has no bias input
matmul -> requantize                     QLinearMatMul
... where no float32 scales are proven   ConvInteger / MatMulInteger, Add of the int32 bias,
exact (``requant``)                      then the requantize as plain ops (``explicit``)
conv2d / fully_connected / matmul alone  ConvInteger / MatMulInteger (no bias)
maxpool2d, concat, flatten, reshape,     MaxPool, Concat, Flatten, Reshape, Transpose on the
transpose                                integers
clamp(0, qmax) of a signed tensor        Relu (ONNX Relu on integers is max(x, 0))
quantize / dequantize                    QuantizeLinear / DequantizeLinear

onnxruntime's QLinearConv and QGemm only write the type of their input (u8 in, u8 out), and
an ONNX requantization saturates to the whole type. A requantize whose output type differs from
its input's (u8 -> s8), or which clamps (ReLU on a signed output: ``clamp_min`` 0), is written
as the op into its input's type, with a zero point chosen so that its saturation is one bound,
followed by DequantizeLinear -> QuantizeLinear to the Program's type, zero point and scale,
whose own saturation is the other bound; that pair returns every integer unchanged (checked).
The importer folds the three back into one requantize. A clamp no zero point expresses (both
bounds inside the type) takes the explicit form.

The graph input and output types are the Program's (an 8-bit image stays uint8); there is no
float boundary unless the Program has quantize/dequantize nodes.
"""

from __future__ import annotations

import numpy as np

from simulator.errors import ExportError
from simulator.ir.ops import OpKind
from simulator.ir.program import Node, Program
from simulator.onnx_export.explicit import (NumpyOps, OnnxOps, check_int64_range, requant_of,
                                            requantize)
from simulator.onnx_export.graph import (FLOAT, INT8, INT32, RANGES, TYPE_NAMES, UINT8,
                                         GraphWriter, clamp_bounds, consumers, per_tensor,
                                         short_list)
from simulator.onnx_export.requant import Layer, fit_qlinear, integer_identity, layer_of

SUPPORTED = ("conv2d+requantize, fully_connected+requantize, matmul+requantize, conv2d and "
             "fully_connected without bias, matmul, maxpool2d, concat, flatten, reshape, "
             "transpose, clamp(0, qmax) of a signed tensor (Relu), quantize, dequantize")
DEFAULT_OPSET = 21
MIN_OPSET = 13


def _type(t, where: str, *, bias_ok: bool = False) -> int:
    """ONNX type of a Program tensor in this form: u8, s8 (s32 for biases and accumulators)."""
    if not t.is_int:
        return FLOAT
    if t.dtype.bits == 8:
        return INT8 if t.dtype.signed else UINT8
    if bias_ok and t.dtype.signed and t.dtype.bits <= 32:
        return INT32
    raise ExportError(f"{where}: tensor {t.name!r} is {t.dtype}; form 'qlinear' holds 8-bit "
                      f"integers only (use form='int4' or form='qonnx' below 8 bits)")


def _op_zero_point(t_in: int, t_out: int, z: int, lo: int, hi: int) -> int | None:
    """The zero point of a QLinear op writing its input's type ``t_in`` so that its saturation
    is one of the Program's bounds [lo, hi] (the DequantizeLinear -> QuantizeLinear after it
    gives the other); None where no zero point does (both bounds inside the type)."""
    q1min, q1max = RANGES[t_in]
    t_min, t_max = RANGES[t_out]
    if lo > t_min and hi < t_max:
        return None
    if lo > t_min:
        z1 = q1min + z - lo
    elif hi < t_max:
        z1 = q1max + z - hi
    else:
        z1 = z + q1min - t_min
    if not q1min <= z1 <= q1max or \
            (max(q1min - z1 + z, t_min), min(q1max - z1 + z, t_max)) != (lo, hi):
        return None
    return z1


class QLinearExporter:
    def __init__(self, program: Program, profile):
        self.p = program
        self.arith = profile.arithmetic
        self.g = GraphWriter(program, "qlinear")
        self.g.notes["archnet.profile"] = profile.name
        self.readers = consumers(program)
        self.adjustments: list[dict] = []

    def where(self, node: Node) -> str:
        return f"node {node.name!r} ({node.op.value})"

    def refuse(self, node: Node, why: str = "") -> ExportError:
        return ExportError(f"node {node.name!r} ({node.op.value}): {why or 'not expressible'} "
                           f"in ONNX form 'qlinear'; it expresses {SUPPORTED}")

    # ------------------------------------------------------------------ values
    def value(self, name: str, where: str, *, bias_ok: bool = False) -> str:
        """The ONNX value of a Program tensor: a graph input, an earlier output or a constant."""
        t = self.p.tensors[name]
        if t.data is not None and name not in self.g.values:
            self.g.initializer(name, t.data, _type(t, where, bias_ok=bias_ok), exact=True)
            self.g.holds(name, name)
        return name

    def qparams(self, name: str, where: str) -> tuple[str, str]:
        """Scale and zero point initializers of a per-tensor activation (shared by every use)."""
        t = self.p.tensors[name]
        scale, zp = per_tensor(t, where)
        s = self.g.scalar(f"{name}/scale", np.float32(scale), FLOAT, key=("scale", name))
        z = self.g.scalar(f"{name}/zero_point", zp, _type(t, where), key=("zp", name))
        return s, z

    def output(self, node: Node, onnx_name: str | None = None) -> str:
        out = node.outputs[0]
        t = self.p.tensors[out]
        self.g.typed(onnx_name or out, _type(t, self.where(node), bias_ok=True), t.shape)
        return self.g.holds(onnx_name or out, out)

    # ------------------------------------------------------------------ the walk
    def run(self, opset: int):
        g, p = self.g, self.p
        for name in p.inputs:
            t = p.tensors[name]
            g.typed(name, _type(t, f"input {name!r}"), t.shape)
            g.holds(name, name)
        done: set[str] = set()
        for node in p.nodes:
            if node.name in done:
                continue
            if node.op in (OpKind.CONV2D, OpKind.FULLY_CONNECTED, OpKind.MATMUL):
                readers = self.readers[node.outputs[0]]
                if len(readers) == 1 and readers[0].op is OpKind.REQUANTIZE and \
                        node.outputs[0] not in p.outputs:
                    self.mac_requantize(node, readers[0])
                    done.add(readers[0].name)
                else:
                    self.mac_integer(node)
            elif node.op is OpKind.REQUANTIZE:
                raise self.refuse(node, "a requantize that is not the only reader of a conv2d, "
                                        "fully_connected or matmul accumulator")
            else:
                self.simple(node)
        for name in p.outputs:
            if name not in g.value_info:
                raise ExportError(f"output {name!r} is not produced by any exported node")
        if self.adjustments:
            g.notes["archnet.requant_adjustments"] = self.adjustments
        return g.model(list(p.inputs), list(p.outputs), opset,
                       doc="archnet Program as an 8-bit QLinear ONNX graph (form 'qlinear')")

    # ------------------------------------------------------------------ MAC + requantize
    def mac_requantize(self, mac: Node, rq: Node) -> None:
        """A QLinear op where scales are proven to give the Program's integers on every
        reachable accumulator (``requant``), else the explicit form (``explicit``)."""
        g, p = self.g, self.p
        where = self.where(mac)
        x, w = mac.inputs[0], mac.inputs[1]
        bias = mac.inputs[2] if len(mac.inputs) > 2 else None
        y = rq.outputs[0]
        tx, tw, ty = p.tensors[x], p.tensors[w], p.tensors[y]
        xs, _ = per_tensor(tx, where)
        ys, z = per_tensor(ty, self.where(rq))
        t_in, t_out = _type(tx, where), _type(ty, self.where(rq))
        lo, hi = clamp_bounds(rq, ty)
        q1min, q1max = RANGES[t_in]
        if mac.op is OpKind.MATMUL:
            ws, w_zp = per_tensor(tw, where)
            w_scale = np.float32(ws)
            if bias:
                raise self.refuse(mac, "matmul with a bias")
        else:
            if tw.scale is None or tw.data is None:
                raise self.refuse(mac, f"weights {w!r} need data and a scale")
            w_scale = np.asarray(tw.scale, np.float32)
        channels = ty.shape[1] if mac.op is not OpKind.MATMUL else 1
        mult = rq.attrs["real_multiplier"]
        if len(mult) > 1 and (rq.attrs["axis"] % len(ty.shape) != 1 or len(mult) != channels):
            raise self.refuse(rq, f"per-channel multipliers along axis {rq.attrs['axis']} (ONNX: "
                                  f"output channels, axis 1)")
        layer = layer_of(p, mac, rq, self.arith, where, lo, hi)
        z1 = _op_zero_point(t_in, t_out, z, lo, hi)
        chain = t_in != t_out or z1 != z
        if z1 is None:
            self.mac_explicit(mac, rq, layer, f"clamp [{lo}, {hi}] inside "
                                              f"{TYPE_NAMES[t_out]} from {TYPE_NAMES[t_in]}")
            return
        if chain and not integer_identity(ys, ys, q1min - z1, q1max - z1):
            self.mac_explicit(mac, rq, layer, "no DequantizeLinear -> QuantizeLinear identity")
            return
        fit, missing = fit_qlinear(layer, xs, w_scale, ys,
                                   free_weights=mac.op is not OpKind.MATMUL)
        if fit is None:
            self.mac_explicit(mac, rq, layer, f"no float32 scale proven for channels "
                                              f"{short_list(missing, 8)}")
            return
        note = fit.note(mac.name)
        if note:
            self.adjustments.append(note)
        xq = self.qparams(x, where)
        if chain:  # the op writes its input's type; DequantizeLinear -> QuantizeLinear retype
            y1 = g.fresh(f"{y}/{TYPE_NAMES[t_in]}")
            y1q = (g.scalar(f"{y1}/scale", np.float32(ys), FLOAT),
                   g.scalar(f"{y1}/zero_point", z1, t_in))
            g.typed(y1, t_in, ty.shape)
        else:
            y1, y1q = y, self.qparams(y, self.where(rq))
        if mac.op is OpKind.MATMUL:
            wq = self.qparams(w, where)
        else:
            scale = fit.w_scale if fit.w_scale.size > 1 else fit.w_scale.reshape(())
            w_zp = np.asarray(tw.zero_point)
            if mac.op is OpKind.FULLY_CONNECTED and w_zp.size != scale.size:
                w_zp = np.broadcast_to(w_zp, scale.shape)  # QGemm: one zero point per scale
            wq = (g.initializer(f"{w}/scale", scale, FLOAT),
                  g.initializer(f"{w}/zero_point",
                                w_zp.reshape(()) if w_zp.size == 1 else w_zp, _type(tw, where)))
        xin, win = self.value(x, where), self.value(w, where)
        b_in = self.value(bias, where, bias_ok=True) if bias else ""
        if mac.op is OpKind.CONV2D:
            a = mac.attrs
            g.add("QLinearConv", [xin, *xq, win, *wq, *y1q] + ([b_in] if bias else []), y1,
                  name=mac.name, kernel_shape=list(tw.shape[2:]), strides=a["strides"],
                  pads=a["pads"], dilations=a["dilations"], group=a["groups"])
        elif mac.op is OpKind.FULLY_CONNECTED:
            g.domains["com.microsoft"] = 1
            g.add("QGemm", [xin, *xq, win, *wq, b_in, *y1q], y1, name=mac.name,
                  domain="com.microsoft", transB=1)
        else:
            g.add("QLinearMatMul", [xin, *xq, win, *wq, *y1q], y1, name=mac.name)
        if chain:
            real = g.typed(g.fresh(f"{y}/real"), FLOAT, ty.shape)
            g.add("DequantizeLinear", [y1, *y1q], real, name=f"{rq.name}/dequantize")
            g.add("QuantizeLinear", [real, *self.qparams(y, self.where(rq))], y,
                  name=f"{rq.name}/quantize")
        self.output(rq)

    def mac_explicit(self, mac: Node, rq: Node, layer: Layer, why: str) -> None:
        """The MAC on int32 (its accumulator a graph value) and the requantize as ops that
        compute the Program's rounding (``explicit``), proven equal before anything is
        written."""
        p = self.p
        where = self.where(mac)
        ty = p.tensors[rq.outputs[0]]
        out_elem = _type(ty, self.where(rq))
        requant = requant_of(p, mac, rq, self.arith, layer.channels)
        window = layer.window()
        check_int64_range(requant, window, where)

        def form(acc: np.ndarray) -> np.ndarray:
            return requantize(NumpyOps(), acc.astype(np.int32), requant, window, layer.z,
                              layer.lo, layer.hi, out_elem, (1, layer.channels)
                              ).astype(np.int64)

        bad = np.nonzero(~layer.same_map(form))[0]
        if bad.size:
            raise ExportError(f"{where}: output channels {short_list(bad.tolist())} of its "
                              f"requantize have no exact ONNX form ({requant.name} differ "
                              f"from the Program's {self.arith.requant.rounding.value} rounding)")
        acc = self.int32_mac(mac, self.g.fresh(f"{mac.outputs[0]}/int32")
                             if len(mac.inputs) > 2 else mac.outputs[0])
        if len(mac.inputs) > 2:
            acc = self.add_bias(mac, acc)
        else:
            self.g.holds(acc, mac.outputs[0])
        cshape = {4: (1, layer.channels, 1, 1), 2: (1, layer.channels)}.get(len(ty.shape), ())
        ops = OnnxOps(self.g, rq.name, ty.shape, {acc: INT32})
        requantize(ops, acc, requant, window, layer.z, layer.lo, layer.hi, out_elem,
                   cshape if layer.channels > 1 else (), out=rq.outputs[0])
        self.adjustments.append({"node": mac.name, "form": requant.name, "why": why})
        self.output(rq)

    def int32_mac(self, mac: Node, out: str) -> str:
        """ConvInteger / MatMulInteger of the MAC's inputs into int32 value ``out``."""
        g, p = self.g, self.p
        where = self.where(mac)
        x, w = mac.inputs[:2]
        tx, tw = p.tensors[x], p.tensors[w]
        zx = g.scalar(f"{x}/zero_point", per_tensor(tx, where)[1], _type(tx, where),
                      key=("zp", x))
        wz = np.asarray(tw.zero_point)
        if mac.op is OpKind.CONV2D:
            zw = g.initializer(f"{w}/zero_point", wz.reshape(()) if wz.size == 1 else wz,
                               _type(tw, where))
            a = mac.attrs
            g.add("ConvInteger", [self.value(x, where), self.value(w, where), zx, zw], out,
                  name=mac.name, kernel_shape=list(tw.shape[2:]), strides=a["strides"],
                  pads=a["pads"], dilations=a["dilations"], group=a["groups"])
        elif mac.op is OpKind.FULLY_CONNECTED:
            if wz.size != 1:
                raise self.refuse(mac, "per-channel weight zero points on MatMulInteger")
            wt = g.initializer(f"{w}/transposed", np.ascontiguousarray(tw.data.T),
                               _type(tw, where))
            zw = g.scalar(f"{w}/zero_point", int(wz.ravel()[0]), _type(tw, where))
            g.add("MatMulInteger", [self.value(x, where), wt, zx, zw], out, name=mac.name)
        else:
            zw = g.scalar(f"{w}/zero_point", per_tensor(tw, where)[1], _type(tw, where),
                          key=("zp", w))
            g.add("MatMulInteger", [self.value(x, where), self.value(w, where), zx, zw], out,
                  name=mac.name)
        return g.typed(out, INT32, p.tensors[mac.outputs[0]].shape)

    def add_bias(self, mac: Node, acc: str) -> str:
        """The int32 bias added along the channel axis: the Program's accumulator."""
        g, p = self.g, self.p
        t = p.tensors[mac.outputs[0]]
        bias = p.tensors[mac.inputs[2]].data.astype(np.int32)
        shape = (1, bias.size, 1, 1) if len(t.shape) == 4 else (1, bias.size)
        b = g.initializer(f"{mac.inputs[2]}/channels", bias.reshape(shape), INT32)
        g.add("Add", [acc, b], mac.outputs[0], name=f"{mac.name}/bias")
        g.typed(mac.outputs[0], INT32, t.shape)
        return g.holds(mac.outputs[0], mac.outputs[0])

    def mac_integer(self, mac: Node) -> None:
        """A MAC whose int32 accumulator is kept: ConvInteger / MatMulInteger (no bias)."""
        if len(mac.inputs) > 2:
            raise self.refuse(mac, "a biased MAC whose accumulator is not requantized (ONNX "
                                   "ConvInteger and MatMulInteger have no bias) is")
        self.int32_mac(mac, mac.outputs[0])
        self.output(mac)

    # ------------------------------------------------------------------ everything else
    def simple(self, node: Node) -> None:
        g, p = self.g, self.p
        where = self.where(node)
        ins = [self.value(n, where) for n in node.inputs]
        out = node.outputs[0]
        a = node.attrs
        for name in node.inputs + node.outputs:
            if node.op not in (OpKind.QUANTIZE, OpKind.DEQUANTIZE, OpKind.FALLBACK) and \
                    p.tensors[name].is_int:
                _type(p.tensors[name], where)
        if node.op is OpKind.MAXPOOL2D:
            g.add("MaxPool", ins, out, name=node.name, kernel_shape=a["kernel"],
                  strides=a["strides"], pads=a["pads"])
        elif node.op is OpKind.CONCAT:
            g.add("Concat", ins, out, name=node.name, axis=a["axis"])
        elif node.op is OpKind.FLATTEN:
            g.add("Flatten", ins, out, name=node.name, axis=a["axis"])
        elif node.op is OpKind.RESHAPE:
            shape = g.shape_constant(f"{out}/shape", p.tensors[out].shape)
            g.add("Reshape", [ins[0], shape], out, name=node.name)
        elif node.op is OpKind.TRANSPOSE:
            g.add("Transpose", ins, out, name=node.name, perm=a["perm"])
        elif node.op is OpKind.CLAMP:
            t = p.tensors[ins[0]]
            if not (t.dtype.signed and a["min"] == 0 and a["max"] >= t.dtype.qmax):
                raise self.refuse(node, f"clamp to [{a['min']}, {a['max']}] of {t.dtype} (only "
                                        f"max(x, 0) of a signed tensor, ONNX Relu) is")
            g.add("Relu", ins, out, name=node.name)
        elif node.op is OpKind.QUANTIZE:
            if p.tensors[ins[0]].is_int:
                raise self.refuse(node, "quantize of an integer tensor")
            g.add("QuantizeLinear", [ins[0], *self.qparams(out, where)], out, name=node.name)
        elif node.op is OpKind.DEQUANTIZE:
            g.add("DequantizeLinear", [ins[0], *self.qparams(ins[0], where)], out,
                  name=node.name)
        else:
            raise self.refuse(node)
        self.output(node)


def export_qlinear(program: Program, opset: int | None, profile):
    """``profile``: the ChipProfile whose arithmetic the graph must reproduce."""
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < MIN_OPSET:
        raise ExportError(f"form 'qlinear' needs opset >= {MIN_OPSET} (per-channel "
                          f"DequantizeLinear), got {opset}")
    return QLinearExporter(program, profile).run(opset)
