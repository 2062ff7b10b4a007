"""Lowering pass: a torchvision-style ResNet -> an Arch-Net student a chip runs without fallback.

Passes are pure and proven (ANCHORS style rule 8): ``convert_resnet`` reads the teacher (its
modules and ``state_dict``; no hooks, no mode change, nothing written) and returns a new student;
the tests prove each replacement equivalent in float and assert the replaced op is gone.

What the pass eliminates, and how (each exact in float unless said otherwise):

- **k x k stem** (7x7 stride 2 in ResNet) -> 3x3 convs by an exact factorisation: a first 3x3
  layer makes *shift channels* (each input channel moved by every offset of a 3x3 window:
  9 x C_in channels of 0/1 weights), and the last 3x3 layer applies the teacher's kernel to them,
  each of its k x k offsets written as (shift offset) + (tap) * (grid); see
  ``transfer.split_offset`` for why zero padding stays exact. A stride-2 stem of kernel 5 or 7
  needs two 3x3 convs (the first at stride 2); a stride-1 stem of kernel k needs k // 2. The shift
  layer writes 8-bit unsigned activations on the image's own grid (step 1/255): it is lossless.
  (Arch-Net's own stem is three free 3x3 convs; this one starts as the teacher's.)
- **stem max-pool** 3x3/2 (padding 1) -> the chip's 2x2/2 max-pool: the one approximation of the
  pass (same output size on even maps; each 2x2 window is the lower-right part of the teacher's
  3x3 window). A 2x2/2 teacher pool is kept exactly.
- **1x1 convs** (Bottleneck conv1/conv3, downsample) -> 3x3 convs with the 1x1 weights in the
  centre tap (Arch-Net's ``get_student_model``; zeros, not 1e-10, elsewhere: LSQ's step is
  initialised from the non-zero taps).
- **residual add** -> concat + 3x3 ``merge`` conv (Arch-Net's ``QuantizeBasicBlockV1``) with a
  new batch-norm, initialised to the identity sum: relu(main + shortcut). The two concat operands
  share one *signed* quantizer: the block input's where the shortcut is the identity (so the
  previous block writes its output on a signed grid, ReLU-clamped), a new one where it is a
  downsample conv.
- **global average pool + fc** -> fully connected over the flattened final map with the teacher's
  fc weights divided by H*W and replicated per position. Where the flattened map exceeds the
  chip's ``max_input_features`` (K210: 1024), 2x2 averaging convs (stride-2 3x3 convs with four
  1/4 taps, per channel) first halve the map, and the fc weights are scaled by 4 per halving: still
  exact. With ``keep_global_pool=True`` and a chip that runs ``global_avgpool2d``, the pool stays
  (then fc over C features).
- **wide layers** -> split to ``ops.conv2d.max_input_channels / max_output_channels`` (see
  ``archnet.lowering.plan`` for the output-split and the input-split schemes).

Anything else in the teacher (a GELU, a 5x5 depthwise conv, a block that is not BasicBlock or
Bottleneck, an unknown top-level module) is a ``ConversionError`` naming the module path and what
is supported. A stem map that is odd before a 3x3/2 max-pool is one too: the chip's 2x2 pool
would make a map one pixel smaller than the teacher's, so the features could not be compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from archnet.errors import ConversionError
from archnet.lowering.calibrate import init_weight_quantizers
from archnet.lowering.plan import Act, StudentPlan, TeacherBn, Weight
from archnet.lowering.transfer import TransferRow, apply_transfers
from archnet.student import ArchNetStudent, build_student
from simulator.profiles import ChipProfile, load_profile

BLOCK_CHILDREN = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "downsample"}
TOP_CHILDREN = {"conv1", "bn1", "relu", "maxpool", "avgpool", "fc"}
_BITS = re.compile(r"\s*(\d+)\s*w\s*(\d+)\s*a\s*", re.IGNORECASE)
SHIFT_STEP = 1.0 / 255.0   # the image grid (QInput): shift channels copy pixels exactly


# ----------------------------------------------------------------------------- bits

def parse_bits(text) -> tuple[int, int]:
    """'4w4a' -> (4, 4): weight bits, activation bits (a (w, a) pair passes through)."""
    if isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(v, int) for v in text):
        w, a = text
    else:
        m = _BITS.fullmatch(str(text))
        if not m:
            raise ConversionError(f"bits {text!r}: expected '<w>w<a>a' such as '2w4a', '4w4a', "
                                  f"'8w8a'")
        w, a = int(m.group(1)), int(m.group(2))
    if not (2 <= w <= 16 and 2 <= a <= 16):
        raise ConversionError(f"bits {text!r}: widths must lie in 2..16")
    return w, a


def resolve_bits(bits, block_names: Sequence[str], profile: ChipProfile) -> list[tuple[int, int]]:
    """One (w, a) per block from a single spec or a per-block list, checked against the chip.

    A block's MACs read its input (the previous block's a bits; 8 for the image) and its own
    activations, with its weights, so (w, a_prev) and (w, a) must both be run by the chip: some
    ``precision.modes`` entry at least as wide in both (narrow integers run exactly on a wider
    datapath, as ``simulator.constraints.constraint_mac_bit_widths`` decides).
    """
    one_pair = isinstance(bits, (list, tuple)) and len(bits) == 2 and \
        all(isinstance(v, int) for v in bits)
    if isinstance(bits, (list, tuple)) and not one_pair:
        if len(bits) != len(block_names):
            raise ConversionError(f"bits: {len(bits)} entries for {len(block_names)} blocks "
                                  f"({', '.join(block_names)})")
        pairs = [parse_bits(b) for b in bits]
    else:
        pairs = [parse_bits(bits)] * len(block_names)
    modes = ", ".join(f"{m.weight_bits}w{m.activation_bits}a" for m in profile.precision)
    prev_a = 8
    for name, (w, a) in zip(block_names, pairs, strict=True):
        for need in ((w, prev_a), (w, a)):
            if profile.mode_for(*need) is None:
                raise ConversionError(
                    f"bits {w}w{a}a of block {name!r}: its MACs need {need[0]}w{need[1]}a, which "
                    f"profile {profile.name} does not run (precision.modes: {modes})")
        prev_a = a
    return pairs


# ----------------------------------------------------------------------------- teacher checks

def _where(path: str, module: nn.Module, why: str, supported: str) -> ConversionError:
    return ConversionError(f"teacher module {path!r} ({type(module).__name__}): {why}; "
                           f"supported: {supported}")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


CONV_SUPPORTED = ("nn.Conv2d with groups 1, dilation 1, square kernel 1x1 or 3x3 (the stem: any "
                  "odd k, stride 1, or k <= 7 at stride 2), stride 1 or 2, padding k // 2")


def _check_conv(path: str, conv, kernels: tuple[int, ...] = (1, 3), stem: bool = False) -> nn.Conv2d:
    if type(conv) is not nn.Conv2d:  # a subclass may compute something else in forward
        raise _where(path, conv, "not a plain 2-D convolution", CONV_SUPPORTED)
    k, s = _pair(conv.kernel_size), _pair(conv.stride)
    if conv.padding == "same" and s == (1, 1):
        p = (k[0] // 2, k[1] // 2)
    else:
        p = (-1, -1) if isinstance(conv.padding, str) else _pair(conv.padding)
    if conv.groups != 1:
        raise _where(path, conv, f"grouped/depthwise conv (groups {conv.groups})", CONV_SUPPORTED)
    if _pair(conv.dilation) != (1, 1):
        raise _where(path, conv, f"dilation {conv.dilation}", CONV_SUPPORTED)
    if k[0] != k[1] or s[0] != s[1] or s[0] not in (1, 2):
        raise _where(path, conv, f"kernel {k}, stride {s}", CONV_SUPPORTED)
    if stem:
        ok = k[0] % 2 == 1 and (s[0] == 1 or k[0] <= 7)
    else:
        ok = k[0] in kernels
    if not ok:
        raise _where(path, conv, f"kernel {k[0]}x{k[0]} at stride {s[0]}", CONV_SUPPORTED)
    if p != (k[0] // 2, k[0] // 2) or conv.padding_mode != "zeros":
        raise _where(path, conv, f"padding {conv.padding} ({conv.padding_mode})", CONV_SUPPORTED)
    return conv


def _check_bn(path: str, bn, channels: int) -> TeacherBn:
    if type(bn) is not nn.BatchNorm2d or not bn.track_running_stats or bn.num_features != channels:
        raise _where(path, bn, f"not a BatchNorm2d of {channels} channels with running "
                               f"statistics", "nn.BatchNorm2d(track_running_stats=True)")
    return TeacherBn(path, bn.affine, float(bn.eps))


def _check_relu(path: str, relu) -> None:
    if type(relu) is not nn.ReLU:
        raise _where(path, relu, "not a ReLU", "nn.ReLU")


@dataclass(frozen=True)
class _Conv:
    path: str
    module: nn.Conv2d
    bn: TeacherBn

    @property
    def weight(self) -> Weight:
        k = self.module.kernel_size[0]
        return Weight("centre_tap" if k == 1 else "copy", f"{self.path}.weight")

    @property
    def bias(self) -> str | None:
        return None if self.module.bias is None else f"{self.path}.bias"

    @property
    def stride(self) -> int:
        return self.module.stride[0]

    @property
    def out_channels(self) -> int:
        return self.module.out_channels


@dataclass(frozen=True)
class _Block:
    path: str
    convs: tuple[_Conv, ...]         # main branch, in order
    downsample: _Conv | None
    in_channels: int
    out_channels: int
    stride: int


def _conv_bn(parent: str, block: nn.Module, conv: str, bn: str, kernels=(1, 3)) -> _Conv:
    c = _check_conv(f"{parent}.{conv}", getattr(block, conv), kernels)
    return _Conv(f"{parent}.{conv}", c, _check_bn(f"{parent}.{bn}", getattr(block, bn), c.out_channels))


def _inspect_block(path: str, block: nn.Module, in_channels: int) -> _Block:
    kind = type(block).__name__
    supported = "BasicBlock or Bottleneck (torchvision structure: conv1, bn1, conv2, bn2[, conv3, " \
                "bn3], relu, downsample = Sequential(1x1 conv, BatchNorm2d) or None)"
    children = {n for n, _ in block.named_children()}
    if kind not in ("BasicBlock", "Bottleneck") or not children <= BLOCK_CHILDREN:
        raise _where(path, block, f"unknown block (children {sorted(children)})", supported)
    bottleneck = kind == "Bottleneck"
    need = {"conv1", "bn1", "conv2", "bn2", "relu"} | ({"conv3", "bn3"} if bottleneck else set())
    if not need <= children or (kind == "BasicBlock" and children & {"conv3", "bn3"}):
        raise _where(path, block, f"children {sorted(children)} do not make a {kind}", supported)
    _check_relu(f"{path}.relu", block.relu)
    names = [("conv1", "bn1"), ("conv2", "bn2")] + ([("conv3", "bn3")] if bottleneck else [])
    convs = tuple(_conv_bn(path, block, c, b, (1, 3) if bottleneck else (3,)) for c, b in names)
    if convs[0].module.in_channels != in_channels:
        raise _where(f"{path}.conv1", convs[0].module, f"{convs[0].module.in_channels} input "
                     f"channels after a {in_channels}-channel map", "channel counts that chain")
    for a, b in zip(convs, convs[1:]):
        if b.module.in_channels != a.out_channels:
            raise _where(b.path, b.module, "input channels do not match the previous conv",
                         "channel counts that chain")
    stride = 1
    for c in convs:
        stride *= c.stride
    if stride not in (1, 2):
        raise _where(path, block, f"total stride {stride}", "a block stride of 1 or 2")
    ds = getattr(block, "downsample", None)
    down = None
    if ds is not None:
        ok = isinstance(ds, nn.Sequential) and len(ds) == 2
        if not ok:
            raise _where(f"{path}.downsample", ds, "not Sequential(conv, BatchNorm2d)",
                         "Sequential(1x1 or 3x3 conv, BatchNorm2d)")
        conv = _check_conv(f"{path}.downsample.0", ds[0], (1, 3))
        down = _Conv(f"{path}.downsample.0", conv,
                     _check_bn(f"{path}.downsample.1", ds[1], conv.out_channels))
        if conv.stride[0] != stride or conv.in_channels != in_channels \
                or conv.out_channels != convs[-1].out_channels:
            raise _where(f"{path}.downsample.0", conv, "shape does not match the main branch",
                         "a downsample to the main branch's channels and stride")
    elif stride != 1 or in_channels != convs[-1].out_channels:
        raise _where(path, block, "identity shortcut across a change of shape",
                     "a downsample wherever stride or channels change")
    return _Block(path, convs, down, in_channels, convs[-1].out_channels, stride)


@dataclass(frozen=True)
class _Teacher:
    stem: _Conv
    pool: str | None          # "3x3" (approximated) | "2x2" (exact) | None
    stem_tap: str             # the teacher module whose output the stem imitates
    stages: tuple[str, ...]
    blocks: tuple[_Block, ...]
    fc: nn.Linear


def inspect_resnet(teacher: nn.Module) -> _Teacher:
    """Check the teacher is a ResNet this pass converts; ``ConversionError`` naming what is not."""
    children = dict(teacher.named_children())
    stages = []
    i = 1
    while f"layer{i}" in children:
        stages.append(f"layer{i}")
        i += 1
    for name, m in children.items():
        if name not in TOP_CHILDREN and name not in stages:
            raise _where(name, m, "not part of a torchvision ResNet",
                         f"children {sorted(TOP_CHILDREN)} and layer1..layerN")
    for need in ("conv1", "bn1", "layer1", "avgpool", "fc"):
        if need not in children:
            raise ConversionError(f"teacher has no {need!r}: not a torchvision-style ResNet "
                                  f"(needs conv1, bn1, relu, maxpool, layer1.., avgpool, fc)")
    stem_conv = _check_conv("conv1", teacher.conv1, stem=True)
    stem = _Conv("conv1", stem_conv, _check_bn("bn1", teacher.bn1, stem_conv.out_channels))
    if "relu" in children:
        _check_relu("relu", teacher.relu)
    pool = None
    mp = children.get("maxpool")
    stem_tap = "maxpool" if mp is not None else "relu" if "relu" in children else "bn1"
    if mp is not None and type(mp) is not nn.Identity:
        if type(mp) is not nn.MaxPool2d or mp.ceil_mode or _pair(mp.dilation) != (1, 1):
            raise _where("maxpool", mp, "not a plain max-pool",
                         "nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, 2) or nn.Identity")
        k, s, p = _pair(mp.kernel_size), _pair(mp.stride), _pair(mp.padding)
        if (k, s, p) == ((3, 3), (2, 2), (1, 1)):
            pool = "3x3"
        elif (k, s, p) == ((2, 2), (2, 2), (0, 0)):
            pool = "2x2"
        else:
            raise _where("maxpool", mp, f"kernel {k} stride {s} padding {p}",
                         "nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, 2) or nn.Identity")
    blocks = []
    channels = stem_conv.out_channels
    for stage in stages:
        seq = children[stage]
        if not isinstance(seq, nn.Sequential):
            raise _where(stage, seq, "not an nn.Sequential of blocks", "nn.Sequential of blocks")
        for j, block in enumerate(seq):
            b = _inspect_block(f"{stage}.{j}", block, channels)
            blocks.append(b)
            channels = b.out_channels
    gap = teacher.avgpool
    if type(gap) is not nn.AdaptiveAvgPool2d or _pair(gap.output_size) != (1, 1):
        raise _where("avgpool", gap, "not a global average pool", "nn.AdaptiveAvgPool2d(1)")
    fc = teacher.fc
    if type(fc) is not nn.Linear or fc.in_features != channels:
        raise _where("fc", fc, f"not an nn.Linear over {channels} features",
                     f"nn.Linear({channels}, classes)")
    return _Teacher(stem, pool, stem_tap, tuple(stages), tuple(blocks), fc)


# ----------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class ResnetPlan:
    config: dict                      # the student's architecture (JSON-able)
    table: tuple[TransferRow, ...]    # where each student tensor comes from


def _block_names(t: _Teacher) -> list[str]:
    return ["stem"] + [b.path for b in t.blocks] + ["head"]


def _plan_stem(plan: StudentPlan, t: _Teacher, bits, out_signed: bool, name: str) -> Act:
    w, a = bits
    blk = plan.block(name, t.stem_tap, w, a, plan.image())
    conv = t.stem.module
    k, stride, c_in = conv.kernel_size[0], conv.stride[0], conv.in_channels
    r = k // 2
    out_q = plan.quantizer("stem_out", a, out_signed)
    x = blk.input
    if r >= 2:
        shift_q = plan.quantizer("stem_shift", 8, False, step=SHIFT_STEP)
        layers = [(1, 2)] if stride == 2 else [(t_, 1) for t_ in range(1, r)]
        # stride 2: one stride-2 shift layer (reach 1), the last layer taps on a grid 2 apart;
        # stride 1: shift layers of reach 1 .. r-1, the last layer taps on the unit grid.
        reach = 0
        for i, (out_reach, _) in enumerate(layers):
            s = stride if i == 0 else 1
            x = blk.conv(f"shift{i + 1}", x, (2 * out_reach + 1) ** 2 * c_in, stride=s, relu=True,
                         quant=shift_q, role="structural",
                         weight=Weight("shift", None, {"c_in": c_in, "in_reach": reach,
                                                       "out_reach": out_reach, "grid": 1}))
            reach = out_reach
        grid = 2 if stride == 2 else 1
        x = blk.conv("conv", x, conv.out_channels, relu=True, quant=out_q, bn=t.stem.bn,
                     bias=t.stem.bias, weight=Weight("stem_kernel", "conv1.weight",
                                                     {"c_in": c_in, "in_reach": reach, "grid": grid}))
    else:
        x = blk.conv("conv", x, conv.out_channels, stride=stride, relu=True, quant=out_q,
                     bn=t.stem.bn, bias=t.stem.bias, weight=t.stem.weight)
    if t.pool is not None:
        h, w_ = x.hw
        if t.pool == "3x3" and (h % 2 or w_ % 2):
            raise ConversionError(
                f"teacher 'maxpool' (3x3/2, padding 1) on a {h}x{w_} stem map gives "
                f"{(h + 1) // 2}x{(w_ + 1) // 2}; the chip's 2x2/2 max-pool gives {h // 2}x{w_ // 2}; "
                f"choose an input size whose stem map is even")
        x = blk.maxpool("pool", x)
    return blk.finish(x)


def _plan_block(plan: StudentPlan, b: _Block, bits, out_signed: bool, x: Act) -> Act:
    w, a = bits
    blk = plan.block(b.path, b.path, w, a, x)
    x = blk.input
    main_q = x.quant if b.downsample is None else plan.quantizer(f"{b.path}_sum", a, True)
    h = x
    for i, c in enumerate(b.convs):
        last = i == len(b.convs) - 1
        leaf = c.path.rsplit(".", 1)[1]
        q = main_q if last else plan.quantizer(f"{b.path}_{leaf}", a, False)
        h = blk.conv(leaf, h, c.out_channels, stride=c.stride, relu=not last, quant=q,
                     weight=c.weight, bias=c.bias, bn=c.bn)
    if b.downsample is None:
        shortcut = x
    else:
        d = b.downsample
        shortcut = blk.conv("downsample", x, d.out_channels, stride=d.stride, relu=False,
                            quant=main_q, weight=d.weight, bias=d.bias, bn=d.bn)
    out_q = plan.quantizer(f"{b.path}_out", a, out_signed)
    return blk.finish(blk.merge("merge", h, shortcut, quant=out_q))


def _plan_head(plan: StudentPlan, t: _Teacher, bits, x: Act, keep_global_pool: bool,
               max_fc_features: int | None) -> None:
    w, a = bits
    blk = plan.block("head", "fc", w, a, x)
    x = blk.input
    lim = plan.limits
    logits_q = plan.quantizer("logits", max(8, a), True)
    h0, w0 = x.hw
    classes = t.fc.out_features
    bias = "fc.bias" if t.fc.bias is not None else None
    if keep_global_pool and lim.global_avgpool and h0 <= lim.global_avgpool_hw[0] \
            and w0 <= lim.global_avgpool_hw[1]:
        x = blk.global_avgpool("pool", x)
        weight = Weight("fc_spatial", "fc.weight", {"positions": 1, "scale": 1.0})
    else:
        limit = min(lim.fc_in, max_fc_features or lim.fc_in)
        pools = 0
        while x.channels * x.hw[0] * x.hw[1] > limit and x.hw != (1, 1):
            x = blk.sum_pool(f"pool{pools + 1}", x, plan.quantizer(f"head_pool{pools + 1}", a, False))
            pools += 1
        hw = x.hw[0] * x.hw[1]
        weight = Weight("fc_spatial", "fc.weight",
                        {"positions": hw, "scale": 4.0 ** pools / (h0 * w0)})
    if x.channels * x.hw[0] * x.hw[1] > lim.fc_in:   # the fc's inputs will be split: pieces
        x = blk.repiece("split", x, max(1, lim.fc_in // (x.hw[0] * x.hw[1])))  # must fit it
    y = blk.linear("fc", x, classes, relu=False, quant=logits_q, weight=weight, bias=bias)
    blk.finish(blk.joined("logits", y))


def plan_resnet(teacher: nn.Module, profile: ChipProfile | str, bits, input_shape: Sequence[int],
                *, keep_global_pool: bool = False, max_fc_features: int | None = None
                ) -> ResnetPlan:
    """The student config and transfer table for ``teacher`` on ``profile`` (nothing built)."""
    profile = load_profile(profile) if isinstance(profile, str) else profile
    shape = tuple(int(d) for d in input_shape)
    shape = shape[1:] if len(shape) == 4 else shape
    if len(shape) != 3:
        raise ConversionError(f"input shape {tuple(input_shape)}: expected (C, H, W) or (N, C, H, W)")
    t = inspect_resnet(teacher)
    if shape[0] != t.stem.module.in_channels:
        raise ConversionError(f"input shape {shape} has {shape[0]} channels; teacher conv1 takes "
                              f"{t.stem.module.in_channels}")
    names = _block_names(t)
    pairs = resolve_bits(bits, names, profile)
    plan = StudentPlan(profile, shape, {
        "teacher": "resnet", "profile": profile.name,
        "bits": [f"{w}w{a}a" for w, a in pairs], "keep_global_pool": keep_global_pool,
        "max_fc_features": max_fc_features, "maxpool": t.pool})
    # a block output feeding an identity shortcut shares its (signed) grid with that sum
    signed = [b.downsample is None for b in t.blocks] + [False]
    x = _plan_stem(plan, t, pairs[0], signed[0], "stem")
    for i, b in enumerate(t.blocks):
        x = _plan_block(plan, b, pairs[i + 1], signed[i + 1], x)
    _plan_head(plan, t, pairs[-1], x, keep_global_pool, max_fc_features)
    return ResnetPlan(plan.config(), tuple(plan.rows))


def convert_resnet(teacher: nn.Module, profile: ChipProfile | str, bits,
                   input_shape: Sequence[int], *, keep_global_pool: bool = False,
                   max_fc_features: int | None = None) -> ArchNetStudent:
    """An Arch-Net student of ``teacher`` for ``profile``, initialised from the teacher.

    ``bits``: one '<w>w<a>a' for every block or a list with one per block (stem, each residual
    block, head); ``input_shape``: (C, H, W) or (N, C, H, W) of the images the student is built
    for (its head is sized for that map). ``keep_global_pool``: keep ``global_avgpool2d`` where
    the chip runs it (default: replace it, Arch-Net's op set). ``max_fc_features``: halve the
    final map with 2x2 averaging convs until the fc reads at most this many features (default:
    only as far as ``ops.fully_connected.max_input_features`` demands; note an fc over a 7x7x512
    map has 25M weights).

    Weight quantizer steps are initialised from the transferred weights; activation quantizers
    initialise on the first quantized forward (LSQ); ``calibrate_batchnorm`` sets the statistics
    of the new (merge) batch-norms. The teacher is only read. ``assert_deployable`` proves the
    result runs on the chip.
    """
    plan = plan_resnet(teacher, profile, bits, input_shape, keep_global_pool=keep_global_pool,
                       max_fc_features=max_fc_features)
    student = build_student(plan.config)
    with torch.no_grad():
        state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    apply_transfers(state, student, plan.table)
    init_weight_quantizers(student)
    return student.eval()
