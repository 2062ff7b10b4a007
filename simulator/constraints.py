"""Floor 3: the op-set rules that decide which nodes run on the chip and which on the host.

Each rule is one ``constraint_*`` function whose docstring *is* the rule (as in Vela's
``tflite_supported_operators.py``); ``docs/SUPPORTED_OPS.md`` is generated from them by
``python -m simulator.constraints``. A rule returns None when the node passes, else one reason
that names the profile field at fault, e.g. ``conv2d kernel 7x7 not in ops.conv2d.kernel_sizes
[[1,1],[3,3]]``. ``check_node`` lists every reason of one node; ``place`` decides the host/NPU
placement of a whole Program, adding the program-level rules (boundary ops, sticky fallback).

Decisions recorded here:
- Float tensors of graphs imported for estimation (``program.executable`` False) are taken as
  quantized to the profile's default widths; being float is never a reason to fall back.
- ``fallback`` nodes (ONNX ops with no IR equivalent) always run on the host.
- ``quantize`` of a graph input and ``dequantize`` of a graph output are the host feeding and
  reading the NPU: they run on the host but are not fallbacks (every integer deployment has them).
  Inside the graph they are fallbacks: the float tensor between them lives on the host.
- ``reshape`` and ``flatten`` only relabel a tensor; ``transpose`` moves data. Each is on the NPU
  when the profile marks it supported.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from simulator.contract import IntType
from simulator.ir import MAC_OPS, Node, OpKind, Program, TensorInfo
from simulator.ir.ops import reduced_axes
from simulator.profiles import Broadcast, ChipProfile, OpLimits, list_profiles, load_profile

HOST_ONLY = frozenset({OpKind.FALLBACK, OpKind.QUANTIZE, OpKind.DEQUANTIZE})
WINDOW_OPS = frozenset({OpKind.CONV2D, OpKind.MAXPOOL2D, OpKind.AVGPOOL2D})
DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "SUPPORTED_OPS.md"


# ----------------------------------------------------------------------------- node view

@dataclass(frozen=True)
class NodeView:
    """What the rules (and the cost model) read of a node: shapes, attributes and the integer
    widths it runs at, float tensors taken at the profile's default widths."""

    program: Program
    node: Node
    inputs: tuple[TensorInfo, ...]
    output: TensorInfo
    weight_bits: int | None      # MAC ops only
    activation_bits: int

    @property
    def kind(self) -> OpKind:
        return self.node.op

    @property
    def attrs(self) -> dict:
        return self.node.attrs

    @property
    def kernel(self) -> tuple[int, int]:
        if self.kind is OpKind.CONV2D:
            return tuple(self.inputs[1].shape[2:4])
        return tuple(self.attrs["kernel"])

    @property
    def is_depthwise(self) -> bool:
        groups = self.attrs.get("groups", 1)
        return self.kind is OpKind.CONV2D and groups > 1 and groups == self.inputs[0].shape[1]


def _bits(t: TensorInfo, default: int) -> int:
    return t.dtype.bits if isinstance(t.dtype, IntType) else default


def view(program: Program, node: Node, profile: ChipProfile) -> NodeView:
    ins = tuple(program.tensors[i] for i in node.inputs)
    out = program.tensors[node.outputs[0]]
    weight_bits = None
    if node.op in MAC_OPS:
        weight_bits = _bits(ins[1], profile.default_weight_bits)
        act = _bits(ins[0], profile.default_activation_bits)
    elif node.op in (OpKind.REQUANTIZE, OpKind.QUANTIZE):  # input is an accumulator or float
        act = _bits(out, profile.default_activation_bits)
    elif ins:
        act = _bits(ins[0], profile.default_activation_bits)
    else:
        act = _bits(out, profile.default_activation_bits)
    return NodeView(program, node, ins, out, weight_bits, act)


# ----------------------------------------------------------------------------- rules

Rule = Callable[[NodeView, ChipProfile], "str | None"]
RULES: list[tuple[frozenset[OpKind], Rule]] = []


def _rule(*kinds: OpKind):
    def register(fn: Rule) -> Rule:
        RULES.append((frozenset(kinds), fn))
        return fn
    return register


def _pairs(pairs) -> str:
    return "[" + ",".join(f"[{a},{b}]" for a, b in pairs) + "]"


def _limits(v: NodeView, profile: ChipProfile) -> OpLimits:
    return profile.op(v.kind.value)


@_rule(OpKind.FALLBACK)
def constraint_fallback_node(v: NodeView, profile: ChipProfile) -> str | None:
    """A fallback node (an ONNX op with no NPU equivalent, named by its op_type) always runs on
    the host, whatever the chip."""
    return f"no NPU op for ONNX {v.attrs['op_type']}"


@_rule(OpKind.QUANTIZE)
def constraint_quantize_at_graph_input(v: NodeView, profile: ChipProfile) -> str | None:
    """quantize runs on the host. On a graph input it is the host feeding the NPU and not a
    fallback; anywhere else the float tensor it reads lives on the host, so it is one."""
    if v.node.inputs[0] in v.program.inputs:
        return None
    return f"quantize of {v.node.inputs[0]!r} inside the graph (not a graph input) runs on the host"


@_rule(OpKind.DEQUANTIZE)
def constraint_dequantize_at_graph_output(v: NodeView, profile: ChipProfile) -> str | None:
    """dequantize runs on the host. On a graph output it is the host reading the NPU's result
    and not a fallback; anywhere else the float tensor it makes lives on the host, so it is one."""
    if v.node.outputs[0] in v.program.outputs:
        return None
    return (f"dequantize to {v.node.outputs[0]!r} inside the graph (not a graph output) "
            f"runs on the host")


@_rule(*(k for k in OpKind if k not in HOST_ONLY))
def constraint_op_supported(v: NodeView, profile: ChipProfile) -> str | None:
    """The op kind must be marked supported in ``ops.<kind>.supported``."""
    if _limits(v, profile).supported:
        return None
    return f"{v.kind.value} not supported (ops.{v.kind.value}.supported = false)"


@_rule(*MAC_OPS)
def constraint_mac_bit_widths(v: NodeView, profile: ChipProfile) -> str | None:
    """A MAC op's (weight_bits, activation_bits) must be covered by an entry of
    ``precision.modes`` at least as wide in both (narrower integers run exactly, and at the same
    speed, on a wider datapath)."""
    if profile.mode_for(v.weight_bits, v.activation_bits) is not None:
        return None
    modes = ", ".join(m.label for m in profile.precision)
    return (f"{v.kind.value} w{v.weight_bits}a{v.activation_bits} not covered by "
            f"precision.modes [{modes}]")


@_rule(*(k for k in OpKind if k not in HOST_ONLY and k not in MAC_OPS))
def constraint_activation_bits(v: NodeView, profile: ChipProfile) -> str | None:
    """A non-MAC op's integer width must not exceed the widest ``activation_bits`` of
    ``precision.modes``."""
    if v.activation_bits <= profile.max_activation_bits:
        return None
    return (f"{v.kind.value} on {v.activation_bits}-bit data exceeds the widest "
            f"precision.modes activation_bits {profile.max_activation_bits}")


@_rule(*WINDOW_OPS)
def constraint_kernel_size(v: NodeView, profile: ChipProfile) -> str | None:
    """The kernel [height, width] must be one of ``ops.<kind>.kernel_sizes`` unless that is
    "any"."""
    allowed = _limits(v, profile).kernel_sizes
    if allowed is None or v.kernel in allowed:
        return None
    kh, kw = v.kernel
    return (f"{v.kind.value} kernel {kh}x{kw} not in ops.{v.kind.value}.kernel_sizes "
            f"{_pairs(allowed)}")


@_rule(*WINDOW_OPS)
def constraint_kernel_extent(v: NodeView, profile: ChipProfile) -> str | None:
    """The dilated kernel extent, ``dilation * (k - 1) + 1`` in each axis, must not exceed
    ``ops.<kind>.max_kernel_hw``, for a padded avgpool2d ``ops.avgpool2d.max_padded_kernel_hw``
    (not repeated for a kernel size already outside ``kernel_sizes``)."""
    allowed = _limits(v, profile).kernel_sizes
    if allowed is not None and v.kernel not in allowed:
        return None
    dil = v.attrs.get("dilations", [1, 1])
    extent = tuple(d * (k - 1) + 1 for d, k in zip(dil, v.kernel, strict=True))
    limits, name = _limits(v, profile), "max_kernel_hw"
    limit = limits.max_kernel_hw
    if v.kind is OpKind.AVGPOOL2D and any(v.attrs["pads"]):
        padded = limits.max_padded_kernel_hw
        if padded[0] * padded[1] < limit[0] * limit[1]:
            limit, name = padded, "max_padded_kernel_hw"
    if extent[0] <= limit[0] and extent[1] <= limit[1]:
        return None
    return (f"{v.kind.value} kernel extent {extent[0]}x{extent[1]} exceeds "
            f"ops.{v.kind.value}.{name} {list(limit)}")


@_rule(*WINDOW_OPS)
def constraint_stride(v: NodeView, profile: ChipProfile) -> str | None:
    """The stride [height, width] must be one of ``ops.<kind>.strides`` (unless "any") and
    neither axis may exceed ``ops.<kind>.max_stride``."""
    limits = _limits(v, profile)
    stride = tuple(v.attrs["strides"])
    what, field = f"{v.kind.value} stride {stride[0]}x{stride[1]}", f"ops.{v.kind.value}"
    if limits.strides is not None and stride not in limits.strides:
        return f"{what} not in {field}.strides {_pairs(limits.strides)}"
    if max(stride) > limits.max_stride:
        return f"{what} exceeds {field}.max_stride {limits.max_stride}"
    return None


@_rule(OpKind.CONV2D)
def constraint_conv_dilation(v: NodeView, profile: ChipProfile) -> str | None:
    """Each conv2d dilation must be one of ``ops.conv2d.dilations`` unless that is "any"."""
    allowed = profile.op("conv2d").dilations
    dil = v.attrs["dilations"]
    if allowed is None or all(d in allowed for d in dil):
        return None
    return f"conv2d dilation {dil[0]}x{dil[1]} not in ops.conv2d.dilations {list(allowed)}"


@_rule(*WINDOW_OPS, OpKind.GLOBAL_AVGPOOL2D)
def constraint_input_size(v: NodeView, profile: ChipProfile) -> str | None:
    """The input feature map's [height, width] must not exceed ``ops.<kind>.max_input_hw``."""
    h, w = v.inputs[0].shape[2:4]
    limit = _limits(v, profile).max_input_hw
    if h <= limit[0] and w <= limit[1]:
        return None
    return f"{v.kind.value} input {h}x{w} exceeds ops.{v.kind.value}.max_input_hw {list(limit)}"


@_rule(OpKind.CONV2D)
def constraint_conv_input_channels(v: NodeView, profile: ChipProfile) -> str | None:
    """conv2d input channels must not exceed ``ops.conv2d.max_input_channels`` (larger layers
    must be split into channel groups first)."""
    c, limit = v.inputs[0].shape[1], profile.op("conv2d").max_input_channels
    return None if c <= limit else \
        f"conv2d {c} input channels exceed ops.conv2d.max_input_channels {limit}"


@_rule(OpKind.CONV2D)
def constraint_conv_output_channels(v: NodeView, profile: ChipProfile) -> str | None:
    """conv2d output channels must not exceed ``ops.conv2d.max_output_channels``."""
    c, limit = v.output.shape[1], profile.op("conv2d").max_output_channels
    return None if c <= limit else \
        f"conv2d {c} output channels exceed ops.conv2d.max_output_channels {limit}"


@_rule(OpKind.CONV2D)
def constraint_conv_depthwise(v: NodeView, profile: ChipProfile) -> str | None:
    """A depthwise conv2d (groups equal to the input channels, more than one) needs
    ``ops.conv2d.depthwise = true``."""
    if not v.is_depthwise or profile.op("conv2d").depthwise:
        return None
    return "depthwise conv2d not supported (ops.conv2d.depthwise = false)"


@_rule(OpKind.CONV2D)
def constraint_conv_grouped(v: NodeView, profile: ChipProfile) -> str | None:
    """A grouped conv2d (1 < groups < input channels) needs ``ops.conv2d.grouped = true``."""
    groups = v.attrs["groups"]
    if groups == 1 or v.is_depthwise or profile.op("conv2d").grouped:
        return None
    return f"conv2d with {groups} groups not supported (ops.conv2d.grouped = false)"


@_rule(OpKind.FULLY_CONNECTED)
def constraint_fc_input_features(v: NodeView, profile: ChipProfile) -> str | None:
    """fully_connected input features must not exceed ``ops.fully_connected.max_input_features``."""
    k, limit = v.inputs[0].shape[1], profile.op("fully_connected").max_input_features
    return None if k <= limit else (f"fully_connected {k} input features exceed "
                                    f"ops.fully_connected.max_input_features {limit}")


@_rule(OpKind.FULLY_CONNECTED)
def constraint_fc_output_features(v: NodeView, profile: ChipProfile) -> str | None:
    """fully_connected output features must not exceed
    ``ops.fully_connected.max_output_features``."""
    m, limit = v.output.shape[1], profile.op("fully_connected").max_output_features
    return None if m <= limit else (f"fully_connected {m} output features exceed "
                                    f"ops.fully_connected.max_output_features {limit}")


@_rule(OpKind.MATMUL)
def constraint_matmul_inner_dim(v: NodeView, profile: ChipProfile) -> str | None:
    """matmul's reduced (inner) dimension must not exceed ``ops.matmul.max_inner_dim``."""
    k, limit = v.inputs[0].shape[-1], profile.op("matmul").max_inner_dim
    return None if k <= limit else \
        f"matmul inner dimension {k} exceeds ops.matmul.max_inner_dim {limit}"


@_rule(OpKind.CONCAT)
def constraint_concat_inputs(v: NodeView, profile: ChipProfile) -> str | None:
    """concat may join at most ``ops.concat.max_inputs`` tensors."""
    n, limit = len(v.inputs), profile.op("concat").max_inputs
    return None if n <= limit else f"concat of {n} inputs exceeds ops.concat.max_inputs {limit}"


@_rule(OpKind.LOOKUP_TABLE)
def constraint_lut_input_bits(v: NodeView, profile: ChipProfile) -> str | None:
    """lookup_table input width must not exceed ``ops.lookup_table.max_input_bits`` (a 256-entry
    LUT takes 8-bit inputs); an interpolated table (16-bit input, 513 entries) needs
    ``ops.lookup_table.interpolated = true``."""
    if v.attrs.get("interpolated"):
        return None if profile.op("lookup_table").interpolated else \
            "interpolated 16-bit lookup_table not supported (ops.lookup_table.interpolated = false)"
    limit = profile.op("lookup_table").max_input_bits
    return None if v.activation_bits <= limit else (
        f"lookup_table on {v.activation_bits}-bit input exceeds "
        f"ops.lookup_table.max_input_bits {limit}")


# How a chip whose activation unit lacks a function still runs it, as TFLite's converter writes
# it: hard-sigmoid is an affine requantize and a clamp, hard-swish that times x (a mul), SiLU the
# sigmoid times x. function -> (the table function it needs or None, whether it needs mul).
COMPOSED = {"hardsigmoid": (None, False), "hardswish": (None, True), "silu": ("sigmoid", True)}


def lut_form(function: str | None, profile: ChipProfile) -> str | None:
    """"table" where the activation unit holds ``function``, "composed" where the chip builds
    it from other ops (COMPOSED), None where it cannot run it."""
    allowed = profile.op("lookup_table").functions
    if allowed is None or function in allowed:
        return "table"
    base, needs_mul = COMPOSED.get(function, ("?", False))
    if base != "?" and (base is None or base in allowed) and \
            (not needs_mul or profile.op("mul").supported):
        return "composed"
    return None


@_rule(OpKind.LOOKUP_TABLE)
def constraint_lut_function(v: NodeView, profile: ChipProfile) -> str | None:
    """A lookup_table runs on the chip's activation unit only if ``ops.lookup_table.functions``
    is "any" (a programmable table), lists the function the table holds, or lists what the
    chip composes it from (hardsigmoid: requantize and clamp; hardswish: that and ``mul``;
    silu: sigmoid and ``mul``); a table that names no function needs a programmable one."""
    function = v.attrs.get("function")
    if lut_form(function, profile) is not None:
        return None
    allowed = profile.op("lookup_table").functions
    what = f"lookup_table of {function}" if function else "a lookup_table of no named function"
    return f"{what} not in ops.lookup_table.functions [{', '.join(allowed)}]"


@_rule(OpKind.MUL)
def constraint_mul_operands(v: NodeView, profile: ChipProfile) -> str | None:
    """mul's second operand must be the first's shape or one value per channel or per tensor
    (a squeeze-and-excitation gate), the broadcasts NPUs' elementwise units take; any NumPy
    broadcast where ``ops.mul.broadcast = "any"``."""
    if profile.op("mul").broadcast is Broadcast.ANY:
        return None
    a, b = v.inputs[0].shape, v.inputs[1].shape
    b_full = (1,) * (len(a) - len(b)) + tuple(b)
    per_channel = len(a) == 4 and all(d == 1 for i, d in enumerate(b_full) if i not in (0, 1))
    if b_full == tuple(a) or per_channel or all(d == 1 for d in b_full):
        return None
    return f"mul broadcast of {tuple(b)} to {tuple(a)} is neither elementwise, per channel nor scalar"


@_rule(OpKind.ADD, OpKind.SUB, OpKind.MINIMUM)
def constraint_add_operands(v: NodeView, profile: ChipProfile) -> str | None:
    """add's (sub's, minimum's) second operand must be the first's shape per sample (a constant
    table shared by the batch), one value per channel, or one value: the broadcasts elementwise
    units take; any NumPy broadcast where ``ops.<kind>.broadcast`` is "any"."""
    kind = v.kind.value
    if profile.op(kind).broadcast is Broadcast.ANY:
        return None
    a, b = v.inputs[0].shape, v.inputs[1].shape
    b_full = (1,) * (len(a) - len(b)) + tuple(b)
    per_channel = len(a) == 4 and all(d == 1 for i, d in enumerate(b_full) if i not in (0, 1))
    if b_full[1:] == tuple(a)[1:] or per_channel or all(d == 1 for d in b_full):
        return None
    return (f"{kind} broadcast of {tuple(b)} to {tuple(a)} is neither elementwise, per channel "
            f"nor scalar")


def _reduced(v: NodeView) -> list[int]:
    x = v.inputs[0].shape
    return [x[a] for a in reduced_axes(x, v.attrs["axes"])]


@_rule(OpKind.MEAN)
def constraint_mean_reduced_elements(v: NodeView, profile: ChipProfile) -> str | None:
    """mean may sum at most ``ops.mean.max_reduced_elements`` elements into one output."""
    count, limit = math.prod(_reduced(v)), profile.op("mean").max_reduced_elements
    return None if count <= limit else \
        f"mean over {count} elements exceeds ops.mean.max_reduced_elements {limit}"


@_rule(OpKind.MEAN)
def constraint_mean_axis_length(v: NodeView, profile: ChipProfile) -> str | None:
    """No axis a mean reduces may be longer than ``ops.mean.max_axis_length``."""
    longest, limit = max(_reduced(v)), profile.op("mean").max_axis_length
    return None if longest <= limit else \
        f"mean axis of {longest} exceeds ops.mean.max_axis_length {limit}"


@_rule(OpKind.SOFTMAX)
def constraint_softmax_axis(v: NodeView, profile: ChipProfile) -> str | None:
    """softmax's reduced axis must not be longer than ``ops.softmax.max_axis_length``."""
    n, limit = v.inputs[0].shape[v.attrs["axis"]], profile.op("softmax").max_axis_length
    return None if n <= limit else \
        f"softmax axis of {n} exceeds ops.softmax.max_axis_length {limit}"


# ----------------------------------------------------------------------------- applying rules

def check_node(program: Program, node: Node, profile: ChipProfile) -> list[str]:
    """Every reason ``node`` cannot run on the chip's NPU; an empty list means it can.

    An unsupported op kind stops the checks there: its limits would only repeat the point.
    """
    v = view(program, node, profile)
    reasons = []
    for kinds, rule in RULES:
        if node.op not in kinds:
            continue
        reason = rule(v, profile)
        if reason is not None:
            reasons.append(reason)
            if rule is constraint_op_supported:
                break
    return reasons


def is_boundary(program: Program, node: Node) -> bool:
    """quantize of a graph input or dequantize to a graph output: host work, not a fallback."""
    return (node.op is OpKind.QUANTIZE and node.inputs[0] in program.inputs) or \
        (node.op is OpKind.DEQUANTIZE and node.outputs[0] in program.outputs)


def is_input_lookup(program: Program, node: Node) -> bool:
    """A gather of a constant table's rows by a graph input (an embedding of token ids): where
    the chip has no gather, the host looks the rows up as it writes the input, boundary work
    and not a fallback."""
    table = node.inputs[0]
    constant = program.tensors[table].data is not None or (
        not program.executable and table not in program.inputs and program.producer(table) is None)
    return node.op is OpKind.GATHER and node.inputs[1] in program.inputs and constant


@dataclass(frozen=True)
class Placement:
    """Where one node runs: ``on_host`` with the reasons, or on the NPU (no reasons)."""

    node: str
    on_host: bool
    reasons: tuple[str, ...]
    boundary: bool = False   # host-side quantize/dequantize at the graph edge, not a fallback

    @property
    def fallback_reason(self) -> str | None:
        return "; ".join(self.reasons) if self.reasons else None


def constraint_sticky_fallback(profile: ChipProfile, first_fallback: str) -> str | None:
    """On a chip with ``host.sticky_fallback = true`` (the Edge TPU), every node after the first
    host fallback in the schedule also runs on the host."""
    if not profile.host.sticky_fallback:
        return None
    return (f"after host fallback {first_fallback!r} the rest stays on the host "
            f"(host.sticky_fallback)")


def constraint_epilogue_of_host_op(program: Program, node: Node, host_made: dict[str, str],
                                   uses: dict[str, int]) -> str | None:
    """A requantize or clamp whose input is made by a host fallback and read by nothing else
    runs on the host with it (the epilogue of that op): sending an accumulator back to the NPU
    for one elementwise step costs more than the step."""
    src = node.inputs[0] if node.inputs else None
    if node.op not in (OpKind.REQUANTIZE, OpKind.CLAMP) or src not in host_made or uses[src] != 1:
        return None
    return f"epilogue of host op {host_made[src]!r}"


def place(program: Program, profile: ChipProfile) -> list[Placement]:
    """Host/NPU placement of every node, in schedule order."""
    uses: dict[str, int] = {}
    for node in program.nodes:
        for name in node.inputs:
            uses[name] = uses.get(name, 0) + 1
    out, first_fallback, host_made = [], None, {}
    for node in program.nodes:
        if is_boundary(program, node):
            out.append(Placement(node.name, True, (), boundary=True))
            continue
        reasons = check_node(program, node, profile)
        if reasons and is_input_lookup(program, node):
            out.append(Placement(node.name, True, (), boundary=True))
            continue
        if not reasons:
            epilogue = constraint_epilogue_of_host_op(program, node, host_made, uses)
            reasons = [epilogue] if epilogue else []
        if not reasons and first_fallback is not None:
            sticky = constraint_sticky_fallback(profile, first_fallback)
            reasons = [sticky] if sticky else []
        if reasons:
            first_fallback = first_fallback or node.name
            host_made[node.outputs[0]] = node.name
        out.append(Placement(node.name, bool(reasons), tuple(reasons)))
    return out


# ----------------------------------------------------------------------------- the document

def _cell(profile: ChipProfile, kind: str) -> str:
    lim = profile.op(kind)
    if not lim.supported:
        return "no"
    notes = []
    if lim.kernel_sizes is not None:
        notes.append(",".join(f"{h}x{w}" for h, w in lim.kernel_sizes))
    if lim.strides is not None:
        notes.append("s" + ",".join(f"{h}x{w}" if h != w else str(h) for h, w in lim.strides))
    elif lim.max_stride is not None and lim.max_stride < 65535:
        notes.append(f"s<={lim.max_stride}")
    if lim.max_input_channels is not None and lim.max_input_channels < 65535:
        notes.append(f"<={lim.max_input_channels} ch")
    if lim.max_input_hw is not None and max(lim.max_input_hw) < 65535:
        notes.append(f"<={lim.max_input_hw[0]}x{lim.max_input_hw[1]}")
    if lim.depthwise is False:
        notes.append("no depthwise")
    if lim.max_input_bits is not None:
        notes.append(f"<={lim.max_input_bits}-bit")
    if kind == "lookup_table":
        notes.append("any table" if lim.functions is None else ", ".join(lim.functions))
    return "yes" + (f" ({'; '.join(notes)})" if notes else "")


def supported_ops_markdown(profiles: list[ChipProfile] | None = None) -> str:
    """docs/SUPPORTED_OPS.md: the rules (from the docstrings) and a per-profile support matrix."""
    if profiles is None:
        profiles = [load_profile(name) for name in list_profiles()]
    lines = ["# Supported ops", "",
             "Generated by `python -m simulator.constraints` from the `constraint_*` docstrings in",
             "`simulator/constraints.py` and the profiles in `chip_profiles/`. Do not edit by",
             "hand.",
             "", "A node that fails any rule runs on the host CPU as a fallback, with the reason",
             "naming the profile field. Notes on the decisions behind the rules:", ""]
    notes = __doc__.split("Decisions recorded here:", 1)[1].strip().splitlines()
    lines += [line.strip() if line.startswith("- ") else "  " + line.strip() for line in notes]
    lines += ["", "## Rules", "", "| Rule | Applies to | Rule text |", "| --- | --- | --- |"]
    program_rules = [({OpKind.REQUANTIZE, OpKind.CLAMP}, constraint_epilogue_of_host_op),
                     (frozenset(OpKind), constraint_sticky_fallback)]
    for kinds, rule in RULES + program_rules:
        applies = ", ".join(sorted(k.value for k in kinds)) if len(kinds) < 8 else \
            "every op except " + ", ".join(sorted(k.value for k in OpKind if k not in kinds))
        if rule is constraint_sticky_fallback:
            applies = "the whole schedule"
        text = " ".join(rule.__doc__.split()).replace("|", "\\|")
        lines.append(f"| `{rule.__name__}` | {applies} | {text} |")
    kinds = [k.value for k in OpKind if k not in HOST_ONLY]
    lines += ["", "## Support per profile", "",
              "| op | " + " | ".join(p.name for p in profiles) + " |",
              "| --- |" + " --- |" * len(profiles)]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(_cell(p, kind) for p in profiles) + " |")
    lines.append("| fallback | " + " | ".join("host" for _ in profiles) + " |")
    pairs = [", ".join(f"{m.label} ({m.macs_per_cycle:g})" for m in p.precision) for p in profiles]
    lines += ["", "| bit pairs (MACs/cycle) | " + " | ".join(pairs) + " |",
        "| --- |" + " --- |" * len(profiles),
        "| sticky fallback | " + " | ".join("yes" if p.host.sticky_fallback else "no"
                                            for p in profiles) + " |", ""]
    return "\n".join(lines)


def write_supported_ops(path: str | Path = DOC_PATH) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(supported_ops_markdown())
    return path


if __name__ == "__main__":
    print(f"wrote {write_supported_ops(*sys.argv[1:2])}")
