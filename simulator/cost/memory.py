"""Bytes an NPU op moves across the external interfaces, given where its tensors live.

Each activation tensor has a home: the on-chip SRAM, external memory, or the host. The rules:

- Graph inputs start in external memory; graph outputs are written there.
- An op's inputs are read from external memory when that is where they live.
- An op whose feature maps do not fit in ``memory.sram_bytes`` spills: its output is written to
  external memory (where its consumers then read it); otherwise it stays on chip. What must fit
  is ``memory.feature_map_tiling``: "whole" = the whole input(s) plus output; "stripes" = a
  stripe of kernel-height rows of each input plus one output row (a compiler that cascades
  layers, as Vela and the Edge TPU compiler do). The liveness of other tensors (a residual
  branch's skip tensor) is not modelled.
- Parameters (MAC weights and biases, constants of other ops) are held in the persistent
  ``memory.weight_cache_bytes`` when they fit in what is left of it, allocated greedily in
  schedule order (as the Edge TPU compiler fills its cache); else they stream over the weight
  interface once per inference.
- Re-fetch: when neither the input (off chip) nor the streamed weights fit in half the SRAM, the
  layer runs blocked like a GEMM: a block of one operand stays resident in half the SRAM while
  the other streams past it once per block, or (output-stationary) a block of accumulators stays
  resident while the input is streamed once per block of outputs and the weights once in all,
  as NPUs with accumulator banks run a layer with a long reduction (a one-hot embedding's
  30k-wide fully connected layer). Of the loop orders the compiler takes the one whose re-reads
  take less time on their interfaces. An input that lives on chip is never re-read from outside.

Widths are the chip's storage widths: an op whose widths the chip lacks runs (and is stored) at
the next wider supported pair, so int4 on a chip without int4 moves int8 bytes.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from simulator.constraints import NodeView
from simulator.contract import IntType
from simulator.ir import MAC_OPS, Node, OpKind, Program, TensorInfo
from simulator.profiles import ChipProfile, FeatureMapTiling

BIAS_BITS = 32  # MAC biases are int32 on every chip profiled here


class Home(str, enum.Enum):
    SRAM = "sram"
    EXTERNAL = "external"
    HOST = "host"


def storage_bits(bits: int, profile: ChipProfile) -> int:
    """Width a chip stores an activation of ``bits`` in: the narrowest supported one that fits."""
    fits = [m.activation_bits for m in profile.precision if m.activation_bits >= bits]
    return min(fits) if fits else bits


def tensor_bits(t: TensorInfo, profile: ChipProfile) -> int:
    bits = t.dtype.bits if isinstance(t.dtype, IntType) else profile.default_activation_bits
    return storage_bits(bits, profile)


def nbytes(t: TensorInfo, bits: int) -> float:
    return t.numel * bits / 8


def split_inputs(v: NodeView) -> tuple[list[str], list[str]]:
    """(activation inputs, parameter inputs) of a node, by role: a conv/FC's weights and bias are
    parameters even when a float graph declares them as non-constant tensors."""
    names = list(v.node.inputs)
    if v.kind in (OpKind.CONV2D, OpKind.FULLY_CONNECTED):
        return names[:1], names[1:]
    acts = [n for n in names if not _is_parameter(v.program, n)]
    return acts, [n for n in names if n not in acts]


def _is_parameter(program, name: str) -> bool:
    """Constant data, or in an estimate-only graph a tensor no node produces and no input is."""
    if program.tensors[name].data is not None:
        return True
    return (not program.executable and name not in program.inputs
            and program.producer(name) is None)


def param_bytes(v: NodeView, params: list[str], profile: ChipProfile) -> float:
    if v.kind is OpKind.GATHER:     # only the rows it looks up cross the weight interface
        return nbytes(v.output, tensor_bits(v.output, profile))
    total = 0.0
    for i, name in enumerate(params):
        t = v.program.tensors[name]
        if v.kind in MAC_OPS and i == 0:
            mode = profile.mode_for(v.weight_bits, v.activation_bits)
            total += nbytes(t, mode.weight_bits)
        elif v.kind in MAC_OPS:
            total += nbytes(t, BIAS_BITS)
        else:
            total += nbytes(t, tensor_bits(t, profile))
    return total


@dataclass(frozen=True)
class Traffic:
    activation_bytes: float
    weight_bytes: float
    spilled: bool
    weights_cached: bool


class MemoryState:
    """Where each activation tensor lives, and how much parameter cache is left."""

    def __init__(self, program: Program, profile: ChipProfile):
        self.program, self.profile = program, profile
        self.home: dict[str, Home] = {name: Home.EXTERNAL for name in program.inputs}
        self.host_has: set[str] = set(program.inputs)  # tensors the host holds a copy of
        self.cache_left = profile.memory.weight_cache_bytes

    def bytes_of(self, name: str) -> float:
        t = self.program.tensors[name]
        return nbytes(t, tensor_bits(t, self.profile))

    def npu_op(self, v: NodeView, out_name: str, out_bits: int) -> Traffic:
        """Price one NPU op whose result is ``out_name`` (the end of its fused chain)."""
        prof = self.profile
        acts, params = split_inputs(v)
        in_b = sum(self.bytes_of(n) for n in acts)
        out_b = nbytes(self.program.tensors[out_name], out_bits)
        w_b = param_bytes(v, params, prof)
        cached = 0 < w_b <= self.cache_left
        if cached:
            self.cache_left -= w_b
        w_stream = 0.0 if cached else w_b
        act_read = sum(self.bytes_of(n) for n in acts if self.home.get(n) is not Home.SRAM)
        spilled = self.on_chip_need(v, acts, in_b, out_name, out_b) > prof.memory.sram_bytes
        act_write = out_b if spilled or out_name in self.program.outputs else 0.0
        act_refetch = w_refetch = 0.0
        half = prof.memory.sram_bytes / 2
        if w_stream and act_read and min(in_b, w_stream) > half:
            # order A: weight blocks resident, input re-read; order B: input blocks resident;
            # order C: accumulator blocks resident, the input re-read once per block of outputs
            reread_input = (math.ceil(w_stream / half) - 1) * act_read
            reread_weights = (math.ceil(in_b / half) - 1) * w_stream
            acc_b = self.program.tensors[out_name].numel * prof.arithmetic.accumulator.bits / 8
            reread_for_acc = (math.ceil(acc_b / half) - 1) * act_read
            act_bw, w_bw = prof.memory.activation_bytes_per_s, prof.memory.weight_bytes_per_s
            if min(reread_input, reread_for_acc) / act_bw <= reread_weights / w_bw:
                act_refetch = min(reread_input, reread_for_acc)
            else:
                w_refetch = reread_weights
        self.home[out_name] = Home.EXTERNAL if spilled else Home.SRAM
        return Traffic(act_read + act_write + act_refetch, w_stream + w_refetch, spilled, cached)

    def on_chip_need(self, v: NodeView, acts: list[str], in_b: float, out_name: str,
                     out_b: float) -> float:
        """Bytes of feature map the op must hold on chip to keep its output there."""
        out_shape = self.program.tensors[out_name].shape
        if self.profile.memory.feature_map_tiling is FeatureMapTiling.WHOLE or len(out_shape) != 4:
            return in_b + out_b
        rows = v.kernel[0] if v.kind in (OpKind.CONV2D, OpKind.MAXPOOL2D, OpKind.AVGPOOL2D) else 1
        need = out_b / out_shape[2]
        for name in acts:
            shape = self.program.tensors[name].shape
            height = shape[2] if len(shape) == 4 else 1
            need += self.bytes_of(name) * min(rows, height) / height
        return need

    def alias(self, out_name: str, in_name: str) -> None:
        """A view (reshape/flatten) lives where its input does."""
        self.home[out_name] = self.home.get(in_name, Home.EXTERNAL)

    def host_op(self, node: Node, npu_consumes_output: bool) -> float:
        """Bytes a host op moves over the host link: NPU-made inputs in, its output back out
        when an NPU op consumes it."""
        fetched = [n for n in node.inputs
                   if n not in self.host_has and not _is_parameter(self.program, n)]
        moved = sum(self.bytes_of(n) for n in fetched)
        out = node.outputs[0]
        self.host_has.update(fetched + [out])
        if npu_consumes_output:
            moved += self.bytes_of(out)
            fits = self.bytes_of(out) <= self.profile.memory.sram_bytes
            self.home[out] = Home.SRAM if fits else Home.EXTERNAL
        else:
            self.home[out] = Home.HOST
        return moved

