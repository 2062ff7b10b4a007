"""Student checkpoints: the architecture (config), the numbers (state_dict) and what made them.

A student checkpoint is a ``torch.save`` of a plain dict (loadable with ``weights_only=True``)::

    {"format": "archnet-student", "version": 1, "config": {...}, "state_dict": {...},
     "metadata": {"teacher": ..., "teacher_sha256": ..., "profile": ..., "bits": [...], ...},
     "content_sha256": ...}

(``archnet.torchfile``: read without running code, the content hash verified; the teacher's
``content_sha256`` is what ``teacher_sha256`` records.)

``save_student`` writes it atomically; ``load_student`` rebuilds the exact module
(``build_student(config)`` + ``load_state_dict``) and checks that the two fit. The metadata is
free-form but plain (str/int/float/bool/list/dict), so it survives ``weights_only`` loading.
"""

from __future__ import annotations

import os
from pathlib import Path


from archnet.errors import CheckpointError
from archnet.student import ArchNetStudent, build_student
from archnet.teachers import _plain
from archnet.torchfile import build_with_state, load_torch, save_torch

STUDENT_FORMAT = "archnet-student-checkpoint"
STUDENT_VERSION = 1


def student_payload(student: ArchNetStudent, metadata: dict | None = None) -> dict:
    """The plain dict a student checkpoint holds (also embedded in distillation checkpoints)."""
    return {
        "format": STUDENT_FORMAT,
        "version": STUDENT_VERSION,
        "config": student.config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
        "metadata": _plain(dict(metadata or {}), "student metadata"),
    }


def save_student(path: str | os.PathLike, student: ArchNetStudent, metadata: dict | None = None) -> Path:
    return save_torch(student_payload(student, metadata), path)


def student_from_payload(obj, where: str) -> tuple[ArchNetStudent, dict]:
    if not isinstance(obj, dict) or obj.get("format") != STUDENT_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{where}: not an archnet student checkpoint (format {found!r})")
    if obj.get("version") != STUDENT_VERSION:
        raise CheckpointError(f"{where}: student checkpoint version {obj.get('version')!r}, "
                              f"this archnet reads {STUDENT_VERSION}")
    if not isinstance(obj.get("config"), dict):
        raise CheckpointError(f"{where}: student checkpoint lacks its config")
    student = build_with_state(lambda: build_student(obj["config"]), obj.get("state_dict"), where,
                               "weights")
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise CheckpointError(f"{where}: student metadata must be a dict")
    return student, dict(meta or {})


def load_student(path: str | os.PathLike) -> tuple[ArchNetStudent, dict]:
    """``(student in eval mode, metadata)``; a missing, damaged or foreign file is a
    ``CheckpointError`` naming it."""
    return student_from_payload(load_torch(path, "student checkpoint"), str(path))


__all__ = ["load_student", "save_student", "student_from_payload", "student_payload"]
