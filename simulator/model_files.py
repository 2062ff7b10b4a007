"""Model and data files of the command line: a Program, an ONNX or TFLite file or the bundled
example in; input tensors from ``.npy``/``.npz`` (never pickles); outputs to ``.npy``/``.npz``,
atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from simulator.errors import InputError, ModelImportError
from simulator.fileio import atomic_write_bytes

EXAMPLE = "the bundled example CNN (simulator.examples)"


def load_model(path: str | None, input_shapes: dict | None = None):
    """A Program from a ``.program`` file, an ONNX file, a TFLite file (recognised by its
    flatbuffer identifier "TFL3" at bytes 4..8, whatever its suffix), or the bundled example
    when None."""
    from simulator.ir.program import load_program
    if path is None:
        from simulator.examples import example_program
        return example_program()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such model file (give a .program, .onnx or .tflite file)")
    with open(p, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"PK"):
        return load_program(p)
    if magic[4:8] == b"TFL3" or p.suffix.lower() == ".tflite":
        from simulator.tflite_import import import_tflite
        return import_tflite(p)
    try:
        from simulator.onnx_import import import_onnx
    except ImportError as exc:  # pragma: no cover - the importer ships with the package
        raise ModelImportError(f"{path}: ONNX import unavailable ({exc})") from None
    return import_onnx(p, input_shapes=input_shapes)


def load_inputs(path: str | None, program) -> dict[str, np.ndarray]:
    if path is None:
        if program.metadata.get("source") == "simulator.examples.example_program":
            from simulator.examples import example_input
            return {program.inputs[0]: example_input()}
        raise InputError("--input is required: a .npy (one input) or .npz (inputs by name)")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such input file")
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as exc:  # numpy raises many kinds for a damaged file
        raise InputError(f"{path}: not a readable .npy/.npz file ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, np.ndarray):
        if len(program.inputs) != 1:
            raise InputError(f"{path}: one array given, the model takes {len(program.inputs)} inputs "
                             f"{program.inputs}: use an .npz keyed by input name")
        return {program.inputs[0]: loaded}
    with loaded:
        missing = [n for n in program.inputs if n not in loaded.files]
        if missing:
            raise InputError(f"{path}: holds {sorted(loaded.files)[:8]}, no array named "
                             f"{missing[0]!r}; the model takes {program.inputs}")
        arrays = {}
        for k in loaded.files:
            try:
                arrays[k] = loaded[k]
            except Exception as exc:  # a damaged, truncated or pickled member
                raise InputError(f"{path}: member {k!r} is unreadable ({type(exc).__name__}: "
                                 f"{exc})") from None
        return arrays


def _atomic_save(path: Path, writer) -> None:
    buf = io.BytesIO()
    writer(buf)
    atomic_write_bytes(path, buf.getvalue())


def save_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    """One array to ``.npy``; several (or an ``.npz`` name) to ``.npz`` keyed by tensor name."""
    p = Path(path)
    if p.suffix == ".npy":
        if len(arrays) != 1:
            raise InputError(f"{path}: the model has {len(arrays)} outputs; use an .npz name")
        (value,) = arrays.values()
        _atomic_save(p, lambda fh: np.save(fh, value, allow_pickle=False))
    elif p.suffix == ".npz":
        _atomic_save(p, lambda fh: np.savez(fh, **arrays))
    else:
        raise InputError(f"{path}: output must end in .npy or .npz")
