"""A float network's estimate-only Program written as a fully-int8 TFLite file, for peers that
read TFLite (Arm Vela) to price the same layers the cost model prices.

``to_tflite(program)`` takes what ``simulator.onnx_import.import_onnx`` makes of a float ONNX
export (shapes, no weights: ``program.metadata["estimate_only"]``) and returns the bytes of an
int8 TFLite model laid out as TFLite's converter writes one: NHWC activations, OHWI filters,
depthwise filters [1, H, W, C*m], random int8 weights with per-channel scales, int32 biases at
``input_scale * filter_scale``, asymmetric int8 activations. Values are random but plausible
(weights of a trained layer quantized per channel: normal values scaled so each channel's
largest magnitude is 127; activation scales 0.02..0.12): a peer's cost depends on shapes, and on
weight values only through its weight compression, which a uniform draw would defeat.

Ops, Program -> TFLite:

- ``conv2d`` -> CONV_2D (grouped ones too: TFLite's filter holds C/groups input channels) or
  DEPTHWISE_CONV_2D (groups = input channels); ONNX pads become SAME or VALID where one of them
  gives the same output size (SAME puts TFLite's odd pixel at the end, a shift that costs
  nothing), else an explicit PAD before a VALID convolution;
- ``fully_connected`` -> FULLY_CONNECTED; ``add`` -> ADD; ``mul`` (a broadcast gate) -> MUL;
- ``maxpool2d``/``avgpool2d`` -> MAX_POOL_2D/AVERAGE_POOL_2D;
- ``global_avgpool2d`` -> AVERAGE_POOL_2D over the whole map, VALID (``global_pool="avgpool"``,
  the default) or MEAN over height and width (``global_pool="mean"``, what TFLite's converter
  writes). Vela 5.2 runs the pool in about half the cycles of the MEAN, which it lowers to a
  depthwise convolution and a MUL (see ``benchmarks/vela_peer.py``); the pool is used where
  Vela accepts it (VALID kernel height <= 256, area <= 65536), MEAN elsewhere;
- ``concat`` -> CONCATENATION (its inputs and output share one quantization, as TFLite's
  int8 kernel requires); ``reshape``/``flatten`` -> RESHAPE; ``softmax`` -> SOFTMAX;
- ``lookup_table`` by its ``function``: sigmoid -> LOGISTIC, tanh -> TANH, hardswish ->
  HARD_SWISH, gelu -> GELU, silu -> LOGISTIC then MUL, hardsigmoid -> ADD 3 with a fused RELU6
  then MUL by 1/6 (Keras' ``relu6(x + 3) / 6`` as the converter writes it; the constants are
  full-shape tensors, since the TFLite importer's ADD does not broadcast);
- a ``clamp`` of its own -> RELU (RELU6 for a 0..6 clamp).

Fused activations: the ONNX importer fuses Relu and Clip into the conv, fully connected, add or
mul before them and lists them in ``program.metadata["fused_activations"]``; they become the
TFLite op's fused RELU or RELU6 (Clip is taken as ReLU6, the only Clip these networks hold), and
the op's output gets a ReLU's zero point (-128; scale 6/255 for RELU6).

TFLite tensors are named ``n<index>_<op>`` after the Program node that makes them (index in
Program order, so that a peer's per-layer report and the cost model's ops can be matched).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.tflite_writer import OP, GraphWriter
from simulator.ir import OpKind, Program

# Vela's AVERAGE_POOL_2D limits for VALID padding (Vela 5.2 --supported-ops-report)
VELA_AVGPOOL_VALID_MAX_HEIGHT = 256
VELA_AVGPOOL_VALID_MAX_AREA = 256 * 256
FUSED = {"Relu": "RELU", "Clip": "RELU6"}
RELU6_QUANT = (6.0 / 255.0, -128)
FIXED_OUTPUT = {                      # TFLite's int8 output quantization of these kernels
    "sigmoid": (1.0 / 256.0, -128),
    "tanh": (1.0 / 128.0, 0),
    "hardsigmoid": (1.0 / 255.0, -128),
    "softmax": (1.0 / 256.0, -128),
}
NCHW_AXIS_IN_NHWC = {0: 0, 1: 3, 2: 1, 3: 2}
INT32_MAX = (1 << 31) - 1


class TfliteWriteError(ValueError):
    """A Program node that this writer has no TFLite form for."""


@dataclass(frozen=True)
class Quant:
    scale: float
    zero_point: int


def nhwc(shape) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else shape


def same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite's SAME padding of one axis (the odd pixel at the end)."""
    extent = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def window_padding(in_hw, kernel, strides, dilations, pads, out_hw) -> tuple[str, list | None]:
    """("SAME" | "VALID", None), or ("VALID", [top, left, bottom, right]) for an explicit PAD."""
    pads = [int(p) for p in pads]
    if not any(pads):
        return "VALID", None
    same = [same_pads(in_hw[i], kernel[i], strides[i], dilations[i]) for i in range(2)]
    if pads == [same[0][0], same[1][0], same[0][1], same[1][1]]:
        return "SAME", None
    if tuple(out_hw) == tuple(-(-in_hw[i] // strides[i]) for i in range(2)):
        return "SAME", None           # same output size; the window's offset moves by a pixel
    return "VALID", pads


# ----------------------------------------------------------------------------- planning

class _Groups:
    """Union-find over tensor names: tensors that must share one quantization."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, a: str) -> str:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def fused_activation(program: Program, node) -> str:
    """"NONE", "RELU" or "RELU6": the activation the ONNX importer fused into ``node``."""
    for entry in program.metadata.get("fused_activations", []):
        if entry.get("into") == node.name:
            return FUSED.get(entry.get("op_type"), "RELU")
    if node.op in (OpKind.ADD, OpKind.MUL) and node.attrs.get("clamp_min") == 0:
        return "RELU"
    return "NONE"


def _uses_pool(shape_nchw, global_pool: str) -> bool:
    _, _, h, w = shape_nchw
    return global_pool == "avgpool" and h <= VELA_AVGPOOL_VALID_MAX_HEIGHT and \
        h * w <= VELA_AVGPOOL_VALID_MAX_AREA


def plan_quantization(program: Program, rng: np.random.Generator,
                      global_pool: str = "avgpool") -> dict[str, Quant]:
    """Each activation's int8 quantization: ops that keep their input's (pools, reshapes,
    concatenation) share one; ReLU outputs have zero point -128, ReLU6 ones scale 6/255;
    LOGISTIC, TANH, SOFTMAX and hard-sigmoid outputs TFLite's fixed ones."""
    groups = _Groups()
    fixed: dict[str, tuple[float, int]] = {}
    relu: dict[str, str] = {}
    for node in program.nodes:
        out = node.outputs[0]
        groups.find(out)
        keeps = node.op in (OpKind.MAXPOOL2D, OpKind.AVGPOOL2D, OpKind.RESHAPE, OpKind.FLATTEN)
        if node.op is OpKind.GLOBAL_AVGPOOL2D:
            keeps = _uses_pool(program.tensors[node.inputs[0]].shape, global_pool)
        if keeps:
            groups.union(node.inputs[0], out)
        elif node.op is OpKind.CONCAT:
            for name in node.inputs:
                groups.union(out, name)
        elif node.op is OpKind.LOOKUP_TABLE and node.attrs.get("function") in FIXED_OUTPUT:
            fixed[out] = FIXED_OUTPUT[node.attrs["function"]]
        elif node.op is OpKind.SOFTMAX:
            fixed[out] = FIXED_OUTPUT["softmax"]
        elif node.op is OpKind.CLAMP:
            relu[out] = "RELU6" if node.attrs.get("max") == 6 else "RELU"
        act = fused_activation(program, node)
        if act != "NONE":
            relu[out] = act
    members: dict[str, list[str]] = {}
    for name in list(program.inputs) + [n.outputs[0] for n in program.nodes]:
        members.setdefault(groups.find(name), []).append(name)
    quant: dict[str, Quant] = {}
    for names in members.values():
        chosen = next((fixed[n] for n in names if n in fixed), None)
        if chosen is None and any(relu.get(n) == "RELU6" for n in names):
            chosen = RELU6_QUANT
        if chosen is None and any(n in relu for n in names):
            chosen = (float(rng.uniform(0.02, 0.12)), -128)
        if chosen is None:
            chosen = (float(rng.uniform(0.02, 0.12)), int(rng.integers(-20, 21)))
        q = Quant(float(np.float32(chosen[0])), int(chosen[1]))
        for n in names:
            quant[n] = q
    return quant


# ----------------------------------------------------------------------------- writing

class _Writer:
    def __init__(self, program: Program, seed: int, global_pool: str):
        if global_pool not in ("avgpool", "mean"):
            raise ValueError(f"global_pool must be 'avgpool' or 'mean', not {global_pool!r}")
        self.p = program
        self.rng = np.random.default_rng(seed)
        self.global_pool = global_pool
        self.quant = plan_quantization(program, self.rng, global_pool)
        self.g = GraphWriter()
        self.index: dict[str, int] = {}          # Program tensor -> TFLite tensor
        self.node_tag = ""

    # ------------------------------------------------------------------ tensors
    def activation(self, name: str) -> int:
        if name in self.index:
            return self.index[name]
        q = self.quant[name]
        self.index[name] = self.g.tensor(self.node_tag, nhwc(self.p.tensors[name].shape), "int8",
                                         q.scale, q.zero_point)
        return self.index[name]

    def temp(self, suffix: str, shape, quant: tuple[float, int]) -> int:
        return self.g.tensor(f"{self.node_tag}_{suffix}", tuple(shape), "int8",
                             float(np.float32(quant[0])), int(quant[1]))

    def weights(self, shape, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel int8 filters of a trained-looking layer and their scales."""
        w = self.rng.standard_normal(shape).astype(np.float32)
        axes = tuple(i for i in range(len(shape)) if i != channel_axis)
        peak = np.max(np.abs(w), axis=axes, keepdims=True)
        q = np.clip(np.round(w / peak * 127), -127, 127).astype(np.int8)
        channels = shape[channel_axis]
        scales = self.rng.uniform(0.002, 0.02, channels).astype(np.float32)
        return q, scales

    def bias(self, in_scale: float, w_scales: np.ndarray) -> int:
        data = self.rng.integers(-4096, 4097, len(w_scales)).astype(np.int32)
        return self.g.tensor(f"{self.node_tag}_bias", (len(w_scales),), "int32",
                             [in_scale * float(s) for s in w_scales], data=data)

    def scale_of(self, index: int) -> float:
        return self.g.tensors[index].scale[0]

    def constant_like(self, suffix: str, shape, value: float) -> int:
        """A full-shape int8 constant holding ``value`` (scale value / 127, zero point 0)."""
        scale = float(np.float32(abs(value) / 127.0))
        data = np.full(shape, 127 if value > 0 else -127, np.int8)
        return self.g.tensor(f"{self.node_tag}_{suffix}", tuple(shape), "int8", scale, 0,
                             data=data)

    # ------------------------------------------------------------------ the walk
    def run(self) -> bytes:
        for name in self.p.inputs:
            self.node_tag = "input" if len(self.p.inputs) == 1 else f"input_{name}"
            self.activation(name)
            self.g.inputs.append(self.index[name])
        for i, node in enumerate(self.p.nodes):
            self.node_tag = f"n{i:03d}_{node.op.value}"
            handler = getattr(self, f"_{node.op.value}", None)
            if handler is None:
                raise TfliteWriteError(f"node {node.name!r}: {node.op.value} has no TFLite form "
                                       f"in benchmarks.tflite_networks")
            handler(node)
        self.g.output(*(self.index[name] for name in self.p.outputs))
        return self.g.build(f"archnet benchmarks.tflite_networks: {self.p.name}")

    def _conv2d(self, node) -> None:
        x_name, w_name = node.inputs[0], node.inputs[1]
        x_shape = self.p.tensors[x_name].shape
        oc, icg, kh, kw = self.p.tensors[w_name].shape
        out_shape = self.p.tensors[node.outputs[0]].shape
        groups = int(node.attrs.get("groups", 1))
        depthwise = groups > 1 and groups == x_shape[1] and icg == 1
        x = self.activation(x_name)
        strides = list(node.attrs.get("strides", [1, 1]))
        dilations = list(node.attrs.get("dilations", [1, 1]))
        padding, explicit = window_padding(x_shape[2:], (kh, kw), strides, dilations,
                                           node.attrs.get("pads", [0, 0, 0, 0]), out_shape[2:])
        if explicit is not None:
            top, left, bottom, right = explicit
            n, h, w, c = nhwc(x_shape)
            padded = self.temp("pad", (n, h + top + bottom, w + left + right, c),
                               (self.scale_of(x), self.g.tensors[x].zero_point[0]))
            self.g.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], padded)
            x = padded
        y = self.activation(node.outputs[0])
        act = fused_activation(self.p, node)
        if depthwise:
            q, scales = self.weights((1, kh, kw, oc), 3)
            w = self.g.tensor(f"{self.node_tag}_filter", (1, kh, kw, oc), "int8", scales,
                              data=q, qdim=3)
            b = self.bias(self.scale_of(x), scales)
            if dilations != [1, 1]:
                raise TfliteWriteError(f"node {node.name!r}: dilated depthwise convolution")
            self.g.depthwise(x, w, b, y, multiplier=oc // x_shape[1], stride=tuple(strides),
                             padding=padding, act=act)
        else:
            q, scales = self.weights((oc, kh, kw, icg), 0)
            w = self.g.tensor(f"{self.node_tag}_filter", (oc, kh, kw, icg), "int8", scales,
                              data=q, qdim=0)
            b = self.bias(self.scale_of(x), scales)
            self.g.conv2d(x, w, b, y, stride=tuple(strides), padding=padding, act=act,
                          dilation=tuple(dilations))

    def _fully_connected(self, node) -> None:
        x = self.activation(node.inputs[0])
        m, k = self.p.tensors[node.inputs[1]].shape
        q, scales = self.weights((m, k), 0)
        w = self.g.tensor(f"{self.node_tag}_weights", (m, k), "int8", scales, data=q, qdim=0)
        b = self.bias(self.scale_of(x), scales)
        y = self.activation(node.outputs[0])
        self.g.fully_connected(x, w, b, y, act=fused_activation(self.p, node))

    def _add(self, node) -> None:
        a, b = (self.activation(n) for n in node.inputs)
        self.g.add(a, b, self.activation(node.outputs[0]), act=fused_activation(self.p, node))

    def _mul(self, node) -> None:
        a, b = (self.activation(n) for n in node.inputs)   # b broadcasts to a, as TFLite's
        self.g.mul(a, b, self.activation(node.outputs[0]), act=fused_activation(self.p, node))

    def _pool(self, node, kind: str) -> None:
        x_shape = self.p.tensors[node.inputs[0]].shape
        out_shape = self.p.tensors[node.outputs[0]].shape
        kernel, strides = list(node.attrs["kernel"]), list(node.attrs.get("strides", [1, 1]))
        padding, explicit = window_padding(x_shape[2:], kernel, strides, (1, 1),
                                           node.attrs.get("pads", [0, 0, 0, 0]), out_shape[2:])
        if explicit is not None:
            raise TfliteWriteError(f"node {node.name!r}: pads {node.attrs['pads']} are neither "
                                   f"SAME nor VALID, and a PAD before a pool is not written")
        self.g.pool(kind, self.activation(node.inputs[0]), self.activation(node.outputs[0]),
                    tuple(kernel), tuple(strides), padding)

    def _maxpool2d(self, node) -> None:
        self._pool(node, "max")

    def _avgpool2d(self, node) -> None:
        self._pool(node, "avg")

    def _global_avgpool2d(self, node) -> None:
        x_shape = self.p.tensors[node.inputs[0]].shape
        x, y = self.activation(node.inputs[0]), self.activation(node.outputs[0])
        if _uses_pool(x_shape, self.global_pool):
            self.g.pool("avg", x, y, tuple(x_shape[2:]), (1, 1), "VALID")
        else:
            self.g.mean(x, [1, 2], y, keep_dims=True)

    def _concat(self, node) -> None:
        rank = len(self.p.tensors[node.outputs[0]].shape)
        axis = int(node.attrs.get("axis", 1)) % rank
        if rank == 4:
            axis = NCHW_AXIS_IN_NHWC[axis]
        self.g.concat([self.activation(n) for n in node.inputs],
                      self.activation(node.outputs[0]), axis)

    def _reshape(self, node) -> None:
        self.g.reshape(self.activation(node.inputs[0]), self.activation(node.outputs[0]))

    _flatten = _reshape

    def _softmax(self, node) -> None:
        self.g.softmax(self.activation(node.inputs[0]), self.activation(node.outputs[0]))

    def _clamp(self, node) -> None:
        code = OP.RELU6 if node.attrs.get("max") == 6 else OP.RELU
        if node.attrs.get("min") not in (0, None):
            raise TfliteWriteError(f"node {node.name!r}: a clamp from {node.attrs.get('min')} "
                                   f"is no RELU")
        self.g.unary(code, self.activation(node.inputs[0]), self.activation(node.outputs[0]))

    def _lookup_table(self, node) -> None:
        function = node.attrs.get("function")
        x = self.activation(node.inputs[0])
        shape = self.g.tensors[x].shape
        if function in ("sigmoid", "tanh", "hardswish"):
            code = {"sigmoid": OP.LOGISTIC, "tanh": OP.TANH, "hardswish": OP.HARD_SWISH}
            self.g.unary(code[function], x, self.activation(node.outputs[0]))
        elif function == "gelu":
            self.g.gelu(x, self.activation(node.outputs[0]))
        elif function == "silu":      # x * sigmoid(x)
            s = self.temp("sigmoid", shape, FIXED_OUTPUT["sigmoid"])
            self.g.unary(OP.LOGISTIC, x, s)
            self.g.mul(x, s, self.activation(node.outputs[0]))
        elif function == "hardsigmoid":   # relu6(x + 3) / 6
            three = self.constant_like("three", shape, 3.0)
            r = self.temp("relu6", shape, RELU6_QUANT)
            self.g.add(x, three, r, act="RELU6")
            sixth = self.constant_like("sixth", shape, 1.0 / 6.0)
            self.g.mul(r, sixth, self.activation(node.outputs[0]))
        else:
            raise TfliteWriteError(f"node {node.name!r}: lookup_table function {function!r} "
                                   f"has no TFLite form here (sigmoid, tanh, hardswish, gelu, "
                                   f"silu, hardsigmoid)")


def to_tflite(program: Program, seed: int = 0, global_pool: str = "avgpool") -> bytes:
    """The bytes of a fully-int8 TFLite model with ``program``'s layers (see the module
    docstring); the same Program and seed give the same bytes."""
    return _Writer(program, seed, global_pool).run()


def write_tflite(program: Program, path: str | os.PathLike, seed: int = 0,
                 global_pool: str = "avgpool") -> Path:
    from simulator.fileio import atomic_write_bytes
    return atomic_write_bytes(path, to_tflite(program, seed, global_pool))


def _operators(data: bytes):
    """(builtin operator name, its first output tensor's name) per operator, in order."""
    import tflite
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        yield name, graph.Tensors(op.Outputs(0)).Name().decode()


def op_counts(data: bytes) -> dict[str, int]:
    """Builtin operator name -> count, read back with the ``tflite`` package."""
    counts: dict[str, int] = {}
    for name, _ in _operators(data):
        counts[name] = counts.get(name, 0) + 1
    return counts


def ops_by_tag(data: bytes) -> dict[str, list[str]]:
    """Program node tag (``n<index>``) -> the builtin operators written for that node."""
    out: dict[str, list[str]] = {}
    for name, tensor in _operators(data):
        out.setdefault(tensor.split("_")[0], []).append(name)
    return out


__all__ = ["Quant", "TfliteWriteError", "op_counts", "ops_by_tag", "plan_quantization",
           "to_tflite", "write_tflite"]
