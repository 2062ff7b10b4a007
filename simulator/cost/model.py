"""``estimate(program, profile)``: the cycles and latency of every op of a Program on a chip.

Per NPU op: ``cycles = array.op_overhead_cycles + max(compute, memory)`` (compute: ``compute.py``;
memory: bytes from ``memory.py`` over ``activation_bytes_per_s / clock_hz`` plus (or, with
``memory.weight_port = "separate"``, overlapped with: the larger of the two) weight bytes over
``weight_bytes_per_s / clock_hz``). Per host op: ``host.py``. Latency = cycles / clock_hz,
summed over the schedule (ops run one after another, as the Program orders them).

Fusion: a requantize, clamp or lookup_table on the NPU whose input is made by a MAC op, an add,
a mul or a pool on the NPU (directly or through an already fused step), and read by nothing else,
costs no cycles of its own (``fused_into`` names the producer, whose bound it reports): the
producer writes the fused chain's final tensor instead of its accumulator, as NPUs apply the
activation in the output stage (TFLite's fused activations, Vela's fused LUT activations). A
fused lookup_table still passes every output through the activation unit, so the producer's
compute is at least the table's own cycles (``compute.lookup_cycles``). reshape/flatten on the NPU are
views and cost nothing either.

Once per inference the host starts the run and reads the result back
(``host.invoke_overhead_s``): ``Estimate.invoke``, in the total but in no op.

Only shapes, dtypes and the profile are read; tensor values never are.
"""

from __future__ import annotations

from collections import Counter

from simulator.constraints import NodeView, Placement, place, view
from simulator.cost.breakdown import CycleCost, Estimate, OpCost
from simulator.cost.compute import element_compute_cycles, mac_compute_cycles, mac_count
from simulator.cost.host import host_flops
from simulator.cost.memory import MemoryState, storage_bits, tensor_bits
from simulator.ir import MAC_OPS, OpKind, Program
from simulator.profiles import ChipProfile, WeightPort

FUSABLE = frozenset({OpKind.REQUANTIZE, OpKind.CLAMP, OpKind.LOOKUP_TABLE})
FUSION_ANCHORS = MAC_OPS | {OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.MINIMUM, OpKind.MAXPOOL2D, OpKind.AVGPOOL2D,
                            OpKind.GLOBAL_AVGPOOL2D, OpKind.MEAN}
VIEWS = frozenset({OpKind.RESHAPE, OpKind.FLATTEN})


def fusion(program: Program,
           placements: dict[str, Placement]) -> tuple[dict[str, str], dict[str, str]]:
    """(fused node -> its anchor, anchor -> the tensor its fused chain ends in)."""
    uses = Counter(name for node in program.nodes for name in node.inputs)
    anchor_of: dict[str, str] = {}     # tensor -> anchor node whose chain made it
    fused, chain_end = {}, {}
    for node in program.nodes:
        if placements[node.name].on_host:
            continue
        out = node.outputs[0]
        if node.op in FUSION_ANCHORS:
            anchor_of[out], chain_end[node.name] = node.name, out
        elif node.op in FUSABLE:
            src = node.inputs[0]
            if src in anchor_of and uses[src] == 1 and src not in program.outputs:
                anchor = anchor_of[src]
                fused[node.name], anchor_of[out], chain_end[anchor] = anchor, anchor, out
    return fused, chain_end


def _detail(v: NodeView) -> str:
    if v.kind is OpKind.CONV2D:
        (kh, kw), (sh, sw) = v.kernel, v.attrs["strides"]
        _, ic, h, w = v.inputs[0].shape
        groups = v.attrs["groups"]
        extra = " dw" if v.is_depthwise else (f" g{groups}" if groups > 1 else "")
        stride = f"s{sh}" if sh == sw else f"s{sh}x{sw}"
        return f"{kh}x{kw}/{stride} {ic}->{v.output.shape[1]} @{h}x{w}{extra}"
    if v.kind in (OpKind.MAXPOOL2D, OpKind.AVGPOOL2D):
        (kh, kw), (sh, _) = v.kernel, v.attrs["strides"]
        return f"{kh}x{kw}/s{sh} @{v.inputs[0].shape[2]}x{v.inputs[0].shape[3]}"
    if v.kind is OpKind.FULLY_CONNECTED:
        return f"{v.inputs[0].shape[1]}->{v.output.shape[1]}"
    if v.kind is OpKind.FALLBACK:
        return f"ONNX {v.attrs['op_type']}"
    return "x".join(str(d) for d in v.output.shape)


def _npu_op(v: NodeView, profile: ChipProfile, mem: MemoryState, out_name: str,
            activation_cycles: float = 0.0) -> OpCost:
    clock = profile.clock_hz
    util, wbits, abits = None, None, storage_bits(v.activation_bits, profile)
    if v.kind in MAC_OPS:
        compute, util = mac_compute_cycles(v, profile)
        mode = profile.mode_for(v.weight_bits, v.activation_bits)
        wbits, abits = mode.weight_bits, mode.activation_bits
    else:
        compute = element_compute_cycles(v, profile)
    compute = max(compute, activation_cycles)  # the output stage runs beside the array
    traffic = mem.npu_op(v, out_name, tensor_bits(v.program.tensors[out_name], profile))
    act = traffic.activation_bytes / (profile.memory.activation_bytes_per_s / clock)
    wgt = traffic.weight_bytes / (profile.memory.weight_bytes_per_s / clock)
    # weights on a port of their own stream while the feature maps move; on one bus they queue
    memory = max(act, wgt) if profile.memory.weight_port is WeightPort.SEPARATE else act + wgt
    overhead = profile.array.op_overhead_cycles
    cycles = overhead + max(compute, memory)
    bound = "overhead" if overhead >= max(compute, memory) else (
        "compute" if compute >= memory else "memory")
    cost = CycleCost(mac_count(v), traffic.activation_bytes, traffic.weight_bytes, compute,
                     memory, overhead, cycles)
    return OpCost(v.node.name, v.kind.value, _detail(v), False, bound, None, wbits, abits, util,
                  cost, clock)


def _host_op(v: NodeView, profile: ChipProfile, mem: MemoryState, placement: Placement,
             handoff: bool, npu_consumes: bool) -> OpCost:
    clock = profile.clock_hz
    moved = mem.host_op(v.node, npu_consumes)
    compute = host_flops(v) / profile.host.flops_per_s * clock
    transfer = moved / profile.host.link_bytes_per_s * clock
    overhead = profile.host.fallback_overhead_s * clock if handoff else 0.0
    cost = CycleCost(mac_count(v), moved, 0.0, compute, transfer, overhead,
                     compute + transfer + overhead)
    return OpCost(v.node.name, v.kind.value, _detail(v), True, "host", placement.fallback_reason,
                  v.weight_bits, v.activation_bits, None, cost, clock)


def estimate(program: Program, profile: ChipProfile) -> Estimate:
    """Cost of every op of ``program`` on ``profile``'s chip, in schedule order."""
    placements = {p.node: p for p in place(program, profile)}
    fused, chain_end = fusion(program, placements)
    mem = MemoryState(program, profile)
    on_npu = {name for name, p in placements.items() if not p.on_host}
    consumers: dict[str, list[str]] = {}
    for node in program.nodes:
        for name in node.inputs:
            consumers.setdefault(name, []).append(node.name)
    fused_tables: dict[str, float] = {}   # anchor -> cycles of its fused activation functions
    for node in program.nodes:
        if node.op is OpKind.LOOKUP_TABLE and node.name in fused:
            anchor = fused[node.name]
            fused_tables[anchor] = fused_tables.get(anchor, 0.0) + \
                element_compute_cycles(view(program, node, profile), profile)
    ops, by_name, last_on_npu = [], {}, False
    for node in program.nodes:
        v = view(program, node, profile)
        p = placements[node.name]
        if p.on_host:
            npu_consumes = any(c in on_npu for c in consumers.get(node.outputs[0], []))
            handoff = last_on_npu and not p.boundary
            ops.append(_host_op(v, profile, mem, p, handoff, npu_consumes))
            by_name[node.name], last_on_npu = ops[-1], False
            continue
        last_on_npu = True
        if node.name in fused:
            anchor = fused[node.name]
            ops.append(OpCost(node.name, node.op.value, f"fused into {anchor}", False,
                              by_name[anchor].bound, None, None, None, None, CycleCost(),
                              profile.clock_hz, fused_into=anchor))
            continue
        if node.op in VIEWS:
            mem.alias(node.outputs[0], node.inputs[0])
            ops.append(OpCost(node.name, node.op.value, "view", False, "overhead", None, None,
                              None, None, CycleCost(), profile.clock_hz))
            continue
        ops.append(_npu_op(v, profile, mem, chain_end.get(node.name, node.outputs[0]),
                           fused_tables.get(node.name, 0)))
        by_name[node.name] = ops[-1]
    invoke = profile.host.invoke_overhead_s * profile.clock_hz
    return Estimate(profile.name, program.name, profile.clock_hz, tuple(ops),
                    CycleCost(overhead_cycles=invoke, cycles=invoke))
