"""Random int8 TFLite graphs for the conformance tests, built layer by layer like a converter's
output: per-channel symmetric int8 filters, int32 biases at input_scale * filter_scale,
asymmetric int8 activations whose scales put typical values across the int8 range.

``Net`` tracks the current tensor; each method appends one TFLite operator and returns the new
tensor's index. Scales may be powers of two (``pow2``), which makes requantization ties common.

``Net(..., int16=True)`` builds TFLite's 16x8 form instead, as the converter writes it: int16
activations with zero point 0, the same int8 filters, int64 biases, ADD with pot_scale_int16
false; the scales put typical values across the int16 range.
"""

from __future__ import annotations

import numpy as np

from benchmarks.tflite_writer import OP, GraphWriter

INT8_STD = 74.0  # standard deviation of a uniform int8
INT16_STD = 18918.0  # ... of a uniform int16


class Net:
    def __init__(self, rng: np.random.Generator, shape, pow2: bool = False, name: str = "x",
                 int16: bool = False):
        self.rng, self.pow2, self.g = rng, pow2, GraphWriter()
        self.use(int16)
        self.count = 0
        self.x = self.g.input(name, shape, self.dtype, *self.quant())

    def use(self, int16: bool) -> None:
        """Build the next layers with int16 (16x8) or int8 activations: a model may mix them,
        joined by QUANTIZE (``requantize(x, dtype)``)."""
        self.int16 = int16
        self.dtype = "int16" if int16 else "int8"
        self.std = INT16_STD if int16 else INT8_STD

    # ------------------------------------------------------------------ quantization
    def _scale(self, value: float) -> float:
        v = float(value)
        return float(np.float32(2.0 ** np.round(np.log2(v)) if self.pow2 else v))

    def quant(self, scale: float | None = None):
        if self.int16:  # symmetric, 256 times finer than int8's steps
            scale = self.rng.uniform(0.01, 0.1) / 256 if scale is None else scale
            return self._scale(scale), 0
        scale = self.rng.uniform(0.01, 0.1) if scale is None else scale
        return self._scale(scale), int(self.rng.integers(-40, 41))

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def shape(self, t: int) -> tuple:
        return self.g.tensors[t].shape

    def scale(self, t: int) -> float:
        return self.g.tensors[t].scale[0]

    def out_quant(self, x: int, weight_scale: float, k: int):
        typical = self.scale(x) * weight_scale * self.std * INT8_STD * np.sqrt(k) / 2
        if self.int16:
            return self.quant(typical / self.rng.uniform(20, 60) / 256)
        return self.quant(typical / self.rng.uniform(20, 60))

    def filters(self, shape, channels: int, per_channel: bool):
        scales = self.rng.uniform(0.002, 0.02, channels if per_channel else 1)
        scales = np.asarray([self._scale(s) for s in scales])
        data = self.rng.integers(-127, 128, shape)
        return data, scales

    def _bias(self, name, x, w_scales, channels):
        acc_scale = np.float32(self.scale(x)) * np.resize(w_scales, channels).astype(np.float32)
        if self.int16:  # 16x8: int64, as the converter writes it
            data = self.rng.integers(-800000, 800001, channels)
            return self.g.tensor(f"{name}/bias", (channels,), "int64", acc_scale, data=data)
        data = self.rng.integers(-3000, 3001, channels)
        return self.g.tensor(f"{name}/bias", (channels,), "int32", acc_scale, data=data)

    # ------------------------------------------------------------------ MAC ops
    def conv(self, x, oc, k=3, stride=1, padding="SAME", act="NONE", dilation=1,
             per_channel=True, bias=True, quant=None):
        n, h, w, c = self.shape(x)
        name = self._name("conv")
        data, scales = self.filters((oc, k, k, c), oc, per_channel)
        wt = self.g.tensor(f"{name}/filter", (oc, k, k, c), "int8", scales, data=data,
                           qdim=0)
        b = self._bias(name, x, scales, oc) if bias else None
        oh, ow = _out_hw(h, w, k, stride, padding, dilation)
        q = quant or self.out_quant(x, float(np.mean(scales)), k * k * c)
        y = self.g.tensor(name, (n, oh, ow, oc), self.dtype, *q)
        return self.g.conv2d(x, wt, b, y, (stride, stride), padding, act, (dilation, dilation))

    def depthwise(self, x, multiplier=1, k=3, stride=1, padding="SAME", act="NONE"):
        n, h, w, c = self.shape(x)
        name = self._name("dwconv")
        oc = c * multiplier
        data, scales = self.filters((1, k, k, oc), oc, True)
        wt = self.g.tensor(f"{name}/filter", (1, k, k, oc), "int8", scales, data=data, qdim=3)
        b = self._bias(name, x, scales, oc)
        oh, ow = _out_hw(h, w, k, stride, padding, 1)
        y = self.g.tensor(name, (n, oh, ow, oc), self.dtype,
                          *self.out_quant(x, float(np.mean(scales)), k * k))
        return self.g.depthwise(x, wt, b, y, multiplier, (stride, stride), padding, act)

    def fc(self, x, m, act="NONE", keep_num_dims=False, per_channel=True):
        shape = self.shape(x)
        k = shape[-1]
        name = self._name("fc")
        data, scales = self.filters((m, k), m, per_channel)
        wt = self.g.tensor(f"{name}/filter", (m, k), "int8", scales, data=data, qdim=0)
        b = self._bias(name, x, scales, m)
        rows = int(np.prod(shape)) // k
        out_shape = tuple(shape[:-1]) + (m,) if keep_num_dims else (rows, m)
        y = self.g.tensor(name, out_shape, self.dtype,
                          *self.out_quant(x, float(np.mean(scales)), k))
        return self.g.fully_connected(x, wt, b, y, act, keep_num_dims)

    def matmul(self, a, b, adj_y=False):
        """BATCH_MATMUL of two activations [..., N, K] x [..., K, M] (b [..., M, K] with
        ``adj_y``, as attention scores q k^T)."""
        sa, sb = self.shape(a), self.shape(b)
        m = sb[-2] if adj_y else sb[-1]
        y = self.g.tensor(self._name("matmul"), tuple(sa[:-1]) + (m,), "int8",
                          *self.out_quant(a, self.scale(b), sa[-1]))
        return self.g.batch_matmul(a, b, y, adj_y=adj_y)

    # ------------------------------------------------------------------ elementwise
    def add(self, a, b, act="NONE"):
        scale = max(self.scale(a), self.scale(b)) * self.rng.uniform(1.0, 2.0)
        y = self.g.tensor(self._name("add"), self.shape(a), self.dtype, *self.quant(scale))
        return self.g.add(a, b, y, act, pot_scale_int16=False if self.int16 else None)

    def mul(self, a, b, act="NONE"):
        scale = self.scale(a) * self.scale(b) * self.std * self.rng.uniform(0.5, 2.0)
        y = self.g.tensor(self._name("mul"), self.shape(a), self.dtype, *self.quant(scale))
        return self.g.mul(a, b, y, act)

    def gate(self, x):
        """A squeeze-and-excitation style per-channel multiplier [1, 1, 1, C] (a constant)."""
        c = self.shape(x)[-1]
        if self.int16:
            s, z = self.quant(0.01 / 256)
            return self.g.tensor(self._name("gate"), (1, 1, 1, c), "int16", s, z,
                                 data=self.rng.integers(-32768, 32768, (1, 1, 1, c)))
        s, z = self.quant(0.01)
        return self.g.tensor(self._name("gate"), (1, 1, 1, c), "int8", s, z,
                             data=self.rng.integers(-128, 128, (1, 1, 1, c)))

    def lut(self, code, x, alpha=0.2):
        name = self._name(OP_NAMES.get(code, "act"))
        if self.int16 and code in (OP.LOGISTIC, OP.TANH):
            q = (1 / 32768, 0)  # the only output scale TFLite's int16 kernels take
        elif code == OP.LOGISTIC:
            q = (1 / 256, -128)
        elif code == OP.TANH:
            q = (1 / 128, 0)
        else:
            q = self.quant(self.scale(x) * self.rng.uniform(0.5, 1.5))
        y = self.g.tensor(name, self.shape(x), self.dtype, *q)
        if code == OP.LEAKY_RELU:
            return self.g.leaky_relu(x, y, alpha)
        if code == OP.GELU:
            return self.g.gelu(x, y, approximate=alpha > 0.2)
        return self.g.unary(code, x, y)

    def requantize(self, x, dtype: str | None = None):
        """QUANTIZE of an activation to a new scale (and, with ``dtype``, a new type: int8 <->
        int16; int8 gets a zero point, int16 none)."""
        dtype = dtype or self.dtype
        if dtype != self.dtype:
            factor = 256.0 if dtype == "int8" else 1 / 256
            scale = self._scale(self.scale(x) * factor * self.rng.uniform(0.5, 2.0))
            zp = int(self.rng.integers(-40, 41)) if dtype == "int8" else 0
            y = self.g.tensor(self._name("requantize"), self.shape(x), dtype, scale, zp)
            return self.g.unary(OP.QUANTIZE, x, y)
        y = self.g.tensor(self._name("requantize"), self.shape(x), dtype,
                          *self.quant(self.scale(x) * self.rng.uniform(0.3, 3.0)))
        return self.g.unary(OP.QUANTIZE, x, y)

    # ------------------------------------------------------------------ layout
    def pool(self, kind, x, k=2, stride=2, padding="VALID", act="NONE"):
        n, h, w, c = self.shape(x)
        oh, ow = _out_hw(h, w, k, stride, padding, 1)
        y = self.g.like(self._name(f"{kind}pool"), x, (n, oh, ow, c))
        return self.g.pool(kind, x, y, (k, k), (stride, stride), padding, act)

    def mean(self, x, keep_dims=True, new_zero_point=False):
        n, _, _, c = self.shape(x)
        t = self.g.tensors[x]
        scale = t.scale[0]
        if self.int16:  # zero point 0 always: a new scale instead
            zp = 0
            if new_zero_point:
                scale = self._scale(scale * self.rng.uniform(0.3, 1.5))
        else:
            zp = int(self.rng.integers(-40, 41)) if new_zero_point else t.zero_point[0]
        y = self.g.tensor(self._name("mean"), (n, 1, 1, c) if keep_dims else (n, c),
                          self.dtype, scale, zp)
        return self.g.mean(x, [1, 2], y, keep_dims)

    def reshape(self, x, shape):
        return self.g.reshape(x, self.g.like(self._name("reshape"), x, tuple(shape)))

    def concat(self, xs, axis=-1):
        shapes = [self.shape(x) for x in xs]
        ax = axis % len(shapes[0])
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return self.g.concat(xs, self.g.like(self._name("concat"), xs[0], tuple(out)), axis)

    def pad(self, x, top, bottom, left, right):
        n, h, w, c = self.shape(x)
        y = self.g.like(self._name("pad"), x, (n, h + top + bottom, w + left + right, c))
        return self.g.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], y)

    def build(self, *outputs) -> bytes:
        self.g.output(*outputs)
        return self.g.build()

    def input_arrays(self, rng, count: int = 1) -> list[dict[str, np.ndarray]]:
        t = self.g.tensors[self.x]
        if not self.int16:
            return [{t.name: rng.integers(-128, 128, t.shape).astype(np.int8)}
                    for _ in range(count)]
        return [{t.name: int16_values(rng, t.shape, i)} for i in range(count)]


def int16_values(rng, shape, i: int = 1) -> np.ndarray:
    """Uniform int16 (i > 0) with the extremes -32768, 32767 and 0 sprinkled in; i == 0: only
    extremes, the inputs most likely to reach an overflow or a saturation."""
    if i == 0:
        return rng.choice(np.array([-32768, -32767, 32767, 0, -1, 1], np.int16), shape)
    x = rng.integers(-32768, 32768, shape).astype(np.int16)
    spots = rng.random(shape)
    x[spots < 0.05] = -32768
    x[(spots >= 0.05) & (spots < 0.1)] = 32767
    x[(spots >= 0.1) & (spots < 0.12)] = 0
    return x


OP_NAMES = {OP.LOGISTIC: "logistic", OP.TANH: "tanh", OP.GELU: "gelu",
            OP.HARD_SWISH: "hard_swish", OP.LEAKY_RELU: "leaky_relu", OP.RELU6: "relu6",
            OP.RELU: "relu", OP.RELU_N1_TO_1: "relu_n1_to_1"}


def _out_hw(h, w, k, stride, padding, dilation):
    if padding == "SAME":
        return -(-h // stride), -(-w // stride)
    extent = (k - 1) * dilation + 1
    return (h - extent) // stride + 1, (w - extent) // stride + 1


# ----------------------------------------------------------------------------- networks

def mobilenet_v2_block(n: Net):
    """expand 1x1 + RELU6, depthwise 3x3 + RELU6, project 1x1, residual ADD; a strided block,
    MEAN and the classifier."""
    e = n.conv(n.x, 18, 1, act="RELU6")
    d = n.depthwise(e, 1, 3, act="RELU6")
    y = n.add(n.x, n.conv(d, 6, 1))
    e2 = n.conv(y, 12, 1, act="RELU6")
    d2 = n.depthwise(e2, 1, 3, stride=2, act="RELU6")
    return [n.fc(n.mean(n.conv(d2, 8, 1), keep_dims=False), 5)]


def resnet_basic_block(n: Net):
    """conv3x3 + RELU, conv3x3, ADD(identity) + RELU; a strided block with a 1x1 projection
    shortcut, global average pooling and the classifier."""
    a = n.conv(n.x, 6, 3, act="RELU")
    y = n.add(n.x, n.conv(a, 6, 3), act="RELU")
    b = n.conv(y, 8, 3, stride=2, act="RELU")
    short = n.conv(y, 8, 1, stride=2)
    z = n.add(short, n.conv(b, 8, 3), act="RELU")
    return [n.fc(n.mean(z, keep_dims=True), 4)]


LAYER_KINDS = ["conv", "depthwise", "residual", "pool", "table", "gate", "requantize", "concat"]
FUSED = ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"]


def random_layer(kind: str, n: Net, x: int, r: np.random.Generator, tables, residual_acts,
                 alpha: bool) -> int:
    """One layer of ``kind`` on ``x``; ``tables``: the activation ops a table layer draws from
    (with a random ``alpha`` where ``alpha``), ``residual_acts``: the residual ADD's fused
    activations."""
    c, h = n.shape(x)[3], n.shape(x)[1]
    stride = int(r.integers(1, 3)) if h >= 4 else 1
    act = str(r.choice(FUSED))
    if kind == "conv":
        return n.conv(x, int(r.integers(2, 9)), int(r.choice([1, 3])), stride, act=act,
                      per_channel=bool(r.integers(2)))
    if kind == "depthwise":
        return n.depthwise(x, int(r.integers(1, 3)), 3, stride, act=act)
    if kind == "residual":
        return n.add(x, n.conv(x, c, 3, act=act), act=str(r.choice(residual_acts)))
    if kind == "pool":
        return n.pool(str(r.choice(["avg", "max"])), x, 3, stride, "SAME", act=act)
    if kind == "table":
        op = tables[int(r.integers(len(tables)))]
        return n.lut(op, x, alpha=float(r.uniform(-0.5, 0.9))) if alpha else n.lut(op, x)
    if kind == "gate":
        return n.mul(x, n.gate(x), act=act)
    if kind == "requantize":
        return n.requantize(x)
    return n.concat([x, n.pool("max", x, 1, 1)])  # "concat"


def random_chain(net: Net, chain, head: bool, r: np.random.Generator, **layer) -> int:
    """``chain`` of random layers on the net's input, optionally ending in MEAN + FULLY_CONNECTED."""
    x = net.x
    for kind in chain:
        x = random_layer(kind, net, x, r, **layer)
    if head:
        x = net.fc(net.mean(x, keep_dims=bool(r.integers(2)),
                            new_zero_point=bool(r.integers(2))), 4)
    return x
