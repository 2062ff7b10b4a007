"""The folders archnet writes, and how a command knows one it may write into or replace.

A **run folder** (``archnet convert --out RUN``) holds ``student.pt``, ``model.program``,
``convert.json``, ``checkpoints/``, ``report/`` and ``verify_<chip>.json`` files. A **report
folder** holds ``report.md`` and its CSV, PNG and JSON files, nothing else. A **demo folder**
holds ``teacher.pt``, ``run/`` and ``demo.json``. A command writes into a folder only when it is
new, empty, or of the kind the command itself writes (``simulator.outputs``), so ``--out`` can
never name a user's folder, a run folder's parent, or a run where a report should go.
"""

from __future__ import annotations

import os
from pathlib import Path

from archnet.errors import ArchnetError
from simulator.fileio import is_stale_temporary
from simulator.outputs import check_folder_output

STUDENT_FILE = "student.pt"
PROGRAM_FILE = "model.program"
SUMMARY_FILE = "convert.json"
CHECKPOINTS = "checkpoints"
REPORT = "report"
RUN_WRITES = (STUDENT_FILE, PROGRAM_FILE, SUMMARY_FILE, CHECKPOINTS, REPORT)
REPORT_SUFFIXES = (".md", ".csv", ".png", ".json")
DEMO_ENTRIES = ("teacher.pt", "run", "demo.json")


def resolve_recorded(value: str, folder: str | os.PathLike) -> Path | None:
    """A path a run recorded: as given (relative to the current folder), else relative to
    ``folder`` or the nearest of its parents that holds it. Convert records paths relative to
    where it ran, usually a parent of the run folder (``archnet demo`` writes ``DIR/run`` beside
    ``DIR/teacher.pt``), so the run is still found from another current folder, or moved with
    what it names. None when none exists (callers check what they find: the teacher's hash)."""
    p = Path(value)
    if p.exists():
        return p
    if p.is_absolute():
        return None
    base = Path(folder).resolve()
    for root in (base, *base.parents):
        if (root / p).exists():
            return root / p
    return None


def _entries(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if not is_stale_temporary(p)]
    except OSError:
        return []


def is_run_folder(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return ((folder / SUMMARY_FILE).is_file() or (folder / CHECKPOINTS).is_dir()
            or ((folder / STUDENT_FILE).is_file() and (folder / PROGRAM_FILE).is_file()))


def is_report_folder(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    entries = _entries(folder)
    return (folder / "report.md").is_file() and all(
        p.is_file() and not p.is_symlink() and p.suffix.lower() in REPORT_SUFFIXES for p in entries)


def is_demo_folder(folder: str | os.PathLike) -> bool:
    entries = _entries(Path(folder))
    return bool(entries) and all(p.name in DEMO_ENTRIES for p in entries)


def check_run_output(out: str | os.PathLike, inputs=(), flag: str = "--out") -> None:
    """``convert --out``: new, empty, or a run folder; none of the files it writes an input."""
    check_folder_output(flag, out, inputs, reusable=is_run_folder, kind="run folder",
                        writes=RUN_WRITES)


def run_folder(path: str | Path, resume: bool, inputs=()) -> Path:
    """``--out``: new, empty, or a run folder (``archnet.runs``) whose files are none of the
    ``inputs``; one without an earlier run's checkpoints unless resuming."""
    out = Path(path)
    check_run_output(out, inputs)
    if not resume and (out / CHECKPOINTS).is_dir() and any((out / CHECKPOINTS).iterdir()):
        raise ArchnetError(f"--out {out}: holds checkpoints of an earlier run; pass --resume to "
                           f"continue it or choose another folder")
    return out


def check_report_output(out: str | os.PathLike, inputs=(), flag: str = "--out") -> None:
    """``report --out``: replaced whole, so new, empty or a report, and holding no input."""
    check_folder_output(flag, out, inputs, reusable=is_report_folder, kind="report folder")


def check_demo_output(out: str | os.PathLike, flag: str = "--out") -> None:
    check_folder_output(flag, out, (), reusable=is_demo_folder, kind="demo folder",
                        writes=DEMO_ENTRIES)


__all__ = ["CHECKPOINTS", "PROGRAM_FILE", "REPORT", "RUN_WRITES", "STUDENT_FILE", "SUMMARY_FILE",
           "check_demo_output", "check_report_output", "check_run_output", "is_demo_folder",
           "is_report_folder", "is_run_folder", "resolve_recorded", "run_folder"]
