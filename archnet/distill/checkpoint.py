"""Distillation checkpoints: atomic writes, no code on load, content hash verified (see
``archnet.torchfile``)."""

from __future__ import annotations

import os

from archnet.torchfile import load_torch, save_torch

save_atomic = save_torch


def load_checkpoint(path: str | os.PathLike) -> dict:
    return load_torch(path, "checkpoint")
