"""torch.save / torch.load for archnet's files: atomic writes and one-line errors naming the file.

Teachers, students and distillation checkpoints are all ``torch.save`` of a plain dict. Writing
goes through a temporary name and a rename (``simulator.fileio``), so a crash or kill never leaves
half a file where a good one was; reading turns every way torch reports a missing, damaged or
foreign file into a ``CheckpointError`` that names it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from archnet.errors import CheckpointError
from simulator.fileio import atomic_write_bytes


def save_torch(obj, path: str | os.PathLike) -> Path:
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_torch(path: str | os.PathLike, what: str, weights_only: bool = True):
    """The object in ``path``; ``what`` names the kind of file in error messages."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch reports damaged files in many ways
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: unreadable {what} ({type(exc).__name__}: {msg[:200]})") from None
