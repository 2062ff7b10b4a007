"""Read a .tflite flatbuffer with the ``tflite`` package (generated from TFLite's schema) into
plain records: tensors with their quantization and constant data, operators with their options.

Nothing here interprets the graph; a truncated or damaged file is a ModelImportError naming the
file and what could not be read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.errors import ModelImportError

IDENTIFIER = b"TFL3"          # the flatbuffer file identifier, bytes 4..8 of every .tflite
MAX_FILE_BYTES = 1 << 31      # a flatbuffer addresses 2 GiB; larger models keep buffers outside

NUMPY_OF = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64,
            "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "UINT16": np.uint16,
            "INT32": np.int32, "UINT32": np.uint32, "INT64": np.int64, "UINT64": np.uint64,
            "BOOL": np.bool_}


def is_tflite(path: str | os.PathLike) -> bool:
    """True when the file carries TFLite's flatbuffer identifier (whatever its suffix)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == IDENTIFIER


@dataclass
class TflTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str                       # TFLite's type name: "INT8", "FLOAT32" ...
    scale: tuple[float, ...] | None  # float32 values as TFLite stores them, held in float64
    zero_point: tuple[int, ...] | None
    quantized_dimension: int
    data: np.ndarray | None = field(default=None, repr=False)

    @property
    def per_channel(self) -> bool:
        return self.scale is not None and len(self.scale) > 1

    def label(self) -> str:
        return f"tensor {self.name!r}"


@dataclass
class TflOp:
    index: int
    opcode: str                      # "CONV_2D", "ADD" ... or "CUSTOM:<code>"
    inputs: list[int]                # -1: an optional input left out
    outputs: list[int]
    options: object | None           # the generated options table (tflite.Conv2DOptions ...)


@dataclass
class TflModel:
    path: str
    tensors: list[TflTensor]
    ops: list[TflOp]
    inputs: list[int]
    outputs: list[int]
    description: str = ""


def _names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_")}


def read_tflite(path: str | os.PathLike) -> TflModel:
    """Parse ``path``; every defect is a one-line ModelImportError naming the file."""
    where = os.fspath(path)
    p = Path(path)
    if not p.is_file():
        raise ModelImportError(f"{where}: no such model file")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ModelImportError(f"{where}: {size:,} bytes, more than a TFLite flatbuffer holds")
    blob = p.read_bytes()
    if len(blob) < 8 or blob[4:8] != IDENTIFIER:
        raise ModelImportError(f"{where}: not a TFLite model (no 'TFL3' identifier at bytes 4..8)")
    try:
        return _parse(blob, where)
    except ModelImportError:
        raise
    except Exception as exc:  # flatbuffers reports a cut or damaged file in many ways
        raise ModelImportError(f"{where}: truncated or damaged TFLite flatbuffer "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
                               ) from None


def _parse(blob: bytes, where: str) -> TflModel:
    import tflite

    buf = bytearray(blob)
    model = tflite.Model.GetRootAs(buf, 0)
    if model.SubgraphsLength() < 1:
        raise ModelImportError(f"{where}: the model has no subgraph")
    if model.SubgraphsLength() > 1:
        raise ModelImportError(f"{where}: {model.SubgraphsLength()} subgraphs (control flow); "
                               f"only single-subgraph models are supported")
    for i in range(model.BuffersLength()):  # read every buffer table, used or not: a cut
        _buffer_bytes(model.Buffers(i), blob, f"buffer #{i}", where)  # file fails here
    sub = model.Subgraphs(0)
    type_names = _names(tflite.TensorType)
    op_names = tflite.utils.BUILTIN_OPCODE2NAME
    option_names = _names(tflite.BuiltinOptions)
    tensors = [_tensor(sub.Tensors(i), i, model, blob, type_names, where)
               for i in range(sub.TensorsLength())]
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())  # the schema's rule
        if code == tflite.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode()
            codes.append(f"CUSTOM:{custom.decode(errors='replace') if custom else '?'}")
        else:
            codes.append(op_names.get(code, f"BUILTIN_{code}"))
    ops = []
    for i in range(sub.OperatorsLength()):
        o = sub.Operators(i)
        if not 0 <= o.OpcodeIndex() < len(codes):
            raise ModelImportError(f"{where}: operator #{i} names opcode {o.OpcodeIndex()}, the "
                                   f"model has {len(codes)}")
        ins = [int(v) for v in (o.InputsAsNumpy() if o.InputsLength() else [])]
        outs = [int(v) for v in (o.OutputsAsNumpy() if o.OutputsLength() else [])]
        for t in ins + outs:
            if t < -1 or t >= len(tensors):
                raise ModelImportError(f"{where}: operator #{i} ({codes[o.OpcodeIndex()]}) names "
                                       f"tensor {t}, the model has {len(tensors)}")
        ops.append(TflOp(i, codes[o.OpcodeIndex()], ins, outs, _options(o, option_names)))
    inputs = [int(v) for v in (sub.InputsAsNumpy() if sub.InputsLength() else [])]
    outputs = [int(v) for v in (sub.OutputsAsNumpy() if sub.OutputsLength() else [])]
    for t in inputs + outputs:
        if not 0 <= t < len(tensors):
            raise ModelImportError(f"{where}: graph input/output names tensor {t}, the model has "
                                   f"{len(tensors)}")
    desc = model.Description()
    return TflModel(where, tensors, ops, inputs, outputs,
                    desc.decode(errors="replace") if desc else "")


def _options(op, option_names: dict[int, str]):
    import tflite

    kind = op.BuiltinOptionsType()
    table = op.BuiltinOptions()
    if not kind or table is None:
        return None
    cls = getattr(tflite, option_names.get(kind, ""), None)
    if cls is None:
        return None
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    return opts


def _tensor(t, index: int, model, blob: bytes, type_names, where: str) -> TflTensor:
    name = (t.Name() or b"").decode(errors="replace") or f"tensor_{index}"
    shape = tuple(int(d) for d in (t.ShapeAsNumpy() if t.ShapeLength() else []))
    dtype = type_names.get(t.Type(), f"TYPE_{t.Type()}")
    scale = zp = None
    qdim = 0
    q = t.Quantization()
    if q is not None and q.ScaleLength():
        scale = tuple(float(s) for s in q.ScaleAsNumpy())
        zp = tuple(int(z) for z in q.ZeroPointAsNumpy()) if q.ZeroPointLength() else \
            (0,) * len(scale)
        qdim = int(q.QuantizedDimension())
    data = None
    b = t.Buffer()
    if b > 0:
        if b >= model.BuffersLength():
            raise ModelImportError(f"{where}: tensor {name!r} names buffer {b}, the model has "
                                   f"{model.BuffersLength()}")
        raw = _buffer_bytes(model.Buffers(b), blob, name, where)
        if raw is not None and len(raw):
            data = _array(raw, dtype, shape, name, where)
    return TflTensor(index, name, shape, dtype, scale, zp, qdim, data)


def _buffer_bytes(buffer, blob: bytes, name: str, where: str):
    offset, size = int(buffer.Offset()), int(buffer.Size())
    if offset > 1:  # large models keep constants after the flatbuffer, addressed by offset
        if offset + size > len(blob):
            raise ModelImportError(f"{where}: tensor {name!r}: its data ({size:,} bytes at "
                                   f"offset {offset:,}) lies past the end of the file (truncated)")
        return np.frombuffer(blob, np.uint8, size, offset)
    if buffer.DataLength() == 0:
        return None
    return buffer.DataAsNumpy()


def _array(raw: np.ndarray, dtype: str, shape, name: str, where: str) -> np.ndarray:
    np_type = NUMPY_OF.get(dtype)
    if np_type is None:
        raise ModelImportError(f"{where}: tensor {name!r}: constant of type {dtype} cannot be read")
    count = int(np.prod(shape)) if shape else 1
    need = count * np.dtype(np_type).itemsize
    if raw.size != need:
        raise ModelImportError(f"{where}: tensor {name!r}: buffer holds {raw.size} bytes, shape "
                               f"{list(shape)} of {dtype} needs {need}")
    return np.frombuffer(raw.tobytes(), np_type).reshape(shape)
