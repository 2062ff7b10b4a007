"""LiteRT (PyPI ``ai-edge-litert``) as a peer: run a .tflite with its reference kernels or its
default optimised interpreter, and line its tensors up with the Program's.

LiteRT is optional: only ``archnet simulate --check`` and the conformance tests need it, and
its absence is a one-line error.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from simulator.errors import InputError, SimulatorError
from simulator.ir.program import Program
from simulator.tflite_import.translate import NHWC_TO_NCHW

RESOLVERS = {"reference": "BUILTIN_REF", "optimised": "AUTO",
             "optimised-no-xnnpack": "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}


def litert_interpreter():
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        raise SimulatorError("LiteRT is not installed: pip install ai-edge-litert (needed only "
                             "for --check on a .tflite)") from None
    return interpreter


def run_litert(path: str | os.PathLike, inputs: dict[str, np.ndarray],
               kernels: str = "reference") -> dict[str, np.ndarray]:
    """Every named tensor LiteRT holds after one invocation (intermediates preserved), by
    TFLite name. ``kernels``: "reference" (BUILTIN_REF), "optimised" (the default resolver,
    XNNPACK included), "optimised-no-xnnpack"."""
    lite = litert_interpreter()
    resolver = getattr(lite.OpResolverType, RESOLVERS[kernels])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserve_all_tensors is a debugging mode: we debug
        it = lite.Interpreter(model_path=os.fspath(path), experimental_op_resolver_type=resolver,
                              experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    for d in it.get_input_details():
        if d["name"] not in inputs:
            raise InputError(f"{path}: LiteRT input {d['name']!r} has no array; inputs given: "
                             f"{sorted(inputs)}")
        it.set_tensor(d["index"], np.asarray(inputs[d["name"]]).astype(d["dtype"]))
    it.invoke()
    out = {}
    for d in it.get_tensor_details():
        if not d["name"]:
            continue
        try:
            out[d["name"]] = np.array(it.get_tensor(d["index"]))
        except ValueError:  # a tensor LiteRT does not hold (a delegate's internal)
            continue
    return out


def program_views(program: Program, litert: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LiteRT's tensors under the Program's names, NHWC transposed where the Program keeps
    NCHW (``metadata['tflite_views']``); tensors LiteRT lacks are left out."""
    views = program.metadata.get("tflite_views", {})
    out = {}
    for tfl_name, by_layout in views.items():
        if tfl_name not in litert:
            continue
        value = litert[tfl_name]
        for layout, name in by_layout.items():
            if name not in program.tensors or program.tensors[name].data is not None:
                continue
            v = value.transpose(NHWC_TO_NCHW) if layout == "nchw" and value.ndim == 4 else value
            if tuple(v.shape) == program.tensors[name].shape:
                out[name] = v
    return out
