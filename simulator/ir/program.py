"""The integer Program: tensors with their quantization, nodes in execution order, one file.

File format (``.program``): a zip holding ``program.json`` (format version, tensors, nodes,
inputs, outputs, metadata) and one ``constants/<i>.npy`` per constant tensor. Saving writes a
temporary file and renames it; loading validates everything before returning, so a truncated,
mutated or inconsistent file is a ``ProgramError`` naming the file and the field.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from simulator.contract import INTERPOLATED_TABLE_ENTRIES, S16, DType, IntType, parse_dtype
from simulator.digest import HASH_KEY, content_digest
from simulator.errors import ProgramError, SimulatorError
from simulator.fileio import atomic_write_bytes
from simulator.ir.ops import OP_INFO, OpKind, infer_shape, normalise_attrs

FORMAT = "archnet-program"
FORMAT_VERSION = 2                  # 2: a content hash in program.json
MAX_CONSTANT_BYTES = 1 << 31        # one constant
MAX_TOTAL_CONSTANT_BYTES = 1 << 31  # all constants together
MAX_JSON_BYTES = 64 << 20           # program.json: a large Transformer's is a few MB


@dataclass(frozen=True)
class TensorInfo:
    """A tensor: shape, integer (or float) type, real scale and zero point, optional data.

    ``scale`` and ``zero_point`` are tuples of one value (per tensor) or one per channel along
    ``axis``. Integer tensors of graph inputs and activations need a scale; accumulators carry
    the product of their operands' scales.
    """

    name: str
    shape: tuple[int, ...]
    dtype: DType
    scale: tuple[float, ...] | None = None
    zero_point: tuple[int, ...] = (0,)
    axis: int | None = None
    data: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def is_int(self) -> bool:
        return isinstance(self.dtype, IntType)

    @property
    def per_channel(self) -> bool:
        return self.scale is not None and len(self.scale) > 1 or len(self.zero_point) > 1

    @property
    def zp_scalar(self) -> int:
        if len(self.zero_point) != 1:
            raise ProgramError(f"tensor {self.name!r}: expected one zero point, has {len(self.zero_point)}")
        return int(self.zero_point[0])

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Node:
    name: str
    op: OpKind
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict = field(default_factory=dict)


@dataclass
class Program:
    name: str
    tensors: dict[str, TensorInfo]
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    metadata: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ queries
    def producer(self, tensor: str) -> Node | None:
        for node in self.nodes:
            if tensor in node.outputs:
                return node
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def constant(self, name: str) -> np.ndarray:
        data = self.tensors[name].data
        if data is None:
            raise ProgramError(f"tensor {name!r} is not a constant")
        return data

    @property
    def executable(self) -> bool:
        """False for float graphs imported only to be estimated."""
        return not self.metadata.get("estimate_only", False)

    # ------------------------------------------------------------------ validation
    def validate(self, where: str = "program") -> "Program":
        """Check names, types, ranges, order and shapes; return self or raise ProgramError."""
        for name, t in self.tensors.items():
            _check_tensor(t, f"{where}: tensor {name!r}")
        available = set()
        for name in self.inputs:
            if name not in self.tensors:
                raise ProgramError(f"{where}: input {name!r} is not a declared tensor")
            if self.tensors[name].data is not None:
                raise ProgramError(f"{where}: input {name!r} is a constant")
            available.add(name)
        available |= {n for n, t in self.tensors.items() if t.data is not None}
        if not self.executable:  # estimate-only graphs keep parameters as shapes, without data
            produced = {o for node in self.nodes for o in node.outputs}
            available |= {n for n in self.tensors if n not in produced}
        seen_nodes = set()
        for node in self.nodes:
            nwhere = f"{where}: node {node.name!r}"
            if node.name in seen_nodes:
                raise ProgramError(f"{nwhere}: duplicate node name")
            seen_nodes.add(node.name)
            info = OP_INFO[node.op]
            if not info.min_inputs <= len(node.inputs) <= info.max_inputs:
                raise ProgramError(f"{nwhere}: {node.op.value} takes {info.min_inputs}.."
                                   f"{info.max_inputs} inputs, has {len(node.inputs)}")
            if len(node.outputs) != 1:
                raise ProgramError(f"{nwhere}: must have exactly one output")
            for name in node.inputs:
                if name not in self.tensors:
                    raise ProgramError(f"{nwhere}: input {name!r} is not a declared tensor")
                if name not in available:
                    raise ProgramError(f"{nwhere}: input {name!r} is used before it is produced")
            out = node.outputs[0]
            if out not in self.tensors:
                raise ProgramError(f"{nwhere}: output {out!r} is not a declared tensor")
            if out in available:
                raise ProgramError(f"{nwhere}: output {out!r} is produced twice or is a constant")
            _check_node_types(self, node, nwhere)
            shape = infer_shape(node.op, [self.tensors[i].shape for i in node.inputs],
                                node.attrs, nwhere)
            if shape is not None and shape != self.tensors[out].shape:
                raise ProgramError(f"{nwhere}: output {out!r} declared {self.tensors[out].shape}, "
                                   f"op gives {shape}")
            available.add(out)
        for name in self.outputs:
            if name not in available:
                raise ProgramError(f"{where}: output {name!r} is never produced")
        return self


def make_node(name: str, op: str | OpKind, inputs, outputs, attrs: dict | None = None) -> Node:
    """A node with its attributes checked and defaults filled."""
    try:
        kind = OpKind(op)
    except ValueError:
        raise ProgramError(f"node {name!r}: unknown op {op!r}; known: "
                           f"{', '.join(k.value for k in OpKind)}") from None
    return Node(name, kind, tuple(inputs), tuple(outputs),
                normalise_attrs(kind, dict(attrs or {}), f"node {name!r}"))


def _check_tensor(t: TensorInfo, where: str) -> None:
    if not all(isinstance(d, int) and d >= 1 for d in t.shape):
        raise ProgramError(f"{where}: shape {t.shape} must be positive integers")
    if t.scale is not None:
        if not t.scale or not all(math.isfinite(s) and s > 0 for s in t.scale):
            raise ProgramError(f"{where}: scale {t.scale} must be finite and > 0")
    if t.is_int:
        lo, hi = t.dtype.qmin, t.dtype.qmax
        if any(not lo <= z <= hi for z in t.zero_point):
            raise ProgramError(f"{where}: zero point {t.zero_point} outside {t.dtype} [{lo}, {hi}]")
    n_ch = max(len(t.scale or (0,)), len(t.zero_point))
    if n_ch > 1:
        if t.axis is None or not -len(t.shape) <= t.axis < len(t.shape):
            raise ProgramError(f"{where}: per-channel quantization needs a valid axis, got {t.axis}")
        if t.shape[t.axis] != n_ch or len(t.zero_point) not in (1, n_ch) or \
                (t.scale is not None and len(t.scale) not in (1, n_ch)):
            raise ProgramError(f"{where}: {n_ch} channel scales/zero points for axis size "
                               f"{t.shape[t.axis]}")
    if t.data is not None:
        if tuple(t.data.shape) != t.shape:
            raise ProgramError(f"{where}: data shape {t.data.shape} != declared {t.shape}")
        if t.is_int:
            if t.data.dtype.kind not in "iu":
                raise ProgramError(f"{where}: integer tensor holds {t.data.dtype} data")
            if t.data.size and (t.data.min() < t.dtype.qmin or t.data.max() > t.dtype.qmax):
                raise ProgramError(f"{where}: data outside {t.dtype} range "
                                   f"[{t.dtype.qmin}, {t.dtype.qmax}]")
        elif t.data.dtype != np.float32:
            raise ProgramError(f"{where}: float tensor holds {t.data.dtype} data")


def _check_node_types(program: Program, node: Node, where: str) -> None:
    ts = [program.tensors[i] for i in node.inputs]
    out = program.tensors[node.outputs[0]]
    estimate_only = not program.executable
    if node.op in (OpKind.CONV2D, OpKind.FULLY_CONNECTED) and len(ts) > 1 and ts[1].data is None \
            and not estimate_only:
        raise ProgramError(f"{where}: {node.op.value} weights {ts[1].name!r} must be a constant")
    if estimate_only or node.op is OpKind.FALLBACK:
        return
    if node.op is OpKind.QUANTIZE:
        if ts[0].is_int or not out.is_int or out.scale is None:
            raise ProgramError(f"{where}: quantize takes f32 to an integer tensor with a scale")
        return
    if node.op is OpKind.DEQUANTIZE:
        if not ts[0].is_int or out.is_int or ts[0].scale is None:
            raise ProgramError(f"{where}: dequantize takes an integer tensor with a scale to f32")
        return
    if node.op is OpKind.SOFTMAX and len(ts) > 1 and not ts[1].is_int:
        raise ProgramError(f"{where}: softmax key mask {ts[1].name!r} must be an integer tensor "
                           f"(nonzero = valid position), is {ts[1].dtype}")
    for t in ts + [out]:
        if not t.is_int:
            raise ProgramError(f"{where}: {node.op.value} needs integer tensors; {t.name!r} is {t.dtype}")
    if node.op is OpKind.GATHER:
        table = ts[0]
        if (table.dtype, table.scale, table.zero_point) != (out.dtype, out.scale, out.zero_point):
            raise ProgramError(f"{where}: gather writes its table's rows: output {out.name!r} "
                               f"must have the table's dtype, scale and zero point")
    if node.op in (OpKind.CONCAT, OpKind.MINIMUM):      # no rescale: one grid in and out
        first = ts[0]
        for t in ts[1:] + [out]:
            if (t.dtype, t.scale, t.zero_point) != (first.dtype, first.scale, first.zero_point):
                raise ProgramError(
                    f"{where}: {node.op.value} operands must share dtype, scale and zero point "
                    f"({first.name!r}: {first.dtype} {first.scale} {first.zero_point}; "
                    f"{t.name!r}: {t.dtype} {t.scale} {t.zero_point}); insert a requantize")
    if node.op is OpKind.LOOKUP_TABLE and node.attrs["interpolated"]:
        _check_interpolated_table(node, ts[0], out, where)
    elif node.op is OpKind.LOOKUP_TABLE:
        if ts[0].dtype.bits > 16 or len(node.attrs["table"]) != 1 << ts[0].dtype.bits:
            raise ProgramError(f"{where}: lookup_table needs 2**bits = {1 << min(ts[0].dtype.bits, 30)}"
                               f" entries for {ts[0].dtype}, has {len(node.attrs['table'])}")
    if node.op is OpKind.SOFTMAX:
        if ts[0].dtype.bits > 16 or len(node.attrs["exp_table"]) != 1 << ts[0].dtype.bits:
            raise ProgramError(f"{where}: softmax exp_table needs 2**bits entries for {ts[0].dtype}")
        if out.scale is None or len(out.scale) != 1 or \
                not math.log2(out.scale[0]).is_integer() or out.scale[0] > 1:
            raise ProgramError(f"{where}: softmax output scale must be 2**-k, got {out.scale}")
    if node.op in (OpKind.REQUANTIZE, OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.MEAN) and \
            out.scale is None:
        raise ProgramError(f"{where}: {node.op.value} output {out.name!r} needs a scale")
    if node.op in (OpKind.ADD, OpKind.SUB, OpKind.MUL) and \
            (ts[0].scale is None or ts[1].scale is None):
        raise ProgramError(f"{where}: {node.op.value} operands need scales")
    if node.op is OpKind.MEAN and (ts[0].scale is None or len(ts[0].scale) != 1
                                   or len(out.scale) != 1):
        raise ProgramError(f"{where}: mean needs per-tensor scales on its input and output")
    if node.op is OpKind.REQUANTIZE and len(node.attrs["real_multiplier"]) > 1:
        axis = node.attrs["axis"]
        if not -len(out.shape) <= axis < len(out.shape) or out.shape[axis] != len(node.attrs["real_multiplier"]):
            raise ProgramError(f"{where}: {len(node.attrs['scale'])} per-channel scales do not match "
                               f"axis {axis} of {out.shape}")


def _check_interpolated_table(node: Node, x: TensorInfo, out: TensorInfo, where: str) -> None:
    """TOSA's TABLE for 16-bit inputs: a signed 16-bit input, 513 signed 16-bit entries whose
    neighbours differ by a 16-bit slope, and an output wide enough for entry x 2**7."""
    table = node.attrs["table"]
    if x.dtype != S16:
        raise ProgramError(f"{where}: an interpolated lookup_table reads s16, not {x.dtype}")
    if len(table) != INTERPOLATED_TABLE_ENTRIES:
        raise ProgramError(f"{where}: an interpolated lookup_table needs "
                           f"{INTERPOLATED_TABLE_ENTRIES} entries, has {len(table)}")
    if min(table) < S16.qmin or max(table) > S16.qmax:
        raise ProgramError(f"{where}: interpolated lookup_table entries must be s16, found "
                           f"[{min(table)}, {max(table)}]")
    slopes = [b - a for a, b in zip(table, table[1:])]
    if min(slopes) < S16.qmin or max(slopes) > S16.qmax:
        raise ProgramError(f"{where}: interpolated lookup_table neighbours differ by more than "
                           f"s16 ([{min(slopes)}, {max(slopes)}])")
    if out.dtype.bits < 24 or not out.dtype.signed:
        raise ProgramError(f"{where}: an interpolated lookup_table writes entry x 2**7 (up to 23 "
                           f"bits signed); output {out.name!r} is {out.dtype}")


# ---------------------------------------------------------------------- file format

def _tensor_to_json(t: TensorInfo, constant_index: int | None) -> dict:
    return {"shape": list(t.shape), "dtype": t.dtype.name,
            "scale": None if t.scale is None else [float(s) for s in t.scale],
            "zero_point": [int(z) for z in t.zero_point], "axis": t.axis,
            "constant": constant_index}


def _program_doc(program: Program) -> tuple[dict, list[np.ndarray]]:
    """The ``program.json`` document (as it reads back from JSON) and the constants it indexes."""
    tensors, arrays = {}, []
    for name, t in program.tensors.items():
        index = None
        if t.data is not None:
            index = len(arrays)
            arrays.append(np.ascontiguousarray(t.data))
        tensors[name] = _tensor_to_json(t, index)
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "name": program.name,
           "inputs": program.inputs, "outputs": program.outputs, "tensors": tensors,
           "nodes": [{"name": n.name, "op": n.op.value, "inputs": list(n.inputs),
                      "outputs": list(n.outputs), "attrs": n.attrs} for n in program.nodes],
           "metadata": program.metadata}
    # hash what a reader will see: JSON turns tuples into lists and every key into a string
    return json.loads(json.dumps(doc, sort_keys=True)), arrays


def program_content_hash(doc: dict, arrays: list[np.ndarray]) -> str:
    """The content hash a Program file stores: its document (less the hash) and constants."""
    return content_digest({"program": {k: v for k, v in doc.items() if k != HASH_KEY},
                           "constants": list(arrays)})


def _zip_entry(name: str) -> zipfile.ZipInfo:
    # a fixed date and mode: the same Program is the same bytes, so a file hash identifies it
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def program_bytes(program: Program) -> bytes:
    """The ``.program`` file of ``program``: byte for byte the same for the same Program."""
    program.validate()
    doc, arrays = _program_doc(program)
    doc[HASH_KEY] = program_content_hash(doc, arrays)
    blob = io.BytesIO()
    with zipfile.ZipFile(blob, "w") as zf:
        zf.writestr(_zip_entry("program.json"), json.dumps(doc, indent=1, sort_keys=True))
        for i, arr in enumerate(arrays):
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            zf.writestr(_zip_entry(f"constants/{i}.npy"), buf.getvalue())
    return blob.getvalue()


def save_program(program: Program, path: str | os.PathLike) -> Path:
    """Write ``program`` to ``path`` atomically (temporary name, then rename)."""
    return atomic_write_bytes(path, program_bytes(program))


def _field(doc: dict, key: str, kind, where: str):
    if not isinstance(doc, dict) or key not in doc:
        raise ProgramError(f"{where}: missing field {key!r}")
    value = doc[key]
    if kind is not None and not isinstance(value, kind):
        raise ProgramError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, "
                           f"got {type(value).__name__}")
    return value


def _tensor_from_json(name: str, d: dict, arrays: dict, zf: zipfile.ZipFile, where: str) -> TensorInfo:
    w = f"{where}: tensor {name!r}"
    shape = _field(d, "shape", list, w)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise ProgramError(f"{w}: shape must be a list of integers")
    try:
        dtype = parse_dtype(_field(d, "dtype", str, w))
    except SimulatorError as exc:
        raise ProgramError(f"{w}: {exc}") from None
    scale = d.get("scale")
    if scale is not None and (not isinstance(scale, list) or
                              not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                      for s in scale)):
        raise ProgramError(f"{w}: scale must be a list of numbers or null")
    zp = _field(d, "zero_point", list, w)
    if not zp or not all(isinstance(z, int) and not isinstance(z, bool) for z in zp):
        raise ProgramError(f"{w}: zero_point must be a non-empty list of integers")
    axis = d.get("axis")
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool)):
        raise ProgramError(f"{w}: axis must be an integer or null")
    unknown = set(d) - {"shape", "dtype", "scale", "zero_point", "axis", "constant"}
    if unknown:
        raise ProgramError(f"{w}: unknown field(s) {sorted(unknown)}")
    data = None
    index = d.get("constant")
    if index is not None:
        if not isinstance(index, int) or isinstance(index, bool):
            raise ProgramError(f"{w}: constant must be an integer index or null")
        member = f"constants/{index}.npy"
        try:
            info = zf.getinfo(member)
            if info.file_size > MAX_CONSTANT_BYTES:
                raise ProgramError(f"{w}: constant {member} is larger than {MAX_CONSTANT_BYTES} bytes")
            data = arrays.get(index)
            if data is None:
                data = arrays[index] = np.load(io.BytesIO(zf.read(member)), allow_pickle=False)
        except KeyError:
            raise ProgramError(f"{w}: constant {member} is missing from the file") from None
        except ProgramError:
            raise
        except Exception as exc:  # numpy reports a damaged .npy in many ways
            raise ProgramError(f"{w}: constant {member} is unreadable ({type(exc).__name__}: {exc})") from None
        if data.dtype.kind not in "iuf":
            raise ProgramError(f"{w}: constant dtype {data.dtype} not allowed")
    return TensorInfo(name, tuple(shape), dtype,
                      None if scale is None else tuple(float(s) for s in scale),
                      tuple(zp), axis, data)


def _check_sizes(zf: zipfile.ZipFile, where: str) -> None:
    """Refuse, before inflating anything, a file that would take unbounded memory to load."""
    total = 0
    for info in zf.infolist():
        if info.filename == "program.json" and info.file_size > MAX_JSON_BYTES:
            raise ProgramError(f"{where}: program.json inflates to {info.file_size:,} bytes, more "
                               f"than the {MAX_JSON_BYTES:,} a Program may hold")
        if info.filename.startswith("constants/"):
            total += info.file_size
    if total > MAX_TOTAL_CONSTANT_BYTES:
        raise ProgramError(f"{where}: constants inflate to {total:,} bytes, more than the "
                           f"{MAX_TOTAL_CONSTANT_BYTES:,} a Program may hold")


def load_program(path: str | os.PathLike) -> Program:
    """Read and validate a Program file; any defect is a ProgramError naming the file."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ProgramError(f"{where}: no such Program file")
    try:
        with zipfile.ZipFile(path) as zf:
            _check_sizes(zf, where)
            try:
                doc = json.loads(zf.read("program.json").decode("utf-8"))
            except KeyError:
                raise ProgramError(f"{where}: not a Program file (no program.json inside)") from None
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ProgramError(f"{where}: program.json is not valid JSON ({exc})") from None
            if not isinstance(doc, dict):
                raise ProgramError(f"{where}: program.json must hold an object")
            if doc.get("format") != FORMAT:
                raise ProgramError(f"{where}: format is {doc.get('format')!r}, expected {FORMAT!r}")
            if doc.get("version") != FORMAT_VERSION:
                older = " (written by an older archnet: convert or export it again)" \
                    if doc.get("version") == 1 else ""
                raise ProgramError(f"{where}: version {doc.get('version')!r} unsupported "
                                   f"(this simulator reads version {FORMAT_VERSION}){older}")
            tensors_doc = _field(doc, "tensors", dict, where)
            arrays: dict[int, np.ndarray] = {}
            tensors = {name: _tensor_from_json(name, d, arrays, zf, where)
                       for name, d in tensors_doc.items()}
            stored = doc.get(HASH_KEY)
            if not isinstance(stored, str):
                raise ProgramError(f"{where}: program.json carries no {HASH_KEY} (damaged)")
            actual = program_content_hash(doc, [arrays[i] for i in sorted(arrays)])
            if actual != stored:
                raise ProgramError(f"{where}: content does not match its {HASH_KEY} (stored "
                                   f"{stored[:12]}..., content {actual[:12]}...): the file is "
                                   f"damaged")
            nodes = []
            for i, nd in enumerate(_field(doc, "nodes", list, where)):
                nw = f"{where}: node #{i}"
                name = _field(nd, "name", str, nw)
                ins = _field(nd, "inputs", list, nw)
                outs = _field(nd, "outputs", list, nw)
                if not all(isinstance(x, str) for x in ins + outs):
                    raise ProgramError(f"{nw}: inputs and outputs must be tensor names")
                attrs = _field(nd, "attrs", dict, nw)
                nodes.append(make_node(name, _field(nd, "op", str, nw), ins, outs, attrs))
            inputs = _field(doc, "inputs", list, where)
            outputs = _field(doc, "outputs", list, where)
            if not all(isinstance(x, str) for x in inputs + outputs):
                raise ProgramError(f"{where}: inputs and outputs must be tensor names")
            metadata = doc.get("metadata", {})
            if not isinstance(metadata, dict):
                raise ProgramError(f"{where}: metadata must be an object")
            program = Program(_field(doc, "name", str, where), tensors, nodes, inputs, outputs,
                              metadata)
    except zipfile.BadZipFile:
        raise ProgramError(f"{where}: not a Program file (not a zip archive, or truncated)") from None
    except (OSError, EOFError, ValueError, zlib.error, NotImplementedError, RuntimeError,
            RecursionError) as exc:  # zip/zlib report damage in all of these ways
        if isinstance(exc, SimulatorError):
            raise
        raise ProgramError(f"{where}: unreadable ({type(exc).__name__}: {exc})") from None
    except SimulatorError as exc:
        if str(exc).startswith(where):
            raise
        raise ProgramError(f"{where}: {exc}") from None
    return program.validate(where)


def with_tensor(program: Program, tensor: TensorInfo) -> Program:
    """A copy of ``program`` with one tensor added or replaced."""
    tensors = dict(program.tensors)
    tensors[tensor.name] = tensor
    return replace(program, tensors=tensors)
