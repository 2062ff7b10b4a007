"""Run one TFLite graph three ways and compare: the simulator (both backends) under the
tflite-reference profile against LiteRT's reference kernels, on every tensor both hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulator.execute import execute
from simulator.profiles import load_profile
from simulator.tflite_import import import_tflite
from simulator.tflite_import.peers import program_views, run_litert

CHIP = load_profile("tflite-reference")


def first_mismatch(program, trace, litert) -> str | None:
    """'tensor [index]: simulator=a litert=b (n of m differ)' for the first node in execution
    order whose output differs, or None."""
    for node in program.nodes:
        name = node.outputs[0]
        if name not in litert:
            continue
        a, b = np.asarray(trace[name], np.int64), np.asarray(litert[name], np.int64)
        differ = a != b
        if differ.any():
            idx = tuple(int(i) for i in np.argwhere(differ)[0])
            return (f"{node.op.value} {name}{list(idx)}: simulator={a[idx]} litert={b[idx]} "
                    f"({int(differ.sum())} of {differ.size} differ)")
    return None


def check_against_litert(model: bytes, inputs_list, tmp_path: Path,
                         backends=("kernels",)) -> int:
    """Assert equality on every compared element; returns how many elements were compared."""
    path = tmp_path / "model.tflite"
    path.write_bytes(model)
    program = import_tflite(path)
    compared = 0
    for inputs in inputs_list:
        litert = program_views(program, run_litert(path, inputs, "reference"))
        assert set(program.outputs) <= set(litert), "every graph output is compared"
        for backend in backends:
            trace = execute(program, CHIP, inputs, backend=backend).tensors
            bad = first_mismatch(program, trace, litert)
            assert bad is None, f"{backend}: {bad}"
        compared += sum(np.asarray(v).size for v in litert.values())
    return compared
