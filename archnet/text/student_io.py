"""Text student checkpoints: ``{"format", "version", "config", "state_dict", "metadata"}``,
a plain dict (``weights_only`` loadable) written atomically, rebuilt exactly on load."""

from __future__ import annotations

import os
from pathlib import Path

from archnet.errors import ArchnetError, CheckpointError
from archnet.teachers import _plain
from archnet.text.student import TextStudent, TextStudentConfig
from archnet.torchfile import load_torch, save_torch

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
    obj = load_torch(path, "student checkpoint", weights_only=True)
    if not is_text_checkpoint(obj):
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not an archnet text student checkpoint (format {found!r})")
    if obj.get("version") != TEXT_STUDENT_VERSION:
        raise CheckpointError(f"{path}: text student version {obj.get('version')!r}, this archnet "
                              f"reads {TEXT_STUDENT_VERSION}")
    try:
        student = TextStudent(TextStudentConfig.from_dict(obj["config"]))
        student.load_state_dict(obj["state_dict"], strict=True)
    except (ArchnetError, KeyError, TypeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: weights do not fit the text student config: {first[:300]}") from None
    return student.eval(), dict(obj.get("metadata") or {})
