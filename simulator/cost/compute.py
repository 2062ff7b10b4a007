"""Compute cycles of an op on the NPU, from shapes and the profile only.

MAC ops: ``compute = MACs / (macs_per_cycle[w,a] x utilisation x array.efficiency)``.
Utilisation is what tiling the array over the layer's shape loses: each of the array's three
lane axes is filled to ``n / (ceil(n / lanes) * lanes)`` by the layer dimension mapped onto it,
and the three fills multiply:

- output-channel lanes <- output channels per group (a depthwise conv puts all its channels here);
- reduction lanes <- input channels per group, kernel taps (kh*kw) or both flattened (im2col),
  as ``array.reduction_mapping`` says; a depthwise conv reduces over its kernel taps only, so on
  an "input_channels" array it fills one reduction lane and steps through the taps;
- output-pixel lanes <- batch x output pixels (FC and matmul: batch x rows).

Other ops run on the element units: ``compute = elements / <op's rate in [elementwise]>``.
"""

from __future__ import annotations

import math

from simulator.constraints import COMPOSED, NodeView, lut_form
from simulator.ir import OpKind
from simulator.profiles import ChipProfile, ReductionMapping


def mac_count(v: NodeView) -> int:
    """Multiply-accumulates of a MAC op (0 for anything else)."""
    if v.kind is OpKind.CONV2D:
        _, icg, kh, kw = v.inputs[1].shape
        return math.prod(v.output.shape) * icg * kh * kw
    if v.kind is OpKind.FULLY_CONNECTED:
        return math.prod(v.output.shape) * v.inputs[0].shape[1]
    if v.kind is OpKind.MATMUL:
        return math.prod(v.output.shape) * v.inputs[0].shape[-1]
    return 0


def _fill(n: int, lanes: int) -> float:
    """Fraction of ``lanes`` doing useful work when ``n`` items are tiled over them."""
    return n / (math.ceil(n / lanes) * lanes)


def mac_axes(v: NodeView, profile: ChipProfile) -> tuple[int, int, int]:
    """(output channels, reduction length, output pixels) as mapped onto the array's lanes."""
    if v.kind is OpKind.CONV2D:
        n, oc, oh, ow = v.output.shape
        _, icg, kh, kw = v.inputs[1].shape
        pixels = n * oh * ow
        groups = v.attrs["groups"]
        mapping = profile.array.reduction_mapping
        if v.is_depthwise:
            # no sum across channels: an array that reduces over input channels has one lane of
            # work per channel and steps through the taps (Vela prices depthwise so)
            return oc, 1 if mapping is ReductionMapping.INPUT_CHANNELS else kh * kw, pixels
        if mapping is ReductionMapping.KERNEL_TAPS:
            reduction = kh * kw
        elif mapping is ReductionMapping.IM2COL:
            reduction = icg * kh * kw
        else:
            # a shallow layer (the 3-channel stem) leaves lanes idle: Vela 5.2 prices such
            # convs at 28-35 % of the array on Ethos-U55-128 (reports/vela_peer.md)
            reduction = icg
        return oc // groups, reduction, pixels
    rows = math.prod(v.output.shape[:-1])
    return v.output.shape[-1], v.inputs[0].shape[-1], rows


def utilisation(v: NodeView, profile: ChipProfile) -> float:
    oc, red, pix = mac_axes(v, profile)
    arr = profile.array
    return (_fill(oc, arr.output_channel_lanes) * _fill(red, arr.reduction_lanes)
            * _fill(pix, arr.output_pixel_lanes))


def mac_compute_cycles(v: NodeView, profile: ChipProfile) -> tuple[float, float]:
    """(compute cycles, utilisation) of a MAC op on the NPU."""
    mode = profile.mode_for(v.weight_bits, v.activation_bits)
    util = utilisation(v, profile)
    return mac_count(v) / (mode.macs_per_cycle * util * profile.array.efficiency), util


def lookup_cycles(v: NodeView, profile: ChipProfile) -> float:
    """A table lookup per element, or the ops a chip composes the function from: a sigmoid
    table, a requantize-and-clamp pass, a mul (constraints.COMPOSED)."""
    rates, out_elems = profile.elementwise, math.prod(v.output.shape)
    function = v.attrs.get("function")
    if lut_form(function, profile) != "composed":
        return out_elems / rates.lut_elements_per_cycle
    base, needs_mul = COMPOSED[function]
    cycles = out_elems / (rates.lut_elements_per_cycle if base else rates.elements_per_cycle)
    return cycles + (out_elems / rates.add_elements_per_cycle if needs_mul else 0.0)


def element_compute_cycles(v: NodeView, profile: ChipProfile) -> float:
    """Compute cycles of a non-MAC op on the element units; 0 for reshape/flatten (views)."""
    rates = profile.elementwise
    out_elems = math.prod(v.output.shape)
    if v.kind in (OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.MINIMUM):  # two in, one out
        return out_elems / rates.add_elements_per_cycle
    if v.kind in (OpKind.MAXPOOL2D, OpKind.AVGPOOL2D):
        kh, kw = v.kernel
        return out_elems * kh * kw / rates.pool_elements_per_cycle
    if v.kind in (OpKind.GLOBAL_AVGPOOL2D, OpKind.MEAN):
        # a reduction reads every input element once on the pooling unit (Vela lowers MEAN
        # to average pools and depthwise convs)
        return math.prod(v.inputs[0].shape) / rates.pool_elements_per_cycle
    if v.kind in (OpKind.CLAMP, OpKind.REQUANTIZE):
        return out_elems / rates.elements_per_cycle
    if v.kind is OpKind.LOOKUP_TABLE:
        return lookup_cycles(v, profile)
    if v.kind is OpKind.SOFTMAX:
        return out_elems / rates.softmax_elements_per_cycle
    if v.kind in (OpKind.CONCAT, OpKind.TRANSPOSE, OpKind.GATHER):   # data movement
        return out_elems * v.activation_bits / 8 / rates.data_movement_bytes_per_cycle
    return 0.0
