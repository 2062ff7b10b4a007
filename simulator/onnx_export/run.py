"""Run an exported ONNX file and read back the Program's tensors, to compare with ``execute``.

``run_exported(path, program, inputs)`` feeds the Program's integer inputs (as the graph's
types: integers, or real values ``(x - zp) * scale`` where the graph input is float), runs
onnxruntime (or ``onnx.reference``; QONNX graphs always run on the reference with our ``Quant``)
and returns ``{program tensor: int64 array}`` for every ONNX value the export recorded as holding
a Program tensor (``archnet.values``): integer values as they are (INT4/UINT4 ones through a
Cast, since onnxruntime's Python API returns no 4-bit arrays), float values of a QONNX graph
back on their integer grid, ``rint(v / scale) + zero_point``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from simulator.errors import SimulatorError
from simulator.ir.program import Program
from simulator.onnx_export.graph import FLOAT, INT4, INT8, UINT4, UINT8


def exported_values(model) -> dict[str, str]:
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props.get("archnet.values", "{}"))


def _with_outputs(model, names: list[str]):
    """A copy of ``model`` whose graph outputs include ``names`` (4-bit ones cast to 8 bits);
    returns it and {ONNX value: output name}."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    types = {vi.name: vi for vi in list(g.input) + list(g.value_info) + list(g.output)}
    present = {o.name for o in g.output}
    read = {}
    for name in names:
        vi = types.get(name)
        et = vi.type.tensor_type.elem_type if vi is not None else 0
        if et in (INT4, UINT4):
            cast = f"{name}/as_8bit"
            g.node.append(helper.make_node("Cast", [name], [cast],
                                           to=INT8 if et == INT4 else UINT8))
            g.output.append(helper.make_empty_tensor_value_info(cast))
            read[name] = cast
        else:
            if name not in present and vi is not None:
                g.output.append(vi)
            elif name not in present:
                g.output.append(helper.make_empty_tensor_value_info(name))
            read[name] = name
    return model, read


def _feeds(model, program: Program, inputs: dict) -> dict:
    from onnx import helper

    init = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        t = program.tensors[vi.name]
        x = np.asarray(inputs[vi.name])
        et = vi.type.tensor_type.elem_type
        if et == FLOAT and t.is_int:  # a float graph input of an integer tensor: real values
            x = (x.astype(np.float32) - np.float32(t.zero_point[0])) * np.float32(t.scale[0])
        feeds[vi.name] = x.astype(helper.tensor_dtype_to_np_dtype(et))
    return feeds


def _to_grid(t, value) -> np.ndarray:
    v = np.asarray(value)
    if v.dtype.kind in "iu" or not t.is_int:
        return v.astype(np.int64) if v.dtype.kind in "iu" else v
    scale = np.asarray(t.scale, np.float64)
    zp = np.asarray(t.zero_point, np.float64)
    if t.axis is not None and (scale.size > 1 or zp.size > 1):
        shape = [1] * v.ndim
        shape[t.axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (np.rint(v.astype(np.float64) / scale) + zp).astype(np.int64)


def run_exported(path, program: Program, inputs: dict, *, runtime: str = "onnxruntime",
                 intermediates: bool = True, optimize: bool = False) -> dict[str, np.ndarray]:
    import onnx

    model = onnx.load(os.fspath(path))
    values = exported_values(model)
    form = {p.key: p.value for p in model.metadata_props}.get("archnet.form")
    wanted = [v for v, t in values.items() if program.tensors[t].data is None] \
        if intermediates else [v for v, t in values.items() if t in program.outputs]
    model, read = _with_outputs(model, wanted)
    feeds = _feeds(model, program, inputs)
    if form == "qonnx" or runtime == "reference":
        from simulator.onnx_export.qonnx import reference_evaluator
        try:
            ev = reference_evaluator(model)
            names = list(ev.output_names)
            got = dict(zip(names, ev.run(None, feeds)))
        except Exception as exc:
            raise SimulatorError(f"{path}: onnx.reference fails ({type(exc).__name__}: "
                                 f"{exc})") from None
    else:
        from simulator.onnx_import.peers import ort_run
        got = ort_run(model, feeds, optimize, where=str(path))
    out = {}
    for v in wanted:
        t = program.tensors[values[v]]
        out[values[v]] = _to_grid(t, got[read[v]])
    return out
