"""Text student checkpoints: ``{"format", "version", "config", "state_dict", "metadata"}``,
a plain dict (``weights_only`` loadable) written atomically, rebuilt exactly on load."""

from __future__ import annotations

import os
from pathlib import Path

from archnet.errors import CheckpointError
from archnet.teachers import _plain
from archnet.text.student import TextStudent, TextStudentConfig
from archnet.torchfile import build_with_state, load_torch, save_torch

TEXT_STUDENT_FORMAT = "archnet-text-student-checkpoint"
TEXT_STUDENT_VERSION = 1


def save_text_student(path: str | os.PathLike, student: TextStudent, metadata: dict | None = None) -> Path:
    return save_torch({
        "format": TEXT_STUDENT_FORMAT, "version": TEXT_STUDENT_VERSION, "config": student.config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
        "metadata": _plain(dict(metadata or {}), "student metadata"),
    }, path)


def is_text_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == TEXT_STUDENT_FORMAT


def load_text_student(path: str | os.PathLike) -> tuple[TextStudent, dict]:
    obj = load_torch(path, "student checkpoint")
    if not is_text_checkpoint(obj):
        raise CheckpointError(f"{path}: not an archnet text student checkpoint "
                              f"(format {obj.get('format')!r})")
    if obj.get("version") != TEXT_STUDENT_VERSION:
        raise CheckpointError(f"{path}: text student version {obj.get('version')!r}, this archnet "
                              f"reads {TEXT_STUDENT_VERSION}")
    if not isinstance(obj.get("config"), dict):
        raise CheckpointError(f"{path}: text student checkpoint lacks its config")
    student = build_with_state(lambda: TextStudent(TextStudentConfig.from_dict(obj["config"])),
                               obj.get("state_dict"), path, "weights")
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise CheckpointError(f"{path}: student metadata must be a dict")
    return student, dict(meta or {})
