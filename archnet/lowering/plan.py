"""Emit a student config within a chip's limits, with its transfer table.

Lowering passes describe the student in teacher terms ("a 3x3 conv of 512 -> 512 channels with
this teacher kernel and batch-norm") and ``StudentPlan`` writes the steps a chip can run, splitting
what exceeds its channel limits, plus the ``TransferRow`` of every student tensor.

**Pieces.** A chip has no slice op, so a tensor too wide for one layer never exists whole: it is a
list of *pieces* (channel groups, in logical channel order), all written by one shared activation
quantizer so that any of them may be concatenated. Every feature map is cut the same way for a
given width: ``piece_sizes(C)`` near-equal pieces of at most ``P = min(max_output_channels,
max_input_channels // 2)`` channels (half the input limit, so that a residual pair of pieces fits
one concat conv). Nothing is cut where the limits are not reached.

**Output-channel split.** A conv with more outputs than ``P`` becomes one conv per output piece,
all reading the same input and writing to the same quantizer (Arch-Net's parallel convs + concat).

**Input-channel split.** A conv with more than ``max_input_channels`` inputs is a sum over input
groups: the input pieces are grouped (each group at most ``max_input_channels``), each group gets
a *partial* conv per output piece (the teacher kernel's slice, no bias, no ReLU, no batch-norm),
and the partials of one output piece are summed by concat + 3x3 identity-sum convs, in a tree of
fan-in ``max_input_channels // piece`` (at least 2); the last sum carries the teacher's bias,
batch-norm and ReLU. In float this is exactly the teacher's conv; quantized, each partial is
rounded once more on a signed grid shared by all partials and inner sums of the layer. It is the
same construction as Arch-Net's residual (concat + conv instead of add), so the chip needs nothing
beyond concat and 3x3 conv; and the sums are ordinary trainable convs, so distillation may learn
to mix the partials better than a fixed add would.

**Residual merge.** ``merge(main, shortcut)`` is Arch-Net's concat + 3x3 conv initialised to the
teacher's sum. If the pair is wider than ``max_input_channels`` it is merged piece by piece
(main piece j with shortcut piece j): a block-diagonal concat conv, as Arch-Net's
``QuantizeBasicBlockV2`` splits channels for the 512-channel limit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from archnet.errors import ConversionError
from archnet.lowering.transfer import TransferRow
from archnet.student import CONFIG_FORMAT, CONFIG_VERSION, IMAGE
from simulator.profiles import ChipProfile

STUDENT_BN_EPS = 1e-5  # nn.BatchNorm2d's default, as QConv2d makes it


# ----------------------------------------------------------------------------- limits

@dataclass(frozen=True)
class ChipLimits:
    conv_in: int
    conv_out: int
    fc_in: int
    fc_out: int
    concat_inputs: int
    global_avgpool: bool
    global_avgpool_hw: tuple[int, int]

    @property
    def piece(self) -> int:
        return min(self.conv_out, self.conv_in // 2)

    @staticmethod
    def of(profile: ChipProfile) -> "ChipLimits":
        conv, fc, cat = profile.op("conv2d"), profile.op("fully_connected"), profile.op("concat")
        missing = [k for k, lim in (("conv2d", conv), ("fully_connected", fc), ("concat", cat))
                   if not lim.supported]
        if conv.supported and conv.kernel_sizes is not None and (3, 3) not in conv.kernel_sizes:
            missing.append("3x3 conv2d")
        if missing:
            raise ConversionError(f"profile {profile.name} lacks the Arch-Net op set: "
                                  f"{', '.join(missing)} not supported")
        if conv.max_input_channels < 2:
            raise ConversionError(f"profile {profile.name}: ops.conv2d.max_input_channels "
                                  f"{conv.max_input_channels} leaves no room for a concat conv")
        gap = profile.op("global_avgpool2d")
        return ChipLimits(conv.max_input_channels, conv.max_output_channels,
                          fc.max_input_features, fc.max_output_features,
                          min(cat.max_inputs, 64), gap.supported,
                          tuple(gap.max_input_hw) if gap.supported else (0, 0))


def piece_sizes(channels: int, limit: int) -> list[int]:
    """``channels`` cut into the fewest near-equal pieces of at most ``limit``."""
    n = max(1, math.ceil(channels / limit))
    return [channels // n + (1 if i < channels % n else 0) for i in range(n)]


# ----------------------------------------------------------------------------- values

@dataclass(frozen=True)
class Piece:
    ref: str        # tensor name in the block ("in:<k>" or a step name)
    size: int       # channels (feature maps) or features (vectors)
    start: int      # its first channel in the logical tensor


@dataclass(frozen=True)
class Act:
    """A logical activation: its pieces, their shared quantizer, and the map size (None for a
    vector)."""

    pieces: tuple[Piece, ...]
    quant: str
    hw: tuple[int, int] | None

    @property
    def channels(self) -> int:
        return sum(p.size for p in self.pieces)

    def ranges(self, per: int = 1) -> list[list[int]]:
        return _ranges(self.pieces, per)


def _ranges(pieces, per: int = 1) -> list[list[int]]:
    """Logical ranges covered by pieces (adjacent ones merged), scaled by ``per`` features per
    channel (a flattened map)."""
    out: list[list[int]] = []
    for p in pieces:
        a, b = p.start * per, (p.start + p.size) * per
        if out and out[-1][1] == a:
            out[-1][1] = b
        else:
            out.append([a, b])
    return out


@dataclass(frozen=True)
class Weight:
    """Where a layer's logical weight comes from: a transfer rule, a teacher key, its args."""

    rule: str
    source: str | None = None
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TeacherBn:
    prefix: str          # teacher module path of the BatchNorm2d
    affine: bool
    eps: float


NEW_BN = "new"   # a batch-norm the teacher does not have: identity until calibrate_batchnorm


def _ident(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


# ----------------------------------------------------------------------------- the plan

class StudentPlan:
    """Collects quantizers, blocks and transfer rows; ``config()`` is the student config."""

    def __init__(self, profile: ChipProfile, input_shape: tuple[int, int, int], meta: dict):
        self.profile = profile
        self.limits = ChipLimits.of(profile)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.meta = meta
        self.quantizers: dict[str, dict] = {}
        self.blocks: list[dict] = []
        self.rows: list[TransferRow] = []

    def quantizer(self, hint: str, bits: int, signed: bool, step: float | None = None) -> str:
        key, i = _ident(hint), 1
        while key in self.quantizers or key == IMAGE:
            key, i = f"{_ident(hint)}_{i}", i + 1
        self.quantizers[key] = {"bits": bits, "signed": signed, "step": step}
        return key

    def image(self) -> Act:
        c, h, w = self.input_shape
        if c > self.limits.conv_in:
            raise ConversionError(f"{c} image channels exceed ops.conv2d.max_input_channels "
                                  f"{self.limits.conv_in} of {self.profile.name}")
        return Act((Piece("in:0", c, 0),), IMAGE, (h, w))

    def block(self, name: str, tap: str, w_bits: int, a_bits: int, x: Act) -> "BlockPlan":
        return BlockPlan(self, len(self.blocks), name, tap, w_bits, a_bits, x)

    def config(self) -> dict:
        return {"format": CONFIG_FORMAT, "version": CONFIG_VERSION,
                "input_shape": list(self.input_shape), "quantizers": self.quantizers,
                "blocks": self.blocks,
                # the chip's requantize mode decides how the student computes its multipliers
                "meta": {**self.meta,
                         "requantize": self.profile.arithmetic.requant.mode.value}}


class BlockPlan:
    """One block being written: layer methods take and return ``Act`` values."""

    def __init__(self, plan: StudentPlan, index: int, name: str, tap: str, w_bits: int,
                 a_bits: int, x: Act):
        self.plan, self.limits = plan, plan.limits
        self.index, self.name, self.tap = index, name, tap
        self.w_bits, self.a_bits = w_bits, a_bits
        self.steps: list[dict] = []
        self._names: set[str] = set()
        self._concats: dict[tuple[str, ...], str] = {}
        self.input = Act(tuple(Piece(f"in:{k}", p.size, p.start) for k, p in enumerate(x.pieces)),
                         x.quant, x.hw)
        self.in_sizes = [p.size for p in x.pieces]
        self.input_quant = x.quant

    # -- bookkeeping
    def _unique(self, base: str) -> str:
        name, i = _ident(base), 1
        while name in self._names:
            name, i = f"{_ident(base)}_{i}", i + 1
        self._names.add(name)
        return name

    def _target(self, step: str, leaf: str) -> str:
        return f"blocks.{self.index}.layers.{step}.{leaf}"

    def _concat(self, hint: str, pieces) -> str:
        """One tensor of ``pieces`` (a concat tree when more than the chip's concat inputs)."""
        refs = tuple(p.ref for p in pieces)
        if len(refs) == 1:
            return refs[0]
        if refs in self._concats:
            return self._concats[refs]
        cap = self.limits.concat_inputs
        if len(refs) > cap:
            groups = [pieces[i:i + cap] for i in range(0, len(pieces), cap)]
            parts = [Piece(self._concat(f"{hint}_{g}", grp), 0, 0) for g, grp in enumerate(groups)]
            out = self._concat(hint, parts)
        else:
            out = self._unique(hint)
            self.steps.append({"name": out, "kind": "concat", "inputs": list(refs)})
        self._concats[refs] = out
        return out

    def _bn_rows(self, step: str, bn, out: list[int]) -> None:
        t = lambda leaf: self._target(step, f"bn.{leaf}")  # noqa: E731
        if bn == NEW_BN:
            self.plan.rows += [TransferRow(t("weight"), "ones"), TransferRow(t("bias"), "zeros"),
                               TransferRow(t("running_mean"), "zeros"),
                               TransferRow(t("running_var"), "bn_identity_var", None,
                                           {"eps": STUDENT_BN_EPS})]
            return
        cut = {"out": out}
        if bn.affine:
            self.plan.rows += [TransferRow(t("weight"), "copy", f"{bn.prefix}.weight", cut),
                               TransferRow(t("bias"), "copy", f"{bn.prefix}.bias", cut)]
        else:
            self.plan.rows += [TransferRow(t("weight"), "ones"), TransferRow(t("bias"), "zeros")]
        self.plan.rows += [
            TransferRow(t("running_mean"), "copy", f"{bn.prefix}.running_mean", cut),
            TransferRow(t("running_var"), "bn_var", f"{bn.prefix}.running_var",
                        {**cut, "eps_shift": bn.eps - STUDENT_BN_EPS})]

    def _mac_step(self, kind: str, hint: str, inp: str, n_in: int, out: list[int],
                  in_ranges: list[list[int]], *, weight: Weight, bias: str | None, bn, relu: bool,
                  quant: str, stride: int = 1, role: str, param_out: list[int] | None = None) -> str:
        """One conv/linear step and its rows: the weight is ``weight``'s logical tensor cut to
        output range ``out`` and input ranges ``in_ranges``; bias and batch-norm are the
        teacher's cut to ``param_out`` (default ``out``)."""
        name = self._unique(hint)
        n_out = out[1] - out[0]
        param_out = out if param_out is None else param_out
        step = {"name": name, "kind": kind, "inputs": [inp], "relu": relu, "w_bits": self.w_bits,
                "quant": quant, "role": role}
        if kind == "conv":
            step.update(in_channels=n_in, out_channels=n_out, stride=stride,
                        batch_norm=bn is not None, bn_init=None if bn is None else
                        ("new" if bn == NEW_BN else "teacher"))
        else:
            step.update(in_features=n_in, out_features=n_out)
        self.steps.append(step)
        rows = self.plan.rows
        rows.append(TransferRow(self._target(name, "weight"), weight.rule, weight.source,
                                {**weight.args, "out": out, "in": in_ranges}))
        rows.append(TransferRow(self._target(name, "bias"), "copy", bias, {"out": param_out})
                    if bias is not None else TransferRow(self._target(name, "bias"), "zeros"))
        if bn is not None:
            self._bn_rows(name, bn, param_out)
        return name

    # -- layers
    def conv(self, name: str, x: Act, out_channels: int, *, stride: int = 1, relu: bool,
             quant: str, weight: Weight, bias: str | None = None, bn=None,
             role: str = "teacher") -> Act:
        """A 3x3 'same' conv of the logical input ``x`` (split to the chip's channel limits)."""
        hw = _conv_hw(x.hw, stride)
        chunks = _chunks(out_channels, self.limits.piece)
        lim = self.limits
        if x.channels <= lim.conv_in:
            inp = self._concat(f"{name}_in", x.pieces)
            out = []
            for j, (o0, n) in enumerate(chunks):
                hint = name if len(chunks) == 1 else f"{name}_c{j}"
                step = self._mac_step("conv", hint, inp, x.channels, [o0, o0 + n], x.ranges(),
                                      weight=weight, bias=bias, bn=bn, relu=relu, quant=quant,
                                      stride=stride, role=role)
                out.append(Piece(step, n, o0))
            return Act(tuple(out), quant, hw)
        groups = _group(x.pieces, lim.conv_in)
        if any(sum(p.size for p in g) > lim.conv_in for g in groups):
            raise ConversionError(f"{self.name}.{name}: an input piece exceeds "
                                  f"max_input_channels {lim.conv_in}")
        partial_q = self.plan.quantizer(f"{self.name}_{name}_partial", self.a_bits, True)
        inputs = [self._concat(f"{name}_g{g}", grp) for g, grp in enumerate(groups)]
        out = []
        for j, (o0, n) in enumerate(chunks):
            cut = [o0, o0 + n]
            nodes = [self._mac_step("conv", f"{name}_c{j}_g{g}", inp, sum(p.size for p in grp),
                                    cut, _ranges(grp), weight=weight, bias=None, bn=None,
                                    relu=False, quant=partial_q, stride=stride, role="partial")
                     for g, (inp, grp) in enumerate(zip(inputs, groups, strict=True))]
            fan_in = lim.conv_in // n
            level = 0
            while len(nodes) > fan_in:
                nodes = [self._sum(f"{name}_c{j}_s{level}_{i}", nodes[i:i + fan_in], n, partial_q)
                         for i in range(0, len(nodes), fan_in)]
                level += 1
            step = self._sum(f"{name}_c{j}", nodes, n, quant, final=dict(
                bias=bias, bn=bn, relu=relu, out=cut))
            out.append(Piece(step, n, o0))
        return Act(tuple(out), quant, hw)

    def _sum(self, hint: str, nodes: list[str], n: int, quant: str, final: dict | None = None,
             kind: str = "conv") -> str:
        """concat + identity-sum layer over partial results of ``n`` channels each; the final
        one of a layer carries the teacher's bias, batch-norm (cut to ``final['out']``) and ReLU."""
        if len(nodes) == 1 and final is None:
            return nodes[0]
        inp = self._concat(f"{hint}_in", [Piece(r, n, 0) for r in nodes])
        weight = Weight("identity_sum", None, {"channels": n, "operands": len(nodes),
                                               "linear": kind == "linear"})
        final = final or {}
        return self._mac_step(kind, hint, inp, n * len(nodes), [0, n], [[0, n * len(nodes)]],
                              weight=weight, bias=final.get("bias"), bn=final.get("bn"),
                              relu=final.get("relu", False), quant=quant, role="sum",
                              param_out=final.get("out"))

    def merge(self, name: str, main: Act, shortcut: Act, *, quant: str) -> Act:
        """Arch-Net's residual: concat(main, shortcut) + a 3x3 conv (ReLU, new batch-norm) whose
        kernel starts as the identity sum, so the student starts at the teacher's
        ``relu(main + shortcut)``. Both operands must already share one quantizer."""
        if main.quant != shortcut.quant:
            raise ConversionError(f"{self.name}.{name}: residual operands on different quantizers "
                                  f"{main.quant!r} and {shortcut.quant!r}")
        c = main.channels
        if shortcut.channels != c or shortcut.hw != main.hw:
            raise ConversionError(f"{self.name}.{name}: residual shapes differ: "
                                  f"{c}x{main.hw} vs {shortcut.channels}x{shortcut.hw}")
        weight = Weight("identity_sum", None, {"channels": c, "operands": 2})
        both = Act(main.pieces + tuple(replace(p, start=p.start + c) for p in shortcut.pieces),
                   main.quant, main.hw)
        if 2 * c <= self.limits.conv_in:
            return self.conv(name, both, c, relu=True, quant=quant, weight=weight, bn=NEW_BN,
                             role="merge")
        if [p.size for p in main.pieces] != [p.size for p in shortcut.pieces]:
            raise ConversionError(f"{self.name}.{name}: residual pieces differ "
                                  f"{[p.size for p in main.pieces]} vs "
                                  f"{[p.size for p in shortcut.pieces]}")
        out = []
        for j, (pm, ps) in enumerate(zip(main.pieces, shortcut.pieces, strict=True)):
            inp = self._concat(f"{name}_c{j}_in", [pm, ps])
            cut = [pm.start, pm.start + pm.size]
            step = self._mac_step("conv", f"{name}_c{j}", inp, 2 * pm.size, cut,
                                  [cut, [c + ps.start, c + ps.start + ps.size]], weight=weight,
                                  bias=None, bn=NEW_BN, relu=True, quant=quant, role="merge")
            out.append(Piece(step, pm.size, pm.start))
        return Act(tuple(out), quant, main.hw)

    def sum_pool(self, name: str, x: Act, quant: str) -> Act:
        """Halve the map, averaging 2x2 blocks (a structural stride-2 conv per piece, ReLU: the
        input is non-negative)."""
        weight = Weight("sum_pool", None, {"channels": x.channels})
        out = []
        for j, p in enumerate(x.pieces):
            cut = [p.start, p.start + p.size]
            step = self._mac_step("conv", name if len(x.pieces) == 1 else f"{name}_c{j}", p.ref,
                                  p.size, cut, [cut], weight=weight, bias=None, bn=None,
                                  relu=True, quant=quant, stride=2, role="structural")
            out.append(Piece(step, p.size, p.start))
        return Act(tuple(out), quant, _conv_hw(x.hw, 2))

    def repiece(self, name: str, x: Act, limit: int) -> Act:
        """Cut pieces wider than ``limit`` into smaller ones: the chips have no slice op, so an
        identity 3x3 conv (centre tap 1, ReLU: the input is non-negative) per output piece, on
        the input's own grid (weights 1 exact, multiplier 1: lossless). Others pass through."""
        out = []
        for j, p in enumerate(x.pieces):
            if p.size <= limit:
                out.append(p)
                continue
            cut_in = [p.start, p.start + p.size]
            weight = Weight("identity_sum", None, {"channels": x.channels, "operands": 1})
            for k, (o0, n) in enumerate(_chunks(p.size, limit)):
                o0 += p.start
                step = self._mac_step("conv", f"{name}_c{j}_{k}", p.ref, p.size, [o0, o0 + n],
                                      [cut_in], weight=weight, bias=None, bn=None, relu=True,
                                      quant=x.quant, role="structural")
                out.append(Piece(step, n, o0))
        return Act(tuple(out), x.quant, x.hw)

    def maxpool(self, name: str, x: Act) -> Act:
        out = []
        for j, p in enumerate(x.pieces):
            step = self._unique(name if len(x.pieces) == 1 else f"{name}_c{j}")
            self.steps.append({"name": step, "kind": "maxpool", "inputs": [p.ref], "kernel": 2})
            out.append(Piece(step, p.size, p.start))
        return Act(tuple(out), x.quant, (x.hw[0] // 2, x.hw[1] // 2))

    def global_avgpool(self, name: str, x: Act) -> Act:
        out = []
        for j, p in enumerate(x.pieces):
            step = self._unique(name if len(x.pieces) == 1 else f"{name}_c{j}")
            self.steps.append({"name": step, "kind": "global_avgpool", "inputs": [p.ref]})
            out.append(Piece(step, p.size, p.start))
        return Act(tuple(out), x.quant, (1, 1))

    def _flatten(self, hint: str, pieces) -> str:
        inp = self._concat(f"{hint}_in", pieces)
        name = self._unique(hint)
        self.steps.append({"name": name, "kind": "flatten", "inputs": [inp]})
        return name

    def linear(self, name: str, x: Act, out_features: int, *, relu: bool, quant: str,
               weight: Weight, bias: str | None = None) -> Act:
        """A fully connected layer over ``x`` (a map is flattened channel-major, as
        ``torch.flatten`` does), split to the chip's feature limits like ``conv``."""
        lim = self.limits
        per = x.hw[0] * x.hw[1] if x.hw is not None else 1
        features = x.channels * per
        if features <= lim.fc_in:
            flat = self._flatten(f"{name}_flat", x.pieces) if x.hw is not None else \
                self._concat(f"{name}_in", x.pieces)
            out = []
            chunks = _chunks(out_features, lim.fc_out)
            for j, (o0, n) in enumerate(chunks):
                step = self._mac_step("linear", name if len(chunks) == 1 else f"{name}_c{j}", flat,
                                      features, [o0, o0 + n], x.ranges(per), weight=weight,
                                      bias=bias, bn=None, relu=relu, quant=quant, role="teacher")
                out.append(Piece(step, n, o0))
            return Act(tuple(out), quant, None)
        if any(p.size * per > lim.fc_in for p in x.pieces):
            raise ConversionError(f"{self.name}.{name}: a piece of {x.pieces[0].size} channels x "
                                  f"{per} positions exceeds ops.fully_connected.max_input_features "
                                  f"{lim.fc_in}; reduce the map first")
        groups = _group(x.pieces, lim.fc_in, per)
        chunk = min(lim.fc_out, lim.fc_in // 2)
        if chunk < 1:
            raise ConversionError(f"{self.name}.{name}: max_input_features {lim.fc_in} too small "
                                  f"to sum partial fully connected layers")
        partial_q = self.plan.quantizer(f"{self.name}_{name}_partial", self.a_bits, True)
        inputs = [self._flatten(f"{name}_g{g}_flat", grp) if x.hw is not None else
                  self._concat(f"{name}_g{g}_in", grp) for g, grp in enumerate(groups)]
        out = []
        for j, (o0, n) in enumerate(_chunks(out_features, chunk)):
            cut = [o0, o0 + n]
            nodes = [self._mac_step("linear", f"{name}_c{j}_g{g}", inp, sum(p.size for p in grp) * per,
                                    cut, _ranges(grp, per), weight=weight, bias=None, bn=None,
                                    relu=False, quant=partial_q, role="partial")
                     for g, (inp, grp) in enumerate(zip(inputs, groups, strict=True))]
            fan_in = lim.fc_in // n
            level = 0
            while len(nodes) > fan_in:
                nodes = [self._sum(f"{name}_c{j}_s{level}_{i}", nodes[i:i + fan_in], n, partial_q,
                                   kind="linear") for i in range(0, len(nodes), fan_in)]
                level += 1
            step = self._sum(f"{name}_c{j}", nodes, n, quant, kind="linear",
                             final=dict(bias=bias, bn=None, relu=relu, out=cut))
            out.append(Piece(step, n, o0))
        return Act(tuple(out), quant, None)

    def joined(self, name: str, x: Act) -> Act:
        """``x`` as a single piece (a concat of its pieces, if more than one)."""
        if len(x.pieces) == 1:
            return x
        return Act((Piece(self._concat(name, x.pieces), x.channels, 0),), x.quant, x.hw)

    def finish(self, y: Act) -> Act:
        """Close the block with output ``y``; returns it as the next block's input."""
        self.plan.blocks.append({
            "name": self.name, "tap": self.tap, "w_bits": self.w_bits, "a_bits": self.a_bits,
            "inputs": self.in_sizes, "input_quant": self.input_quant, "steps": self.steps,
            "outputs": [p.ref for p in y.pieces]})
        return y


def _conv_hw(hw, stride: int):
    return ((hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1)


def _chunks(channels: int, limit: int) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in piece_sizes(channels, limit):
        out.append((start, n))
        start += n
    return out


def _group(pieces, limit: int, per: int = 1) -> list[list[Piece]]:
    """Consecutive pieces in groups of at most ``limit`` channels (x ``per`` features)."""
    groups: list[list[Piece]] = [[]]
    for p in pieces:
        if groups[-1] and (sum(q.size for q in groups[-1]) + p.size) * per > limit:
            groups.append([])
        groups[-1].append(p)
    return groups
