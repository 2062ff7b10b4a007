"""A small TFLite writer for tests and benchmarks: int8 graphs through the ``tflite`` package's
builder functions.

Tensors are declared NHWC as TFLite stores them (filters OHWI, depthwise [1, H, W, C*m]);
``GraphWriter.build()`` returns the flatbuffer bytes ("TFL3"). Only what its users need is here
(the TFLite import tests' graphs, ``benchmarks/tflite_networks.py``): each op helper takes tensor
indices and the op's options.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite

TYPES = {"float32": (tflite.TensorType.FLOAT32, np.float32),
         "int8": (tflite.TensorType.INT8, np.int8),
         "uint8": (tflite.TensorType.UINT8, np.uint8),
         "int16": (tflite.TensorType.INT16, np.int16),
         "int32": (tflite.TensorType.INT32, np.int32),
         "int64": (tflite.TensorType.INT64, np.int64)}

ACT = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3, "TANH": 4}
PAD = {"SAME": tflite.Padding.SAME, "VALID": tflite.Padding.VALID}
OP = tflite.BuiltinOperator
OPTS = tflite.BuiltinOptions


@dataclass
class _Tensor:
    name: str
    shape: tuple
    dtype: str
    scale: list | None
    zero_point: list | None
    qdim: int
    buffer: int


@dataclass
class _Op:
    code: int
    inputs: list
    outputs: list
    options_type: int = 0
    options: object = None      # callable(builder) -> offset, run while building


@dataclass
class GraphWriter:
    tensors: list = field(default_factory=list)
    buffers: list = field(default_factory=lambda: [b""])  # buffer 0: the empty sentinel
    ops: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)

    # ------------------------------------------------------------------ tensors
    def tensor(self, name, shape, dtype="int8", scale=None, zero_point=None, data=None,
               qdim=0) -> int:
        buf = 0
        if data is not None:
            arr = np.ascontiguousarray(np.asarray(data, dtype=TYPES[dtype][1]).reshape(shape))
            self.buffers.append(arr.tobytes())
            buf = len(self.buffers) - 1
        scale = None if scale is None else [float(s) for s in np.atleast_1d(scale)]
        if scale is not None and zero_point is None:
            zero_point = [0] * len(scale)
        zp = None if zero_point is None else [int(z) for z in np.atleast_1d(zero_point)]
        self.tensors.append(_Tensor(name, tuple(shape), dtype, scale, zp, qdim, buf))
        return len(self.tensors) - 1

    def input(self, name, shape, dtype="int8", scale=None, zero_point=None) -> int:
        i = self.tensor(name, shape, dtype, scale, zero_point)
        self.inputs.append(i)
        return i

    def output(self, *indices: int) -> None:
        self.outputs.extend(indices)

    def like(self, name, src: int, shape=None, scale=None, zero_point=None) -> int:
        t = self.tensors[src]
        return self.tensor(name, shape or t.shape, t.dtype,
                           t.scale if scale is None else scale,
                           t.zero_point if zero_point is None else zero_point)

    # ------------------------------------------------------------------ ops
    def op(self, code, inputs, outputs, options_type=0, options=None) -> int:
        self.ops.append(_Op(code, list(inputs), list(outputs), options_type, options))
        return outputs[0]

    def conv2d(self, x, w, b, y, stride=(1, 1), padding="SAME", act="NONE", dilation=(1, 1)):
        def opts(fb):
            tflite.Conv2DOptionsStart(fb)
            tflite.Conv2DOptionsAddPadding(fb, PAD[padding])
            tflite.Conv2DOptionsAddStrideH(fb, stride[0])
            tflite.Conv2DOptionsAddStrideW(fb, stride[1])
            tflite.Conv2DOptionsAddDilationHFactor(fb, dilation[0])
            tflite.Conv2DOptionsAddDilationWFactor(fb, dilation[1])
            tflite.Conv2DOptionsAddFusedActivationFunction(fb, ACT[act])
            return tflite.Conv2DOptionsEnd(fb)
        return self.op(OP.CONV_2D, [x, w, -1 if b is None else b], [y], OPTS.Conv2DOptions, opts)

    def depthwise(self, x, w, b, y, multiplier=1, stride=(1, 1), padding="SAME", act="NONE"):
        def opts(fb):
            tflite.DepthwiseConv2DOptionsStart(fb)
            tflite.DepthwiseConv2DOptionsAddPadding(fb, PAD[padding])
            tflite.DepthwiseConv2DOptionsAddStrideH(fb, stride[0])
            tflite.DepthwiseConv2DOptionsAddStrideW(fb, stride[1])
            tflite.DepthwiseConv2DOptionsAddDepthMultiplier(fb, multiplier)
            tflite.DepthwiseConv2DOptionsAddDilationHFactor(fb, 1)
            tflite.DepthwiseConv2DOptionsAddDilationWFactor(fb, 1)
            tflite.DepthwiseConv2DOptionsAddFusedActivationFunction(fb, ACT[act])
            return tflite.DepthwiseConv2DOptionsEnd(fb)
        return self.op(OP.DEPTHWISE_CONV_2D, [x, w, -1 if b is None else b], [y],
                       OPTS.DepthwiseConv2DOptions, opts)

    def fully_connected(self, x, w, b, y, act="NONE", keep_num_dims=False):
        def opts(fb):
            tflite.FullyConnectedOptionsStart(fb)
            tflite.FullyConnectedOptionsAddFusedActivationFunction(fb, ACT[act])
            tflite.FullyConnectedOptionsAddKeepNumDims(fb, keep_num_dims)
            return tflite.FullyConnectedOptionsEnd(fb)
        return self.op(OP.FULLY_CONNECTED, [x, w, -1 if b is None else b], [y],
                       OPTS.FullyConnectedOptions, opts)

    def _binary(self, code, kind, a, b, y, act, **flags):
        start, add_act, end = (getattr(tflite, f"{kind}Options{s}")
                               for s in ("Start", "AddFusedActivationFunction", "End"))

        def opts(fb):
            start(fb)
            add_act(fb, ACT[act])
            for flag, value in flags.items():
                if value is not None:
                    getattr(tflite, f"{kind}OptionsAdd{flag}")(fb, value)
            return end(fb)
        return self.op(code, [a, b], [y], getattr(OPTS, f"{kind}Options"), opts)

    def add(self, a, b, y, act="NONE", pot_scale_int16=None):
        """``pot_scale_int16``: None leaves the schema's default (true); TFLite's converter
        writes false for 16x8 models (general int16 scales)."""
        return self._binary(OP.ADD, "Add", a, b, y, act, PotScaleInt16=pot_scale_int16)

    def mul(self, a, b, y, act="NONE"):
        return self._binary(OP.MUL, "Mul", a, b, y, act)

    def pool(self, kind, x, y, kernel, stride, padding="VALID", act="NONE"):
        def opts(fb):
            tflite.Pool2DOptionsStart(fb)
            tflite.Pool2DOptionsAddPadding(fb, PAD[padding])
            tflite.Pool2DOptionsAddStrideH(fb, stride[0])
            tflite.Pool2DOptionsAddStrideW(fb, stride[1])
            tflite.Pool2DOptionsAddFilterHeight(fb, kernel[0])
            tflite.Pool2DOptionsAddFilterWidth(fb, kernel[1])
            tflite.Pool2DOptionsAddFusedActivationFunction(fb, ACT[act])
            return tflite.Pool2DOptionsEnd(fb)
        code = OP.AVERAGE_POOL_2D if kind == "avg" else OP.MAX_POOL_2D
        return self.op(code, [x], [y], OPTS.Pool2DOptions, opts)

    def mean(self, x, axes, y, keep_dims=True):
        a = self.tensor(f"{self.tensors[y].name}/axes", (len(axes),), "int32", data=axes)

        def opts(fb):
            tflite.ReducerOptionsStart(fb)
            tflite.ReducerOptionsAddKeepDims(fb, keep_dims)
            return tflite.ReducerOptionsEnd(fb)
        return self.op(OP.MEAN, [x, a], [y], OPTS.ReducerOptions, opts)

    def reshape(self, x, y, shape_input=True):
        ins = [x]
        if shape_input:
            shape = self.tensors[y].shape
            ins.append(self.tensor(f"{self.tensors[y].name}/shape", (len(shape),), "int32",
                                   data=shape))
        return self.op(OP.RESHAPE, ins, [y])

    def concat(self, xs, y, axis, act="NONE"):
        def opts(fb):
            tflite.ConcatenationOptionsStart(fb)
            tflite.ConcatenationOptionsAddAxis(fb, axis)
            tflite.ConcatenationOptionsAddFusedActivationFunction(fb, ACT[act])
            return tflite.ConcatenationOptionsEnd(fb)
        return self.op(OP.CONCATENATION, xs, [y], OPTS.ConcatenationOptions, opts)

    def pad(self, x, pads, y):
        p = self.tensor(f"{self.tensors[y].name}/paddings", (len(pads), 2), "int32", data=pads)
        return self.op(OP.PAD, [x, p], [y])

    def leaky_relu(self, x, y, alpha):
        def opts(fb):
            tflite.LeakyReluOptionsStart(fb)
            tflite.LeakyReluOptionsAddAlpha(fb, alpha)
            return tflite.LeakyReluOptionsEnd(fb)
        return self.op(OP.LEAKY_RELU, [x], [y], OPTS.LeakyReluOptions, opts)

    def batch_matmul(self, a, b, y, adj_x=False, adj_y=False):
        def opts(fb):
            tflite.BatchMatMulOptionsStart(fb)
            tflite.BatchMatMulOptionsAddAdjX(fb, adj_x)
            tflite.BatchMatMulOptionsAddAdjY(fb, adj_y)
            return tflite.BatchMatMulOptionsEnd(fb)
        return self.op(OP.BATCH_MATMUL, [a, b], [y], OPTS.BatchMatMulOptions, opts)

    def gelu(self, x, y, approximate=False):
        def opts(fb):
            tflite.GeluOptionsStart(fb)
            tflite.GeluOptionsAddApproximate(fb, approximate)
            return tflite.GeluOptionsEnd(fb)
        return self.op(OP.GELU, [x], [y], OPTS.GeluOptions, opts)

    def softmax(self, x, y, beta=1.0):
        def opts(fb):
            tflite.SoftmaxOptionsStart(fb)
            tflite.SoftmaxOptionsAddBeta(fb, beta)
            return tflite.SoftmaxOptionsEnd(fb)
        return self.op(OP.SOFTMAX, [x], [y], OPTS.SoftmaxOptions, opts)

    def unary(self, code, x, y):
        """LOGISTIC, TANH, HARD_SWISH, QUANTIZE, DEQUANTIZE, RELU ...: no options needed."""
        return self.op(code, [x], [y])

    # ------------------------------------------------------------------ serialisation
    def build(self, description: str = "archnet test graph") -> bytes:
        fb = flatbuffers.Builder(1024)
        codes = sorted({op.code for op in self.ops})
        code_index = {c: i for i, c in enumerate(codes)}
        buffers = [self._buffer(fb, data) for data in self.buffers]
        tensors = [self._tensor(fb, t) for t in self.tensors]
        ops = [self._operator(fb, op, code_index[op.code]) for op in self.ops]
        name = fb.CreateString("main")
        sub_tensors = _vector(fb, tflite.SubGraphStartTensorsVector, tensors)
        sub_inputs = _ints(fb, tflite.SubGraphStartInputsVector, self.inputs)
        sub_outputs = _ints(fb, tflite.SubGraphStartOutputsVector, self.outputs)
        sub_ops = _vector(fb, tflite.SubGraphStartOperatorsVector, ops)
        tflite.SubGraphStart(fb)
        tflite.SubGraphAddTensors(fb, sub_tensors)
        tflite.SubGraphAddInputs(fb, sub_inputs)
        tflite.SubGraphAddOutputs(fb, sub_outputs)
        tflite.SubGraphAddOperators(fb, sub_ops)
        tflite.SubGraphAddName(fb, name)
        subgraph = tflite.SubGraphEnd(fb)
        opcodes = []
        for c in codes:
            tflite.OperatorCodeStart(fb)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(fb, min(c, 127))
            tflite.OperatorCodeAddBuiltinCode(fb, c)
            tflite.OperatorCodeAddVersion(fb, 1)
            opcodes.append(tflite.OperatorCodeEnd(fb))
        opcode_vec = _vector(fb, tflite.ModelStartOperatorCodesVector, opcodes)
        sub_vec = _vector(fb, tflite.ModelStartSubgraphsVector, [subgraph])
        buf_vec = _vector(fb, tflite.ModelStartBuffersVector, buffers)
        desc = fb.CreateString(description)
        tflite.ModelStart(fb)
        tflite.ModelAddVersion(fb, 3)
        tflite.ModelAddOperatorCodes(fb, opcode_vec)
        tflite.ModelAddSubgraphs(fb, sub_vec)
        tflite.ModelAddBuffers(fb, buf_vec)
        tflite.ModelAddDescription(fb, desc)
        fb.Finish(tflite.ModelEnd(fb), file_identifier=b"TFL3")
        return bytes(fb.Output())

    @staticmethod
    def _buffer(fb, data: bytes):
        vec = None
        if data:
            fb.StartVector(1, len(data), 16)  # 16-byte aligned: int32 biases read in place
            fb.head = fb.head - len(data)
            fb.Bytes[fb.head:fb.head + len(data)] = data
            vec = fb.EndVector()
        tflite.BufferStart(fb)
        if vec is not None:
            tflite.BufferAddData(fb, vec)
        return tflite.BufferEnd(fb)

    @staticmethod
    def _tensor(fb, t: _Tensor):
        name = fb.CreateString(t.name)
        shape = _ints(fb, tflite.TensorStartShapeVector, t.shape)
        quant = None
        if t.scale is not None:
            scale = _floats(fb, tflite.QuantizationParametersStartScaleVector, t.scale)
            zp = _longs(fb, tflite.QuantizationParametersStartZeroPointVector, t.zero_point)
            tflite.QuantizationParametersStart(fb)
            tflite.QuantizationParametersAddScale(fb, scale)
            tflite.QuantizationParametersAddZeroPoint(fb, zp)
            tflite.QuantizationParametersAddQuantizedDimension(fb, t.qdim)
            quant = tflite.QuantizationParametersEnd(fb)
        tflite.TensorStart(fb)
        tflite.TensorAddShape(fb, shape)
        tflite.TensorAddType(fb, TYPES[t.dtype][0])
        tflite.TensorAddBuffer(fb, t.buffer)
        tflite.TensorAddName(fb, name)
        if quant is not None:
            tflite.TensorAddQuantization(fb, quant)
        return tflite.TensorEnd(fb)

    @staticmethod
    def _operator(fb, op: _Op, opcode: int):
        ins = _ints(fb, tflite.OperatorStartInputsVector, op.inputs)
        outs = _ints(fb, tflite.OperatorStartOutputsVector, op.outputs)
        options = op.options(fb) if op.options else None
        tflite.OperatorStart(fb)
        tflite.OperatorAddOpcodeIndex(fb, opcode)
        tflite.OperatorAddInputs(fb, ins)
        tflite.OperatorAddOutputs(fb, outs)
        if options is not None:
            tflite.OperatorAddBuiltinOptionsType(fb, op.options_type)
            tflite.OperatorAddBuiltinOptions(fb, options)
        return tflite.OperatorEnd(fb)


def _vector(fb, start, offsets):
    start(fb, len(offsets))
    for off in reversed(offsets):
        fb.PrependUOffsetTRelative(off)
    return fb.EndVector()


def _ints(fb, start, values):
    start(fb, len(values))
    for v in reversed(list(values)):
        fb.PrependInt32(int(v))
    return fb.EndVector()


def _longs(fb, start, values):
    start(fb, len(values))
    for v in reversed(list(values)):
        fb.PrependInt64(int(v))
    return fb.EndVector()


def _floats(fb, start, values):
    start(fb, len(values))
    for v in reversed(list(values)):
        fb.PrependFloat32(float(v))
    return fb.EndVector()
