"""What an op costs when the host CPU runs it in float.

``cycles = (FLOPs / host.flops_per_s + bytes moved / host.link_bytes_per_s + hand-off) x clock_hz``
where the hand-off (``host.fallback_overhead_s``) is paid when execution switches from the NPU
to the host, and the bytes are the NPU-made inputs brought over plus the output sent back when
an NPU op consumes it (``MemoryState.host_op``).

The FLOPs per element below are facts of the algorithms (a float exp or erf costs about ten
FLOPs), not of any chip, which is why they live in code and not in profiles.
"""

from __future__ import annotations

import math

from simulator.constraints import NodeView
from simulator.cost.compute import mac_count
from simulator.ir import OpKind

EXP_FLOPS = 10  # one float exp / log / erf, polynomial evaluation

# FLOPs per output element of ONNX ops left as fallback nodes.
FLOPS_PER_ELEMENT: dict[str, float] = {
    "Relu": 1, "Clip": 2, "LeakyRelu": 2, "PRelu": 2, "HardSigmoid": 3, "HardSwish": 4,
    "Sigmoid": EXP_FLOPS + 2, "Tanh": EXP_FLOPS + 4, "Exp": EXP_FLOPS, "Log": EXP_FLOPS,
    "Erf": EXP_FLOPS + 4, "Gelu": EXP_FLOPS + 8, "Softplus": 2 * EXP_FLOPS,
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Max": 1, "Min": 1, "Sum": 1, "Neg": 1, "Abs": 1,
    "Pow": 2 * EXP_FLOPS, "Sqrt": 4, "Reciprocal": 4,
    "Softmax": EXP_FLOPS + 4, "LogSoftmax": EXP_FLOPS + 5,        # max, sub, exp, sum, div
    "BatchNormalization": 2,                                     # folded to scale and shift
    "LayerNormalization": 8, "InstanceNormalization": 8,         # mean, var, normalise, affine
    "GroupNormalization": 8,
    "Resize": 4, "Upsample": 4,                                  # bilinear: 4 taps
    # data movement: one copy per element
    "Reshape": 1, "Flatten": 1, "Squeeze": 1, "Unsqueeze": 1, "Transpose": 1, "Concat": 1,
    "Slice": 1, "Split": 1, "Pad": 1, "Gather": 1, "Identity": 1, "Cast": 1, "Expand": 1,
    "Tile": 1, "Shape": 0, "Constant": 0, "ConstantOfShape": 1, "DepthToSpace": 1,
    "SpaceToDepth": 1,
}
# FLOPs per *input* element: reductions.
FLOPS_PER_INPUT_ELEMENT: dict[str, float] = {
    "ReduceMean": 1, "ReduceSum": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1,
    "ReduceL2": 2, "ArgMax": 1, "ArgMin": 1, "GlobalAveragePool": 1, "GlobalMaxPool": 1,
}
UNKNOWN_FLOPS_PER_ELEMENT = 1.0   # a lower bound for an op type not listed above

# The same, for IR ops placed on the host (unsupported by the chip, or boundary conversions).
OP_FLOPS_PER_ELEMENT: dict[OpKind, float] = {
    OpKind.ADD: 1, OpKind.SUB: 1, OpKind.MUL: 1, OpKind.MINIMUM: 1, OpKind.CLAMP: 1, OpKind.REQUANTIZE: 2, OpKind.LOOKUP_TABLE: 1,
    OpKind.SOFTMAX: EXP_FLOPS + 4, OpKind.CONCAT: 1, OpKind.TRANSPOSE: 1, OpKind.RESHAPE: 0,
    OpKind.FLATTEN: 0, OpKind.QUANTIZE: 3, OpKind.DEQUANTIZE: 2, OpKind.GATHER: 1,
}


# A lookup_table of a float graph is the host evaluating its function in float.
LUT_FUNCTION_FLOPS: dict[str, float] = {
    "sigmoid": EXP_FLOPS + 2, "tanh": EXP_FLOPS + 4, "hardsigmoid": 3, "hardswish": 4,
    "silu": EXP_FLOPS + 3, "gelu": EXP_FLOPS + 8, "leaky_relu": 2, "prelu": 2,
    "elu": EXP_FLOPS + 2, "softplus": 2 * EXP_FLOPS, "exp": EXP_FLOPS, "rsqrt": EXP_FLOPS,
}


def host_flops(v: NodeView) -> float:
    """Float operations the host spends on one node."""
    out_elems = math.prod(v.output.shape)
    if v.kind is OpKind.LOOKUP_TABLE and not v.inputs[0].is_int:
        return out_elems * LUT_FUNCTION_FLOPS.get(v.attrs.get("function"), EXP_FLOPS)
    if v.kind is OpKind.FALLBACK:
        op_type = v.attrs["op_type"]
        if op_type == "LRN":  # sum of squares over `size` channels, then a power
            size = v.attrs.get("attributes", {}).get("size", 5)
            return out_elems * (2 * size + 2 * EXP_FLOPS)
        if op_type in FLOPS_PER_INPUT_ELEMENT and v.inputs:
            return math.prod(v.inputs[0].shape) * FLOPS_PER_INPUT_ELEMENT[op_type]
        return out_elems * FLOPS_PER_ELEMENT.get(op_type, UNKNOWN_FLOPS_PER_ELEMENT)
    if v.kind in (OpKind.CONV2D, OpKind.FULLY_CONNECTED, OpKind.MATMUL):
        return 2.0 * mac_count(v)
    if v.kind in (OpKind.MAXPOOL2D, OpKind.AVGPOOL2D):
        kh, kw = v.kernel
        return out_elems * kh * kw
    if v.kind in (OpKind.GLOBAL_AVGPOOL2D, OpKind.MEAN):
        return math.prod(v.inputs[0].shape)
    return out_elems * OP_FLOPS_PER_ELEMENT[v.kind]
