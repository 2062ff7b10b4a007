"""Reading a run folder: what ``archnet convert`` and ``archnet verify`` left there, checked.

A run folder holds ``student.pt``, ``model.program`` and ``convert.json`` (``archnet convert``)
and, per chip it was verified on, ``verify_<chip>.json`` (``archnet verify ... --out``). Nothing
here computes; ``archnet.report.measure`` does (estimates, the teacher's graph, per-layer error).
Every defect is a ``ReportError`` of one line naming the file and the command that makes it.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from archnet.errors import ReportError

STUDENT_FILE = "student.pt"
PROGRAM_FILE = "model.program"
SUMMARY_FILE = "convert.json"
VERIFY_GLOB = "verify_*.json"
REQUIRED = (STUDENT_FILE, PROGRAM_FILE, SUMMARY_FILE)
VERIFY_KEYS = ("chip", "simulator_accuracy", "latency_ms")


def show_path(path) -> str:
    """``path`` relative to the current folder when it lies below it; a bundled profile as
    ``chip_profiles/<name>.toml`` wherever the checkout that read it lived; else as given."""
    if path is None:
        return "?"
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        if p.parent.name == "chip_profiles" and p.suffix == ".toml":
            return f"chip_profiles/{p.name}"
        return str(path)


def convert_command(run: Path, summary: dict | None = None) -> str:
    """The command that wrote ``run``: the recorded one (when it is an ``archnet convert``
    command line), else its general form."""
    recorded = summary.get("command") if summary else None
    if isinstance(recorded, str) and " convert " in f" {recorded} ":
        return recorded
    summary = summary or {}
    bits = summary.get("bits") or []
    parts = ["archnet", "convert", str(summary.get("teacher") or "TEACHER.pt"),
             "--chip", str(summary.get("chip") or "CHIP")]
    if bits and len(set(map(str, bits))) == 1:
        parts += ["--bits", str(bits[0])]
    return shlex.join(parts + ["--out", str(run)])


def verify_command(run: Path, chip: str) -> str:
    return shlex.join(["archnet", "verify", str(run / PROGRAM_FILE), "--chip", chip,
                       "--out", str(run / f"verify_{chip}.json")])


@dataclass
class VerifyRecord:
    """One ``verify_<chip>.json``: accuracy of the run's Program on a chip."""

    path: Path
    chip: str
    chip_path: str | None
    simulator_accuracy: float
    student_accuracy: float | None
    teacher_accuracy: float | None
    latency_ms: float
    fallback_count: int
    images: int | None
    dataset: str | None
    split: str | None
    bit_exact: bool | None
    command: str | None
    teacher: str | None = None
    teacher_matches_conversion: bool | None = None   # False: verified with another --teacher

    @property
    def source(self) -> str:
        return self.command or verify_command(self.path.parent, self.chip)


@dataclass
class RunFolder:
    """A checked run folder; the student and Program are loaded on demand."""

    path: Path
    summary: dict
    verifies: dict[str, VerifyRecord] = field(default_factory=dict)
    _student: tuple | None = None
    _program: object = None

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def chip(self) -> str:
        return str(self.summary.get("chip"))

    @property
    def profile_path(self) -> str | None:
        return self.summary.get("profile_path")

    @property
    def bits(self) -> list[str]:
        return [str(b) for b in self.summary.get("bits") or []]

    @property
    def bits_label(self) -> str:
        """``4w4a`` when every block has those bits, else ``mixed`` with the widths."""
        bits = self.bits
        if not bits:
            return "?"
        if len(set(bits)) == 1:
            return bits[0]
        return "mixed " + "/".join(bits)

    @property
    def command(self) -> str:
        return convert_command(self.path, self.summary)

    @property
    def dataset(self) -> str | None:
        return self.summary.get("dataset")

    @property
    def program_path(self) -> Path:
        return self.path / PROGRAM_FILE

    @property
    def student_path(self) -> Path:
        return self.path / STUDENT_FILE

    def program(self):
        if self._program is None:
            from simulator.errors import SimulatorError
            from simulator.ir.program import load_program
            try:
                self._program = load_program(self.program_path)
            except SimulatorError as exc:
                raise ReportError(f"{exc} (rewrite it with `{self.command}`)") from None
        return self._program

    def student(self):
        """``(student, metadata)``, checked to be the student whose export ``model.program`` is."""
        if self._student is None:
            from archnet.errors import ArchnetError
            from archnet.student_io import load_student
            from archnet.student_program import check_program_matches
            try:
                student, meta = load_student(self.student_path)
                check_program_matches(self.program(), student, self.program_path, self.student_path)
            except ReportError:
                raise
            except ArchnetError as exc:
                raise ReportError(f"{exc} (rewrite the run with `{self.command}`)") from None
            self._student = (student, meta)
        return self._student


# what a report reads from convert.json, by type: a record with another type is named and
# refused before anything is drawn from it
_NUMBER, _INT, _TEXT, _FLAG, _TEXTS = "number", "integer", "string", "boolean", "list of strings"
SUMMARY_FIELDS = {"chip": _TEXT, "bits": _TEXTS, "teacher": _TEXT, "dataset": _TEXT,
                  "profile_path": _TEXT, "images": _INT, "simulator_share": _NUMBER,
                  "command": _TEXT, "estimated_latency_ms": _NUMBER}
# a text network's convert.json (``archnet convert TEXT_TEACHER``): the image fields it shares,
# and what verify and the report need to find its teacher, corpus split and positions again
TEXT_SUMMARY_FIELDS = {"chip": _TEXT, "bits": _TEXTS, "teacher": _TEXT, "teacher_name": _TEXT,
                       "teacher_path": _TEXT, "teacher_sha256": _TEXT, "teacher_layers": _INT,
                       "corpus": _TEXT, "heldout_fraction": _NUMBER, "max_len": _INT,
                       "profile_path": _TEXT, "inputs": _TEXT, "command": _TEXT,
                       "estimated_latency_ms": _NUMBER}
HISTORY_FIELDS = {"period": _INT, "seconds": _NUMBER, "simulator_seconds": _NUMBER,
                  "new_block": _TEXT, "blocks": _TEXTS, "steps": _INT, "loss_first": _NUMBER,
                  "loss_last": _NUMBER, "simulator_in_loop": _FLAG, "simulator_images": _INT,
                  "chip_forward": _FLAG}


def _is(value, kind: str) -> bool:
    if value is None:
        return True
    if kind == _TEXTS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == _FLAG:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if kind == _INT else math.isfinite(value)


def check_fields(doc: dict, fields: dict[str, str], where: str, remedy: str) -> None:
    """A ``ReportError`` naming the first field of ``doc`` that is not of its kind (or null)."""
    for key, kind in fields.items():
        if not _is(doc.get(key), kind):
            raise ReportError(f"{where}: field {key!r} must be a {kind}, got "
                              f"{type(doc[key]).__name__} {str(doc[key])[:40]!r}; rewrite it "
                              f"with `{remedy}`")


def check_summary(doc: dict, path: Path, remedy: str) -> None:
    check_fields(doc, SUMMARY_FIELDS, str(path), remedy)
    history = doc.get("history")
    if history is not None and not (isinstance(history, list) and
                                    all(isinstance(h, dict) for h in history)):
        raise ReportError(f"{path}: field 'history' must be a list of objects; rewrite it with "
                          f"`{remedy}`")
    for i, h in enumerate(history or []):
        check_fields(h, HISTORY_FIELDS, f"{path}: history[{i}]", remedy)


def read_json(path: Path, remedy: str) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReportError(f"{path}: unreadable ({msg}); rewrite it with `{remedy}`") from None
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: not a JSON object; rewrite it with `{remedy}`")
    return doc


def _verify_record(path: Path, run: Path, bits: list[str]) -> VerifyRecord | None:
    """The record of ``path``; None for a verification on unlabelled images (no accuracy)."""
    chip_guess = path.stem[len("verify_"):]
    remedy = verify_command(run, chip_guess)
    doc = read_json(path, remedy)
    if doc.get("labelled") is False:
        return None
    missing = [k for k in VERIFY_KEYS if doc.get(k) is None]
    if missing:
        raise ReportError(f"{path}: not an `archnet verify --out` record (no {', '.join(missing)}); "
                          f"rewrite it with `{remedy}`")
    chip = str(doc["chip"])
    remedy = verify_command(run, chip)
    if doc.get("bits") and bits and [str(b) for b in doc["bits"]] != bits:
        raise ReportError(f"{path}: verifies a student with bits {doc['bits']}, but "
                          f"{run / STUDENT_FILE} has {bits}; rerun `{remedy}`")
    try:
        return VerifyRecord(
            path=path, chip=chip, chip_path=doc.get("chip_path"),
            simulator_accuracy=float(doc["simulator_accuracy"]),
            student_accuracy=_float_or_none(doc.get("student_accuracy")),
            teacher_accuracy=_float_or_none(doc.get("teacher_accuracy")),
            latency_ms=float(doc["latency_ms"]),
            fallback_count=int(doc.get("fallback_count") or len(doc.get("fallbacks") or [])),
            images=None if doc.get("images") is None else int(doc["images"]),
            dataset=doc.get("dataset"), split=doc.get("split"), bit_exact=doc.get("bit_exact"),
            command=(doc.get("commands") or {}).get("verify"),
            teacher=doc.get("teacher") if isinstance(doc.get("teacher"), str) else None,
            teacher_matches_conversion=doc.get("teacher_matches_conversion")
            if isinstance(doc.get("teacher_matches_conversion"), bool) else None)
    except (TypeError, ValueError) as exc:
        raise ReportError(f"{path}: bad value ({exc}); rewrite it with `{remedy}`") from None


def _float_or_none(v) -> float | None:
    return None if v is None else float(v)


def open_run(path: str | os.PathLike) -> RunFolder:
    """Check a run folder: its three files are there and its JSON records readable."""
    run = Path(path)
    if not run.exists():
        raise ReportError(f"{run}: no such run folder (`archnet convert TEACHER.pt --chip CHIP "
                          f"--out {run}` makes one)")
    if not run.is_dir():
        raise ReportError(f"{run}: not a run folder (a folder written by `archnet convert ... "
                          f"--out`)")
    summary = None
    if (run / SUMMARY_FILE).is_file():
        summary = read_json(run / SUMMARY_FILE, convert_command(run))
        check_summary(summary, run / SUMMARY_FILE, convert_command(run))
    missing = [name for name in REQUIRED if not (run / name).is_file()]
    if missing:
        files = ", ".join(str(run / m) for m in missing)
        raise ReportError(f"{files}: missing from the run folder; `{convert_command(run, summary)}` "
                          f"writes {'it' if len(missing) == 1 else 'them'}")
    for key in ("chip", "bits"):
        if not summary.get(key):
            raise ReportError(f"{run / SUMMARY_FILE}: no {key!r}; rewrite it with "
                              f"`{convert_command(run, summary)}`")
    folder = RunFolder(run, summary)
    bits = folder.bits
    for p in sorted(run.glob(VERIFY_GLOB)):
        if p.name.startswith("."):
            continue
        rec = _verify_record(p, run, bits)
        if rec is None:
            continue
        if rec.chip in folder.verifies:
            raise ReportError(f"{p}: a second verify record for chip {rec.chip!r} (also "
                              f"{folder.verifies[rec.chip].path}); keep one")
        folder.verifies[rec.chip] = rec
    return folder


def no_accuracy_error(run: RunFolder) -> ReportError:
    return ReportError(f"{run.path}: no accuracy data (no verify_<chip>.json); "
                       f"`{verify_command(run.path, run.chip)}` adds it, or pass --latency-only")


__all__ = ["PROGRAM_FILE", "RunFolder", "STUDENT_FILE", "SUMMARY_FILE", "VerifyRecord",
           "convert_command", "no_accuracy_error", "open_run", "show_path", "verify_command"]
