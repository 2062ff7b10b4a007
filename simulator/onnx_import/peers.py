"""Run an ONNX file on the peers the simulator is checked against: onnxruntime and
``onnx.reference.ReferenceEvaluator``. Both return ``{tensor name: array}``; with
``intermediates=True`` every value a node produces is added as a graph output of a copy of the
model, so a simulator trace (which keeps ONNX tensor names) can be compared layer by layer.

onnxruntime is an optional dependency (the ``peers`` extra): it is imported only here, inside
the function.
"""

from __future__ import annotations

import os

import numpy as np

from simulator.errors import ModelImportError, SimulatorError
from simulator.onnx_import.reader import one_line


def _load(path):
    import onnx

    try:
        return onnx.load(os.fspath(path))
    except Exception as exc:
        raise ModelImportError(f"{path}: cannot be loaded ({type(exc).__name__}: "
                               f"{one_line(exc)})") from None


def _with_all_outputs(model):
    """A copy of ``model`` whose graph outputs include every node output."""
    import onnx
    from onnx import helper, shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    known = {vi.name: vi for vi in inferred.graph.value_info}
    present = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if not name or name in present:
                continue
            present.add(name)
            if name in known:
                model.graph.output.append(known[name])
            else:
                model.graph.output.append(helper.make_empty_tensor_value_info(name))
    return model


def _feeds(model, inputs: dict) -> dict:
    """Inputs cast to the element types the model declares (the simulator holds int64)."""
    from onnx import helper

    init = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        if vi.name not in inputs:
            raise SimulatorError(f"missing input {vi.name!r}")
        arr = np.asarray(inputs[vi.name])
        et = vi.type.tensor_type.elem_type
        if et:
            dtype = helper.tensor_dtype_to_np_dtype(et)
            if arr.dtype.kind in "iu" and np.dtype(dtype).kind in "iu":
                info = np.iinfo(dtype)
                if arr.size and (arr.min() < info.min or arr.max() > info.max):
                    raise SimulatorError(f"input {vi.name!r}: values outside {np.dtype(dtype)}")
            arr = arr.astype(dtype)
        feeds[vi.name] = arr
    return feeds


def run_onnxruntime(path, inputs: dict, intermediates: bool = False,
                    optimize: bool = False) -> dict[str, np.ndarray]:
    """Outputs (and with ``intermediates`` every node output) of ``path`` under onnxruntime's
    CPU provider. Graph optimisations are off by default so that every ONNX node runs as the
    kernel it names (fusions would hide intermediates); ``optimize=True`` turns them all on."""
    model = _load(path)
    if intermediates:
        model = _with_all_outputs(model)
    return ort_run(model, _feeds(model, inputs), optimize, where=str(path))


def ort_run(model, feeds: dict, optimize: bool = False, where: str = "model") -> dict[str, np.ndarray]:
    """Every graph output of an in-memory ONNX ``model`` under onnxruntime's CPU provider, one
    thread; graph optimisations off unless ``optimize``; failures as one-line SimulatorErrors."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SimulatorError("onnxruntime is not installed (pip install 'archnet[peers]')") \
            from None
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, feeds)
    except SimulatorError:
        raise
    except Exception as exc:
        raise SimulatorError(f"{where}: onnxruntime fails ({one_line(exc)})") from None
    return dict(zip(names, values))


def run_onnx_reference(path, inputs: dict, intermediates: bool = False) -> dict[str, np.ndarray]:
    """Outputs (and with ``intermediates`` every node output) of ``path`` under
    ``onnx.reference.ReferenceEvaluator``."""
    from onnx.reference import ReferenceEvaluator

    model = _load(path)
    if intermediates:
        model = _with_all_outputs(model)
    try:
        evaluator = ReferenceEvaluator(model)
        names = list(evaluator.output_names)
        values = evaluator.run(None, _feeds(model, inputs))
    except SimulatorError:
        raise
    except Exception as exc:
        raise SimulatorError(f"{path}: onnx.reference fails ({type(exc).__name__}: "
                             f"{one_line(exc)})") from None
    return dict(zip(names, (np.asarray(v) for v in values)))
