"""Distillation checkpoints: atomic writes, one-line errors (see ``archnet.torchfile``)."""

from __future__ import annotations

import os

from archnet.errors import CheckpointError
from archnet.torchfile import load_torch, save_torch

save_atomic = save_torch


def load_checkpoint(path: str | os.PathLike) -> dict:
    obj = load_torch(path, "checkpoint", weights_only=False)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an archnet checkpoint")
    return obj
