"""The Arch-Net operator set as modules: the only layers a student may hold.

Convolution (any kernel, stride, padding, dilation, groups) with folded batch-norm and ReLU,
fully connected, concat, flatten, and the input quantizer; pooling, add, mul and tables are in
``archnet.quant.elementwise``. Each has a fake-quant ``forward``, an
``integer_forward`` under a chip's arithmetic, and ``export`` into a simulator Program; the
numbers the last two use come from one method (``integer_params``), so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archnet.quant import integer
from archnet.quant.lsq import LsqQuantizer
from archnet.quant.qtensor import QTensor
from simulator.contract import ArithmeticSpec, IntType
from simulator.ir.builder import ProgramBuilder

BIAS_TYPE = IntType(32, True)


@dataclass
class IntegerParams:
    weight: torch.Tensor        # int64, on the weight quantizer's grid
    weight_scale: torch.Tensor  # float32 per output channel
    bias: torch.Tensor          # int64 on the accumulator grid in_scale * weight_scale
    multiplier: list[float]     # real requantization multipliers, float64
    out_scale: float
    out_type: IntType


# the student's input encodings: how the host writes its input for the chip
#   pixels:  images in [0, 1] on the u8 grid of 1/255, as the pixels were stored
#   one_hot: token rows as one-hot vectors (0 or 1, u8 grid of 1): the embedding's input
#   token_ids: the token ids themselves (u16): a gather looks the embedding's rows up
ENCODINGS = {"pixels": (255, "image"), "one_hot": (1, "tokens"), "token_ids": (1, "tokens")}
TOKEN_ID_TYPE = IntType(16, False)


def is_token_ids(x: torch.Tensor) -> bool:
    """Integer token ids [N, T] given for a one-hot input: the training path gathers the
    first fully connected layer's columns instead of multiplying by vocabulary-wide rows
    (the same values, without the 30k-wide one-hot product)."""
    return not x.is_floating_point()


class QInput(nn.Module):
    """The student's input onto the chip's u8 input grid of its encoding (``ENCODINGS``)."""

    qtype = IntType(8, False)

    def __init__(self, encoding: str = "pixels", vocab: int | None = None):
        super().__init__()
        self.encoding = encoding
        self.vocab = vocab          # one_hot: the rows' width; token_ids: the table's rows
        self.levels, self.name = ENCODINGS[encoding]
        self.scale = 1.0 / self.levels
        if encoding == "token_ids":
            self.qtype = TOKEN_ID_TYPE

    def _ids(self, x: torch.Tensor) -> bool:
        return self.encoding in ("one_hot", "token_ids") and is_token_ids(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._ids(x):
            return x        # stands for its one-hot rows (or is) what the first layer reads
        return torch.round(x.clamp(0, 1) * self.levels) / self.levels

    def integer_forward(self, x: torch.Tensor, arith: ArithmeticSpec | None = None) -> QTensor:
        if self._ids(x) and self.encoding == "token_ids":
            return QTensor(x.to(torch.int64), self.scale, self.qtype)
        if self._ids(x):
            return QTensor(self.rows(x).to(torch.int64), self.scale, self.qtype)
        return QTensor(torch.round(x.clamp(0, 1).to(torch.float64) * self.levels).to(torch.int64),
                       self.scale, self.qtype)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [N, T] as the one-hot rows [N, T, vocab] the chip reads (u8)."""
        if self.encoding != "one_hot" or self.vocab is None:
            raise ValueError(f"token ids given to a student whose input is {self.encoding}")
        return F.one_hot(ids, self.vocab).to(torch.uint8)

    def host_values(self, x: torch.Tensor) -> np.ndarray:
        """What the host writes into the Program's input for ``x``: ``integer_forward``'s
        integers in the input type's NumPy type (u8, or u16 token ids)."""
        value = self.integer_forward(x).value.numpy()
        return value.astype(np.uint16 if self.qtype.bits > 8 else np.uint8)

    def export(self, b: ProgramBuilder, shape: tuple[int, ...], name: str | None = None) -> str:
        return b.input(name or self.name, shape, self.qtype, scale=self.scale, zero_point=0)


class ClampedOutput:
    """ReLU and a ReLU6-style upper bound on an op's output, in float and as the integer range
    the chip's requantize clamps to: one definition for MAC layers, add and mul."""

    relu: bool = False
    clamp_max: float | None = None      # ReLU6's 6 (a clamp fused into the requantize)

    def activation(self, y: torch.Tensor) -> torch.Tensor:
        if self.relu:
            y = F.relu(y)
        return y if self.clamp_max is None else y.clamp(max=self.clamp_max)

    def bounds(self, out_type: IntType, out_scale: float) -> tuple[int, int]:
        """The output's integer range: the type's, cut at zero by ReLU and at clamp_max on the
        output grid (rounding is monotone, so clamping before or after it agrees)."""
        lo = max(out_type.qmin, 0) if self.relu else out_type.qmin
        hi = out_type.qmax
        if self.clamp_max is not None:
            hi = max(lo, min(hi, int(round(self.clamp_max / out_scale))))
        return lo, hi

    def clamp_attrs(self, out_type: IntType, out_scale: float) -> dict:
        """``clamp_min``/``clamp_max`` node attributes where the range is narrower than the type."""
        lo, hi = self.bounds(out_type, out_scale)
        attrs = {"clamp_min": lo} if lo != out_type.qmin else {}
        if hi != out_type.qmax:
            attrs["clamp_max"] = hi
        return attrs


class _QMac(ClampedOutput, nn.Module):
    """Shared machinery of QConv2d and QLinear: folded BN, weight and output quantizers."""

    # set by the student for a chip whose requantization scale is float32 (``float_scale``):
    # the multiplier is then computed in float32 as the chip computes it (requant_multiplier)
    float32_multiplier = False

    def __init__(self, weight_shape, w_bits: int, a_bits: int, relu: bool, batch_norm: bool,
                 output_quant: LsqQuantizer | None):
        super().__init__()
        out_ch = weight_shape[0]
        self.weight = nn.Parameter(torch.empty(weight_shape))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.bn = nn.BatchNorm2d(out_ch) if batch_norm else None
        self.relu = relu
        self.clamp_max = None
        self.weight_quant = LsqQuantizer(w_bits, signed=True, channels=out_ch)
        self.output_quant = output_quant or LsqQuantizer(a_bits, signed=not relu)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights and bias with batch-norm folded in, using its running (fixed) statistics."""
        if self.bn is None:
            return self.weight, self.bias
        inv_std = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        weight = self.weight * inv_std.view(shape)
        bias = (self.bias - self.bn.running_mean) * inv_std + self.bn.bias
        return weight, bias

    @torch.no_grad()
    def integer_params(self, in_scale: float) -> IntegerParams:
        weight, bias = self.folded()
        w_scale = self.weight_quant.step()
        w_int = self.weight_quant.integer(weight)
        acc_scale = float(in_scale) * w_scale.to(torch.float64)
        b_int = torch.round(bias.to(torch.float64) / acc_scale).clamp(BIAS_TYPE.qmin, BIAS_TYPE.qmax)
        out_scale = float(self.output_quant.step())
        return IntegerParams(w_int, w_scale, b_int.to(torch.int64),
                             integer.requant_multiplier(in_scale, w_scale, out_scale,
                                                        self.float32_multiplier), out_scale,
                             self.output_quant.qtype)

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        return self.output_quant(self.activation(y))

    def _requantize(self, acc: torch.Tensor, p: IntegerParams, arith: ArithmeticSpec) -> QTensor:
        lo, hi = self.bounds(p.out_type, p.out_scale)
        value = integer.requantize(acc, p.multiplier, arith.requant, lo, hi)
        return QTensor(value, p.out_scale, p.out_type)

    def _export_mac(self, b: ProgramBuilder, x: str, name: str, op: str, **attrs) -> str:
        in_scale = b.tensors[x].scale[0]
        p = self.integer_params(in_scale)
        per_channel = dict(quant_axis=0) if p.weight_scale.numel() > 1 else {}
        w = b.constant(f"{name}.weight", p.weight.numpy(), self.weight_quant.qtype,
                       scale=p.weight_scale.tolist(), axis=per_channel.get("quant_axis"))
        acc_scale = [in_scale * s for s in p.weight_scale.tolist()]
        bias = b.constant(f"{name}.bias", p.bias.numpy(), BIAS_TYPE, scale=acc_scale,
                          axis=per_channel.get("quant_axis"))
        acc = b.node(op, [x, w, bias], f"{name}.acc", scale=acc_scale,
                     quant_axis=1 if len(acc_scale) > 1 else None, **attrs)
        clamp = self.clamp_attrs(p.out_type, p.out_scale)
        return b.node("requantize", [acc], name, dtype=p.out_type, scale=p.out_scale,
                      real_multiplier=p.multiplier, axis=1, **clamp)


class QConv2d(_QMac):
    """k x k convolution + folded BN + optional ReLU: any kernel, stride, padding, dilation
    and groups (default 'same' padding for odd kernels)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size=3, stride=1,
                 w_bits: int = 8, a_bits: int = 8, relu: bool = True, batch_norm: bool = True,
                 output_quant: LsqQuantizer | None = None, padding=None, dilation=1,
                 groups: int = 1):
        kh, kw = _pair(kernel_size)
        super().__init__((out_ch, in_ch // groups, kh, kw), w_bits, a_bits, relu, batch_norm,
                         output_quant)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        self.padding = (kh // 2, kw // 2) if padding is None else _pair(padding)
        self.groups = groups

    def conv_kwargs(self) -> dict:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation,
                "groups": self.groups}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        return self._activate(F.conv2d(x, self.weight_quant(weight), bias, **self.conv_kwargs()))

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        return self.activation(F.conv2d(x, weight, bias, **self.conv_kwargs()))

    def integer_forward(self, x: QTensor, arith: ArithmeticSpec) -> QTensor:
        p = self.integer_params(x.scale)
        acc = integer.conv2d(x.value, p.weight, p.bias, self.stride, self.padding, arith.accumulator,
                             self.dilation, self.groups)
        return self._requantize(acc, p, arith)

    def pre_bn(self, x: torch.Tensor) -> torch.Tensor:
        """The conv's output before its batch-norm, channels on axis 1 (for calibration)."""
        return F.conv2d(x, self.weight, self.bias, **self.conv_kwargs())

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        (ph, pw), groups = self.padding, self.groups
        extra = {"dilations": list(self.dilation)} if self.dilation != (1, 1) else {}
        if groups != 1:
            extra["groups"] = groups
        return self._export_mac(b, x, name, "conv2d", strides=list(self.stride),
                                pads=[ph, pw, ph, pw], **extra)


class QChannelAffine(QConv2d):
    """A per-channel affine over the last axis of token rows: LayerNorm with fixed statistics
    (the paper's replacement). A depthwise 1x1 conv over the rows whose batch-norm holds the
    statistics, fixed by calibration, and LayerNorm's own scale and shift; folded into one
    multiplier and bias per channel like any batch-norm."""

    def __init__(self, channels: int, w_bits: int = 8, output_quant: LsqQuantizer | None = None):
        super().__init__(channels, channels, 1, 1, w_bits=w_bits, relu=False, batch_norm=True,
                         output_quant=output_quant, padding=0, groups=channels)

    @staticmethod
    def _rows(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self._rows(x)).reshape(x.shape)

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().float_forward(self._rows(x)).reshape(x.shape)

    def pre_bn(self, x: torch.Tensor) -> torch.Tensor:
        return super().pre_bn(self._rows(x))

    def integer_forward(self, x: QTensor, arith: ArithmeticSpec) -> QTensor:
        rows = QTensor(self._rows(x.value), x.scale, x.dtype)
        y = super().integer_forward(rows, arith)
        return QTensor(y.value.reshape(x.value.shape), y.scale, y.dtype)

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        shape = b.tensors[x].shape
        rows = b.node("reshape", [x], f"{name}.rows", shape=[-1, shape[-1], 1, 1])
        y = super().export(b, rows, f"{name}.dw")
        return b.node("reshape", [y], name, shape=[-1, *shape[1:]])


class QConstant(nn.Module):
    """A constant operand (a position table): its values are learned, as weights are, and
    quantized onto their own grid; one per-sample tensor, shared by the batch."""

    def __init__(self, shape, output_quant: LsqQuantizer):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(1, *shape))
        self.output_quant = output_quant

    def forward(self) -> torch.Tensor:
        return self.output_quant(self.value)

    def float_forward(self) -> torch.Tensor:
        return self.value

    def integer_forward(self, arith: ArithmeticSpec | None = None) -> QTensor:
        q = self.output_quant
        step = float(q.step())
        ints = torch.clamp(torch.round(self.value.detach() / step), q.qmin, q.qmax)
        return QTensor(ints.to(torch.int64), step, q.qtype)

    def export(self, b: ProgramBuilder, name: str) -> str:
        t = self.integer_forward()
        return b.constant(name, t.value.numpy(), t.dtype, scale=t.scale)


class QEmbedding(nn.Module):
    """An embedding table looked up by token ids (``embedding.gather``): the chip's gather, or
    the host's as it writes the input. The table is learned like a weight and written on its
    output grid (the values the lookup returns); ``weight`` is [features, vocab], as the
    one-hot layer's, so the embedding fits treat both alike."""

    def __init__(self, vocab: int, features: int, output_quant: LsqQuantizer):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(features, vocab))
        self.bias = None
        self.output_quant = output_quant

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.output_quant(self.weight.t()))

    def float_forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight.t())

    def table(self) -> QTensor:
        q = self.output_quant
        return QTensor(q.integer(self.weight.detach().t()), float(q.step()), q.qtype)

    def integer_forward(self, ids: QTensor, arith: ArithmeticSpec | None = None) -> QTensor:
        t = self.table()
        if ids.value.numel() and int(ids.value.max()) >= t.value.shape[0]:
            raise IndexError(f"a token id is outside the {t.value.shape[0]}-row table")
        return QTensor(t.value[ids.value], t.scale, t.dtype)

    def export(self, b: ProgramBuilder, ids: str, name: str) -> str:
        t = self.table()
        table = b.constant(f"{name}.table", t.value.numpy(), t.dtype, scale=t.scale)
        return b.node("gather", [table, ids], name, dtype=t.dtype, scale=t.scale)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear``; token ids stand for one-hot rows, whose product picks weight columns."""
    if is_token_ids(x):
        y = F.embedding(x, weight.t())
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class QLinear(_QMac):
    """Fully connected layer (+ optional ReLU); a logits head keeps a signed output grid."""

    def __init__(self, in_features: int, out_features: int, w_bits: int = 8, a_bits: int = 8,
                 relu: bool = False, output_quant: LsqQuantizer | None = None):
        super().__init__((out_features, in_features), w_bits, a_bits, relu, False, output_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        return self._activate(_linear(x, self.weight_quant(weight), bias))

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        return self.activation(_linear(x, weight, bias))

    def integer_forward(self, x: QTensor, arith: ArithmeticSpec) -> QTensor:
        p = self.integer_params(x.scale)
        lead = x.value.shape[:-1]      # token rows: every leading axis is a row of the chip's op
        acc = integer.linear(x.value.reshape(-1, x.value.shape[-1]), p.weight, p.bias,
                             arith.accumulator)
        y = self._requantize(acc, p, arith)
        return QTensor(y.value.reshape(*lead, -1), y.scale, y.dtype)

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        shape = b.tensors[x].shape
        if len(shape) == 2:
            return self._export_mac(b, x, name, "fully_connected")
        rows = b.node("reshape", [x], f"{name}.rows", shape=[-1, shape[-1]])
        y = self._export_mac(b, rows, f"{name}.fc", "fully_connected")
        return b.node("reshape", [y], name, shape=[-1, *shape[1:-1], b.tensors[y].shape[-1]])


class QFlatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)

    def integer_forward(self, x: QTensor, arith: ArithmeticSpec | None = None) -> QTensor:
        return QTensor(torch.flatten(x.value, 1), x.scale, x.dtype)

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        return b.node("flatten", [x], name, axis=1)


class QReshape(nn.Module):
    """A view to ``shape`` (per sample; the batch axis stays first)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(int(d) for d in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def integer_forward(self, x: QTensor, arith: ArithmeticSpec | None = None) -> QTensor:
        return QTensor(x.value.reshape(x.value.shape[0], *self.shape), x.scale, x.dtype)

    def export(self, b: ProgramBuilder, x: str, name: str) -> str:
        return b.node("reshape", [x], name, shape=[-1, *self.shape])   # any batch (re-batching)


def concat(xs: list[QTensor]) -> QTensor:
    """Integer concat along channels: operands must already share one grid (a shared quantizer)."""
    first = xs[0]
    for other in xs[1:]:
        if other.scale != first.scale or other.dtype != first.dtype:
            raise ValueError(f"concat operands on different grids: {first.scale} {first.dtype} vs "
                             f"{other.scale} {other.dtype}")
    batch = max(x.value.shape[0] for x in xs)
    return QTensor(torch.cat([_batched(x.value, batch) for x in xs], dim=1), first.scale,
                   first.dtype)


def _batched(v: torch.Tensor, batch: int) -> torch.Tensor:
    """``v`` for ``batch`` samples: a per-sample constant (batch 1, a class token) repeated."""
    return v.expand(batch, *v.shape[1:]) if v.shape[0] == 1 and batch > 1 else v


def concat_float(xs: list[torch.Tensor]) -> torch.Tensor:
    """Concat along channels (tokens, for token rows) of float tensors, constants joining every
    sample."""
    batch = max(x.shape[0] for x in xs)
    return torch.cat([_batched(x, batch) for x in xs], dim=1)
