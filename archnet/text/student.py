"""The Arch-Net Transformer student: a BERT encoder made only of operators an NPU runs.

- Embedding lookup -> a two-hot input (token id, position) times one fully connected layer
  whose weights are the token and position tables side by side; the token-type-0 row is its
  bias and the embedding LayerNorm's replacement is folded in.
- LayerNorm -> ``FixedAffine`` (per-channel, fixed statistics), folded into the fully connected
  layer that writes the residual branch and into a per-channel requantize of the skip path.
- GELU -> the profile's lookup-table unit (``activation="gelu_lut"``) or ReLU (``"relu"``).
- Softmax -> the chip's integer softmax: an exp lookup table indexed by ``max - x`` and an
  integer division, over the valid keys given by the attention mask.
- Q, K, V, attention output and FFN -> quantized fully connected layers, ``w_bits`` weights on
  ``a_bits`` inputs. The residual stream, Q, K, V, scores and the FFN pre-activation stay on
  8-bit grids and probabilities on u8 at 1/256: they are not projection inputs, and a 4-bit
  residual stream or 4-bit probabilities lose the sentence.
- Residual add -> ``add`` where the profile has it (``residual="add"``), else the two operands
  are concatenated on one grid and a fully connected projection ``[s I, s I]`` merges them
  (``residual="concat"``).

Blocks: block 0 is the embedding, block ``i + 1`` is encoder layer ``i``; every block writes the
residual stream [N*T, H] (tokens flattened: fully connected layers take [rows, features]).
Three forwards share their numbers (``integer_params`` and the helpers in ``modules``): the
fake-quant ``features`` (training), ``integer_features`` (emulation, proven equal to the
simulator bit for bit) and ``export`` (the Program). ``features(arith=...)`` ties the first to
the second: each op's value is the chip's, its gradient the fake-quant op's. Without it the
float forward drifts from the chip: TFLite's requantize rounds twice, and on an 8-bit input
(the 4-bit FC inputs, the skip path) that moves a value by one step where a float round would
not, which training never saw.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archnet.errors import ArchnetError
from archnet.quant import integer
from archnet.quant.lsq import LsqQuantizer
from archnet.quant.modules import QLinear
from archnet.quant.qtensor import QTensor
from archnet.text.modules import (AffineQLinear, FixedAffine, GeluLut, SmoothedInput,
                                  SmoothedQLinear, add_integer, attention_log_probs, regrid_export,
                                  regrid_integer, skip_export, skip_integer, softmax_export,
                                  softmax_fake, softmax_integer)
from simulator.contract import ArithmeticSpec, IntType, SaturationPoint
from simulator.ir.builder import ProgramBuilder
from simulator.ir.program import Program
from simulator.numerics import fixed_point as fp

STREAM_BITS = 8
ONE_HOT_TYPE = IntType(8, False)
ACTIVATIONS = ("gelu_lut", "relu")
RESIDUALS = ("add", "concat")


@dataclasses.dataclass(frozen=True)
class TextStudentConfig:
    vocab_size: int
    max_positions: int       # the sequence length the student (and its Program) supports
    hidden: int
    heads: int
    intermediate: int
    layers: int
    w_bits: int = 8
    a_bits: int = 8
    activation: str = "gelu_lut"
    residual: str = "add"

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ArchnetError(f"student config: hidden {self.hidden} not divisible by heads {self.heads}")
        if self.activation not in ACTIVATIONS:
            raise ArchnetError(f"student config: activation {self.activation!r}; choose one of {ACTIVATIONS}")
        if self.residual not in RESIDUALS:
            raise ArchnetError(f"student config: residual {self.residual!r}; choose one of {RESIDUALS}")
        for name in ("w_bits", "a_bits"):
            if not 2 <= getattr(self, name) <= 8:
                raise ArchnetError(f"student config: {name} {getattr(self, name)} outside 2..8")
        for name in ("vocab_size", "max_positions", "hidden", "heads", "intermediate", "layers"):
            if getattr(self, name) < 1:
                raise ArchnetError(f"student config: {name} must be >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TextStudentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ArchnetError(f"student config: unknown key(s) {unknown}")
        return cls(**d)


def _stream_quant() -> LsqQuantizer:
    return LsqQuantizer(STREAM_BITS, signed=True)


def _fc_input(cfg: TextStudentConfig) -> SmoothedInput | None:
    """An FC's own (smoothed) input grid when a_bits is narrower than the stream's; else the FC
    reads the stream."""
    if cfg.a_bits >= STREAM_BITS:
        return None
    return SmoothedInput(cfg.hidden, LsqQuantizer(cfg.a_bits, signed=True))


def tie(fake: torch.Tensor, chip: QTensor) -> torch.Tensor:
    """The chip's value (``chip``'s integers times its step) with the fake-quant op's gradient
    (straight-through). Training then sees what the chip computes: TFLite's double rounding
    in requantize, which on an 8-bit input moves values by a step where a float round would
    not, and the integer softmax."""
    exact = chip.value.to(fake.dtype).reshape(fake.shape) * float(chip.scale)
    return fake + (exact - fake).detach()


class Residual(nn.Module):
    """``affine(skip + branch)`` on the residual stream: an ``add`` with a per-channel skip
    rescale, or (no add on the chip) concat on one grid and a ``[s I, s I]`` projection."""

    def __init__(self, cfg: TextStudentConfig, affine: FixedAffine, branch_quant: LsqQuantizer):
        super().__init__()
        self.kind = cfg.residual
        self._shared = (affine, branch_quant)  # owned by the layer: a tuple keeps them unregistered here
        self.out_quant = _stream_quant()
        if self.kind == "add":
            self.skip_quant = _stream_quant()
        else:
            self.merge = QLinear(2 * cfg.hidden, cfg.hidden, w_bits=max(cfg.w_bits, STREAM_BITS),
                                 output_quant=self.out_quant)

    @property
    def affine(self) -> FixedAffine:
        return self._shared[0]

    @property
    def concat_quant(self) -> LsqQuantizer:
        """The branch is written on the concat grid, so the merge sees one scale."""
        return self._shared[1]

    @torch.no_grad()
    def init_merge(self) -> None:
        """The merge starts as exactly ``affine(skip + branch)``."""
        s = self.affine.scale()
        self.merge.weight.copy_(torch.cat([torch.diag(s), torch.diag(s)], dim=1))
        self.merge.bias.copy_(self.affine.shift())

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if self.kind == "add":
            return self.out_quant(self.skip_quant(skip * self.affine.scale()) + branch)
        return self.merge(torch.cat([self.concat_quant(skip), branch], dim=-1))

    def integer_forward(self, skip: QTensor, branch: QTensor, arith: ArithmeticSpec) -> QTensor:
        if self.kind == "add":
            return add_integer(skip_integer(skip, self.affine, self.skip_quant, arith), branch,
                               self.out_quant, arith)
        joined = regrid_integer(skip, self.concat_quant, arith)
        cat = QTensor(torch.cat([joined.value, branch.value], dim=1), joined.scale, joined.dtype)
        return self.merge.integer_forward(cat, arith)

    def export(self, b: ProgramBuilder, skip: str, branch: str, name: str) -> str:
        if self.kind == "add":
            s = skip_export(b, skip, self.affine, self.skip_quant, f"{name}.skip")
            q = self.out_quant
            return b.node("add", [s, branch], name, dtype=q.qtype, scale=float(q.step()))
        joined = regrid_export(b, skip, self.concat_quant, f"{name}.skip")
        cat = b.node("concat", [joined, branch], f"{name}.concat", axis=1)
        return self.merge.export(b, cat, name)


class Embedding(nn.Module):
    """Token + position (+ token type 0) embeddings, then the LayerNorm replacement, as one
    fully connected layer on a two-hot input. Training gathers the two columns it would
    multiply by 1; the Program multiplies the whole two-hot row, as the chip does."""

    def __init__(self, cfg: TextStudentConfig):
        super().__init__()
        self.vocab_size, self.max_positions = cfg.vocab_size, cfg.max_positions
        self.affine = FixedAffine(cfg.hidden)
        # the table is data, not a projection: it keeps 8-bit weights at every width
        self.linear = AffineQLinear(cfg.vocab_size + cfg.max_positions, cfg.hidden, self.affine,
                                    STREAM_BITS, _stream_quant())

    @property
    def out_quant(self) -> LsqQuantizer:
        return self.linear.output_quant

    def _columns(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1]) + self.vocab_size
        return ids, positions

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight, bias = self.linear.folded()
        wq = self.linear.weight_quant(weight)
        tok, pos = self._columns(ids)
        y = wq[:, tok].permute(1, 2, 0) + wq[:, pos].T + bias
        return self.out_quant(y)

    def integer_forward(self, ids: torch.Tensor, arith: ArithmeticSpec) -> QTensor:
        p = self.linear.integer_params(1.0)
        tok, pos = self._columns(ids)
        n, t = ids.shape
        terms = torch.stack([p.weight[:, tok].permute(1, 2, 0).reshape(n * t, -1),
                             p.weight[:, pos].T.expand(n, t, -1).reshape(n * t, -1)], dim=2)
        acc = _two_hot_accumulate(terms, tok.reshape(-1), pos.repeat(n), p.bias, arith)
        q = self.out_quant
        value = integer.requantize(acc, p.multiplier, arith.requant, q.qmin, q.qmax)
        return QTensor(value, p.out_scale, p.out_type)

    def export(self, b: ProgramBuilder, tokens: str, name: str) -> str:
        return self.linear.export(b, tokens, name)


def _two_hot_accumulate(terms: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor,
                        bias: torch.Tensor, arith: ArithmeticSpec) -> torch.Tensor:
    """The chip's accumulator over a two-hot row: the zero products change nothing (adding 0
    to an in-range value never wraps or saturates), so only the token and the position column
    are summed, in their reduction order; under per-tile saturation, two columns in one tile
    form one partial sum."""
    acc_spec = arith.accumulator
    rows, channels, _ = terms.shape
    t = terms.reshape(rows * channels, 2).numpy()
    b = bias.view(1, -1).expand(rows, -1).reshape(-1).numpy()
    if acc_spec.saturation_point is SaturationPoint.PER_TILE and not acc_spec.order_independent:
        same = (tok // acc_spec.tile_k == pos // acc_spec.tile_k).repeat_interleave(channels).numpy()
        t = np.where(same[:, None], np.stack([t.sum(1), np.zeros(len(t), np.int64)], 1), t)
        acc_spec = dataclasses.replace(acc_spec, saturation_point=SaturationPoint.PER_MAC)
    values, _ = fp.accumulate(t, b, acc_spec)
    return torch.from_numpy(np.ascontiguousarray(values)).view(rows, channels)


class EncoderLayer(nn.Module):
    """One BERT layer in Arch-Net operators (see module doc)."""

    def __init__(self, cfg: TextStudentConfig):
        super().__init__()
        h, self.heads = cfg.hidden, cfg.heads
        self.head_dim = h // cfg.heads
        self.attn_in = _fc_input(cfg)
        self.query, self.key, self.value = (
            SmoothedQLinear(h, h, self.attn_in, w_bits=cfg.w_bits, output_quant=_stream_quant())
            for _ in range(3))
        self.score_quant = LsqQuantizer(STREAM_BITS, signed=True)
        self.context_quant = LsqQuantizer(cfg.a_bits, signed=True)
        self.norm1 = FixedAffine(h)
        self.norm2 = FixedAffine(h)
        # with a concat residual the branch lands on the concat grid, unfolded (the merge folds)
        concat = cfg.residual == "concat"
        branch1, branch2 = _stream_quant(), _stream_quant()
        self.attn_out = (QLinear(h, h, w_bits=cfg.w_bits, output_quant=branch1) if concat
                         else AffineQLinear(h, h, self.norm1, cfg.w_bits, branch1))
        self.residual1 = Residual(cfg, self.norm1, branch1)
        self.ffn_in = _fc_input(cfg)
        if cfg.activation == "gelu_lut":
            self.ffn1 = SmoothedQLinear(h, cfg.intermediate, self.ffn_in, w_bits=cfg.w_bits,
                                        output_quant=_stream_quant())
            self.gelu = GeluLut(LsqQuantizer(cfg.a_bits, signed=True))
        else:
            self.ffn1 = SmoothedQLinear(h, cfg.intermediate, self.ffn_in, w_bits=cfg.w_bits,
                                        relu=True, output_quant=LsqQuantizer(cfg.a_bits, signed=False))
            self.gelu = None
        self.ffn2 = (QLinear(cfg.intermediate, h, w_bits=cfg.w_bits, output_quant=branch2) if concat
                     else AffineQLinear(cfg.intermediate, h, self.norm2, cfg.w_bits, branch2))
        self.residual2 = Residual(cfg, self.norm2, branch2)

    def fc_layers(self) -> dict[str, QLinear]:
        fcs = {"query": self.query, "key": self.key, "value": self.value, "attn_out": self.attn_out,
               "ffn1": self.ffn1, "ffn2": self.ffn2}
        for name, r in (("merge1", self.residual1), ("merge2", self.residual2)):
            if r.kind == "concat":
                fcs[name] = r.merge
        return fcs

    # ---------------------------------------------------------------- fake-quant
    def forward(self, x: torch.Tensor, mask: torch.Tensor, attention: list | None = None,
                ties: dict | None = None) -> torch.Tensor:
        """x [N, T, H] on the stream grid (dequantized), mask [N, T] -> the next stream;
        ``attention`` (a list) receives the attention map's log-probabilities [N, heads, T, T];
        ``ties`` (``integer_forward``'s record on the same input) makes every op's value the
        chip's (see ``tie``)."""
        def tie_(name: str, y: torch.Tensor) -> torch.Tensor:
            return y if ties is None else tie(y, ties[name])
        n, t, h = x.shape
        xin = tie_("attn_in", self.attn_in(x)) if self.attn_in is not None else x
        q, k, v = (self._heads(tie_(name, m(xin)), n, t) for name, m in
                   (("query", self.query), ("key", self.key), ("value", self.value)))
        scores = tie_("scores", self.score_quant(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)))
        probs = tie_("probs", softmax_fake(scores, mask[:, None, None, :]))
        if attention is not None:
            attention.append(attention_log_probs(scores, mask[:, None, None, :]))
        context = tie_("context", self.context_quant((probs @ v).transpose(1, 2).reshape(n, t, h)))
        h1 = tie_("h1", self.residual1(x, tie_("attn_out", self.attn_out(context))))
        fin = tie_("ffn_in", self.ffn_in(h1)) if self.ffn_in is not None else h1
        act = tie_("ffn1", self.ffn1(fin))
        if self.gelu is not None:
            act = tie_("gelu", self.gelu(act))
        return tie_("out", self.residual2(h1, tie_("ffn2", self.ffn2(act))))

    def _heads(self, y: torch.Tensor, n: int, t: int) -> torch.Tensor:
        return y.view(n, t, self.heads, self.head_dim).transpose(1, 2)

    # ---------------------------------------------------------------- integer emulation
    def integer_forward(self, x: QTensor, mask: torch.Tensor, arith: ArithmeticSpec,
                        record: dict | None = None) -> QTensor:
        """x [N*T, H] integers on the stream grid, mask [N, T] -> the next stream; ``record``
        (a dict) receives every op's output under the name ``forward``'s ties use."""
        rec = {} if record is None else record

        def keep(name: str, y: QTensor) -> QTensor:
            rec[name] = y
            return y
        n, t = mask.shape
        h = x.value.shape[1]
        xin = keep("attn_in", self.attn_in.integer_forward(x, arith)) if self.attn_in is not None else x
        q, k, v = (keep(name, m.integer_forward(xin, arith)) for name, m in
                   (("query", self.query), ("key", self.key), ("value", self.value)))
        qh = q.value.view(n, t, self.heads, self.head_dim).transpose(1, 2)
        kt = k.value.view(n, t, self.heads, self.head_dim).permute(0, 2, 3, 1)
        vh = v.value.view(n, t, self.heads, self.head_dim).transpose(1, 2)
        acc = integer.matmul(qh, kt, arith.accumulator)
        sq = self.score_quant
        scores = keep("scores", QTensor(self._requant(acc, self.score_multiplier(q.scale, k.scale), sq, arith),
                                        float(sq.step()), sq.qtype))
        probs = keep("probs", softmax_integer(scores, mask[:, None, None, :], arith))
        acc = integer.matmul(probs.value, vh, arith.accumulator)
        cq = self.context_quant
        ctx = self._requant(acc, [probs.scale * v.scale / float(cq.step())], cq, arith)
        context = keep("context", QTensor(ctx.transpose(1, 2).reshape(n * t, h), float(cq.step()), cq.qtype))
        h1 = keep("h1", self.residual1.integer_forward(
            x, keep("attn_out", self.attn_out.integer_forward(context, arith)), arith))
        fin = keep("ffn_in", self.ffn_in.integer_forward(h1, arith)) if self.ffn_in is not None else h1
        act = keep("ffn1", self.ffn1.integer_forward(fin, arith))
        if self.gelu is not None:
            act = keep("gelu", self.gelu.integer_forward(act))
        branch = keep("ffn2", self.ffn2.integer_forward(act, arith))
        return keep("out", self.residual2.integer_forward(h1, branch, arith))

    def score_multiplier(self, q_scale: float, k_scale: float) -> list[float]:
        return [float(q_scale) * float(k_scale) / (math.sqrt(self.head_dim) * float(self.score_quant.step()))]

    @staticmethod
    def _requant(acc: torch.Tensor, mult: list[float], q: LsqQuantizer, arith: ArithmeticSpec):
        flat = integer.requantize(acc.reshape(acc.shape[0], -1), mult, arith.requant, q.qmin, q.qmax)
        return flat.reshape(acc.shape)

    # ---------------------------------------------------------------- export
    def export(self, b: ProgramBuilder, x: str, key_mask: str, n: int, t: int, name: str) -> str:
        h, nh, d = b.tensors[x].shape[1], self.heads, self.head_dim
        xin = self.attn_in.export(b, x, f"{name}.attn_in") if self.attn_in is not None else x
        q, k, v = (m.export(b, xin, f"{name}.{m_name}") for m_name, m in
                   (("query", self.query), ("key", self.key), ("value", self.value)))
        split = {s: b.node("reshape", [s], f"{s}.heads", shape=[n, t, nh, d]) for s in (q, k, v)}
        qh = b.node("transpose", [split[q]], f"{q}.t", perm=[0, 2, 1, 3])
        kt = b.node("transpose", [split[k]], f"{k}.t", perm=[0, 2, 3, 1])
        vh = b.node("transpose", [split[v]], f"{v}.t", perm=[0, 2, 1, 3])
        sq, cq = self.score_quant, self.context_quant
        q_scale, k_scale = b.tensors[q].scale[0], b.tensors[k].scale[0]
        acc = b.node("matmul", [qh, kt], f"{name}.scores.acc", scale=q_scale * k_scale)
        scores = b.node("requantize", [acc], f"{name}.scores", dtype=sq.qtype, scale=float(sq.step()),
                        real_multiplier=self.score_multiplier(q_scale, k_scale))
        probs = softmax_export(b, scores, key_mask, f"{name}.probs")
        p_scale, v_scale = b.tensors[probs].scale[0], b.tensors[v].scale[0]
        acc = b.node("matmul", [probs, vh], f"{name}.context.acc", scale=p_scale * v_scale)
        ctx = b.node("requantize", [acc], f"{name}.context.heads", dtype=cq.qtype,
                     scale=float(cq.step()), real_multiplier=[p_scale * v_scale / float(cq.step())])
        ctx = b.node("transpose", [ctx], f"{name}.context.t", perm=[0, 2, 1, 3])
        ctx = b.node("reshape", [ctx], f"{name}.context", shape=[n * t, h])
        branch = self.attn_out.export(b, ctx, f"{name}.attn_out")
        h1 = self.residual1.export(b, x, branch, f"{name}.h1")
        fin = self.ffn_in.export(b, h1, f"{name}.ffn_in") if self.ffn_in is not None else h1
        act = self.ffn1.export(b, fin, f"{name}.ffn1")
        if self.gelu is not None:
            act = self.gelu.export(b, act, f"{name}.gelu")
        branch = self.ffn2.export(b, act, f"{name}.ffn2")
        return self.residual2.export(b, h1, branch, f"{name}.out")


class TextStudent(nn.Module):
    """Embedding block + encoder layers; see the module doc."""

    kind = "text"

    def __init__(self, cfg: TextStudentConfig | dict):
        super().__init__()
        self.cfg = cfg if isinstance(cfg, TextStudentConfig) else TextStudentConfig.from_dict(cfg)
        self.embedding = Embedding(self.cfg)
        self.layers = nn.ModuleList(EncoderLayer(self.cfg) for _ in range(self.cfg.layers))

    @property
    def config(self) -> dict:
        return self.cfg.to_dict()

    @property
    def num_blocks(self) -> int:
        return 1 + self.cfg.layers

    def block_names(self) -> list[str]:
        return ["embedding"] + [f"layer{i}" for i in range(self.cfg.layers)]

    def block(self, i: int) -> nn.Module:
        return self.embedding if i == 0 else self.layers[i - 1]

    def stream_quant(self, i: int) -> LsqQuantizer:
        """The quantizer of block i's output (the residual stream it writes)."""
        if i == 0:
            return self.embedding.out_quant
        return self.layers[i - 1].residual2.out_quant

    def _check_length(self, t: int) -> None:
        if t > self.cfg.max_positions:
            raise ArchnetError(f"sequence length {t} > the student's {self.cfg.max_positions} positions")

    # ---------------------------------------------------------------- fake-quant
    def features(self, ids: torch.Tensor | None, mask: torch.Tensor, start: int = 0,
                 stop: int | None = None, stream: torch.Tensor | None = None,
                 attention: dict | None = None,
                 arith: ArithmeticSpec | None = None) -> list[torch.Tensor]:
        """Stream outputs [N, T, H] of blocks start..stop-1; ``stream`` is block start-1's
        output when start > 0 (dequantized, e.g. from the simulator). ``attention`` (a dict)
        receives each encoder block's attention log-probabilities under its block index.
        With ``arith`` every value is the chip's integers times their step (``integer_features``
        runs alongside) and every gradient the fake-quant op's: see ``tie``."""
        stop = self.num_blocks if stop is None else stop
        self._check_length(mask.shape[1])
        outs = []
        x, xq = stream, None
        if arith is not None and stream is not None:
            q = self.stream_quant(start - 1)
            step = float(q.step())
            xq = QTensor(torch.round(stream.detach().reshape(-1, stream.shape[-1]) / step).to(torch.int64),
                         step, q.qtype)
        for i in range(start, stop):
            ties = None
            if arith is not None:
                ties = {}
                with torch.no_grad():
                    xq = self.embedding.integer_forward(ids, arith) if i == 0 else \
                        self.layers[i - 1].integer_forward(xq, mask, arith, record=ties)
            if i == 0:
                x = self.embedding(ids)
                if xq is not None:
                    x = tie(x, xq)
            else:
                maps = [] if attention is not None else None
                x = self.layers[i - 1](x, mask, maps, ties)
                if maps:
                    attention[i] = maps[0]
            outs.append(x)
        return outs

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.features(ids, mask)[-1]

    # ---------------------------------------------------------------- integer emulation
    @torch.no_grad()
    def integer_features(self, ids: torch.Tensor | None, mask: torch.Tensor, arith: ArithmeticSpec,
                         start: int = 0, stop: int | None = None,
                         stream: QTensor | None = None) -> list[QTensor]:
        """As ``features`` in integers: QTensors [N*T, H] on each block's stream grid."""
        stop = self.num_blocks if stop is None else stop
        self._check_length(mask.shape[1])
        outs, x = [], stream
        for i in range(start, stop):
            x = self.embedding.integer_forward(ids, arith) if i == 0 else \
                self.layers[i - 1].integer_forward(x, mask, arith)
            outs.append(x)
        return outs

    # ---------------------------------------------------------------- export
    @torch.no_grad()
    def export(self, batch: int, seq_len: int | None = None, start: int = 0, stop: int | None = None,
               name: str = "archnet_text_student", metadata: dict | None = None) -> Program:
        """The Program of blocks start..stop-1 at a fixed [batch, seq_len].

        Inputs: ``tokens`` (u8 two-hot rows [batch*seq_len, vocab + positions], see
        ``two_hot``) when start is 0, else ``stream`` (block start-1's output grid), and
        ``attention_mask`` (u8 [batch, seq_len], 1 = real token). Outputs: every block's stream
        [batch*seq_len, H], in block order (``embedding``, then ``layer<i>.out``).
        """
        t = self.cfg.max_positions if seq_len is None else seq_len
        self._check_length(t)
        stop = self.num_blocks if stop is None else stop
        b = ProgramBuilder(name, metadata={"family": "text", "blocks": self.block_names()[start:stop],
                                           **(metadata or {})})
        if start == 0:
            x = b.input("tokens", (batch * t, self.cfg.vocab_size + self.cfg.max_positions),
                        ONE_HOT_TYPE, scale=1.0, zero_point=0)
        else:
            q = self.stream_quant(start - 1)
            x = b.input("stream", (batch * t, self.cfg.hidden), q.qtype, scale=float(q.step()))
        mask = b.input("attention_mask", (batch, t), ONE_HOT_TYPE, scale=1.0, zero_point=0)
        key_mask = b.node("reshape", [mask], "key_mask", shape=[batch, 1, 1, t])
        names = self.block_names()
        for i in range(start, stop):
            if i == 0:
                x = self.embedding.export(b, x, names[0])
            else:
                x = self.layers[i - 1].export(b, x, key_mask, batch, t, names[i])
            b.output(x)
        return b.build()


def two_hot(ids: np.ndarray, vocab_size: int, max_positions: int) -> np.ndarray:
    """The Program's ``tokens`` input: row n*T + j has a 1 at ids[n, j] and at vocab + j."""
    ids = np.asarray(ids)
    n, t = ids.shape
    rows = np.zeros((n * t, vocab_size + max_positions), np.uint8)
    r = np.arange(n * t)
    rows[r, ids.reshape(-1)] = 1
    rows[r, vocab_size + np.tile(np.arange(t), n)] = 1
    return rows


def pooled(stream: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens of a stream [N, T, H] (or [N*T, H]), L2-normalised: the sentence
    embedding, computed on the host as sentence-transformers does after the encoder."""
    n, t = mask.shape
    x = stream.reshape(n, t, -1).to(torch.float64 if stream.dtype == torch.float64 else torch.float32)
    m = mask.to(x.dtype).unsqueeze(-1)
    mean = (x * m).sum(1) / m.sum(1).clamp_min(1)
    return F.normalize(mean, dim=-1)
