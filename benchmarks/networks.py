"""The networks the benchmarks price, as a user gets them: built in code
(``archnet.teachers.imagenet``), exported with ``torch.onnx.export`` and imported estimate-only."""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

from simulator.ir import Program


@cache
def exported_program(name: str, size: int, **options) -> Program:
    """``name`` (a key of ``ARCHITECTURES``, with its ``options``) at ``size`` x ``size``."""
    import torch

    from archnet.teachers.imagenet import build_architecture, export_onnx
    from simulator.onnx_import import import_onnx

    torch.manual_seed(0)  # weights do not change the Program; the seed keeps exports identical
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}_{size}.onnx"
        export_onnx(build_architecture(name, **options), path, input_size=size)
        return import_onnx(path)
