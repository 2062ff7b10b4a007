"""Atomic checkpoints: a crash or kill never leaves a half-written file where a good one was."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from archnet.errors import CheckpointError
from simulator.fileio import atomic_write_bytes


def save_atomic(obj, path: str | os.PathLike) -> Path:
    """torch.save through a temporary name in the same folder, then rename over ``path``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch reports a damaged file in many ways
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an archnet checkpoint")
    return obj
