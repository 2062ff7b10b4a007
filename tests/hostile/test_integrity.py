"""Damaged files are found, not used: checkpoints and Programs carry a content hash that loading
verifies, the student's record of its teacher is checked, Programs are byte-reproducible, and
the leftovers of interrupted writes are removed by the next write into their folder."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from archnet.errors import CheckpointError
from archnet.student_io import load_student
from archnet.teachers import load_teacher
from archnet.torchfile import load_torch, save_torch
from hostile_helpers import DIGITS_TEACHER, FAST, archnet, one_error_line, snapshot
from simulator.errors import ProgramError
from simulator.fileio import atomic_write_bytes, temp_prefix
from simulator.ir import program as program_io
from simulator.ir.program import load_program, program_bytes, save_program

TEACHER_BYTES = DIGITS_TEACHER.read_bytes()


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def _member_start(raw: bytes, info: zipfile.ZipInfo) -> int:
    """Where a zip member's bytes begin (its local header's name and extra lengths count)."""
    at = info.header_offset
    name_len, extra_len = int.from_bytes(raw[at + 26:at + 28], "little"), \
        int.from_bytes(raw[at + 28:at + 30], "little")
    return at + 30 + name_len + extra_len


def _data_offsets(raw: bytes) -> list[int]:
    """Offsets of bytes inside the tensors' storage records of a torch file."""
    offsets = []
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        for info in zf.infolist():
            if "/data/" in info.filename and info.file_size >= 16:
                start = _member_start(raw, info)
                offsets += [start + info.file_size // 3, start + 2 * info.file_size // 3]
    return offsets


def test_every_flip_in_a_teacher_weight_is_found(tmp_path):
    """The issue's case: 8 of 8 bit-flipped teacher checkpoints loaded with changed weights."""
    offsets = _data_offsets(TEACHER_BYTES)
    assert len(offsets) >= 8
    for k, at in enumerate(offsets[:: max(1, len(offsets) // 8)][:8]):
        blob = bytearray(TEACHER_BYTES)
        blob[at] ^= 1 << (k % 8)
        path = tmp_path / f"flip{k}.pt"
        path.write_bytes(bytes(blob))
        changed = torch.load(path, weights_only=True)["state_dict"]   # what torch alone gives
        assert not _same_state(changed, torch.load(DIGITS_TEACHER, weights_only=True)["state_dict"])
        with pytest.raises(CheckpointError, match="damaged") as err:
            load_teacher(path)
        assert "\n" not in str(err.value) and path.name in str(err.value)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_checkpoint_is_refused_or_unchanged(tmp_path, data):
    """Any damage (flipped, cut or inserted bytes): a one-line error, or a file whose content
    is exactly the original's (a flip in zip padding changes nothing that is read)."""
    original = torch.load(DIGITS_TEACHER, weights_only=True)
    blob = bytearray(TEACHER_BYTES)
    kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    at = data.draw(st.integers(0, len(blob) - 1))
    if kind == "flip":
        blob[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "cut":
        del blob[at:at + data.draw(st.integers(1, 64))]
    else:
        blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(blob))
    try:
        obj = load_torch(path, "teacher checkpoint")
    except CheckpointError as exc:
        assert "\n" not in str(exc) and "damaged.pt" in str(exc)
        return
    assert _same_state(obj["state_dict"], original["state_dict"])
    assert obj["metadata"] == original["metadata"]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_program_is_refused_or_unchanged(made_run, tmp_path, data):
    raw = (made_run / "run" / "model.program").read_bytes()
    original = load_program(made_run / "run" / "model.program")
    blob = bytearray(raw)
    at = data.draw(st.integers(0, len(blob) - 1))
    blob[at] ^= 1 << data.draw(st.integers(0, 7))
    path = tmp_path / "damaged.program"
    path.write_bytes(bytes(blob))
    try:
        program = load_program(path)
    except ProgramError as exc:
        assert "\n" not in str(exc) and "damaged.program" in str(exc)
        return
    assert program_bytes(program) == program_bytes(original)


def test_programs_are_byte_reproducible(made_run, tmp_path, monkeypatch, capsys):
    program = load_program(made_run / "run" / "model.program")
    first = program_bytes(program)
    monkeypatch.setattr("time.time", lambda: 2e9)       # another day: no timestamp may show
    monkeypatch.setattr("time.localtime", lambda *a: (2033, 5, 18, 3, 33, 20, 2, 138, 0))
    assert program_bytes(program) == first
    assert save_program(program, tmp_path / "a.program").read_bytes() == first
    # two conversions with one seed: the same Program, byte for byte
    shutil.copy(DIGITS_TEACHER, tmp_path / "t.pt")
    for name in ("one", "two"):
        code, _, err = archnet(capsys, "convert", tmp_path / "t.pt", "--chip", "k210-kpu", "--out",
                               tmp_path / name, *FAST)
        assert code == 0, err
    assert (tmp_path / "one" / "model.program").read_bytes() == \
        (tmp_path / "two" / "model.program").read_bytes()


def test_program_size_limits(made_run, tmp_path, monkeypatch):
    path = made_run / "run" / "model.program"
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    bomb = tmp_path / "bomb.program"   # 300 KB on disk, 64 MiB + 1 inflated
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("program.json", members["program.json"] +
                    b" " * (program_io.MAX_JSON_BYTES + 1 - len(members["program.json"])))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ProgramError, match="inflates to 67,108,865 bytes"):
        load_program(bomb)
    monkeypatch.setattr(program_io, "MAX_TOTAL_CONSTANT_BYTES", 1000)
    with pytest.raises(ProgramError, match="constants inflate to"):
        load_program(path)


def test_absurd_teacher_options_are_refused_before_any_allocation(tmp_path):
    obj = torch.load(DIGITS_TEACHER, weights_only=True)
    obj.pop("content_sha256")
    for kwargs, why in (({**obj["metadata"]["kwargs"], "width": "16"}, "width='16'"),
                        ({**obj["metadata"]["kwargs"], "width": 4000}, "do not fit"),
                        ({**obj["metadata"]["kwargs"], "num_classes": 10**9}, "num_classes"),
                        ({"in_channels": [1]}, "in_channels")):
        crafted = {**obj, "metadata": {**obj["metadata"], "kwargs": kwargs}}
        save_torch(crafted, tmp_path / "t.pt")      # a valid hash: only the config is absurd
        with pytest.raises(CheckpointError, match=why) as err:
            load_teacher(tmp_path / "t.pt")
        assert "\n" not in str(err.value)


def test_nan_weights_are_refused(tmp_path):
    obj = torch.load(DIGITS_TEACHER, weights_only=True)
    obj.pop("content_sha256")
    name = next(k for k, v in obj["state_dict"].items() if v.is_floating_point())
    obj["state_dict"][name] = torch.full_like(obj["state_dict"][name], float("nan"))
    save_torch(obj, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=f"{name}.*NaN"):
        load_teacher(tmp_path / "nan.pt")


def _other_teacher(path: Path, to: Path) -> Path:
    obj = torch.load(path, weights_only=True)
    obj.pop("content_sha256")
    name = next(k for k, v in obj["state_dict"].items() if k.endswith("weight"))
    obj["state_dict"][name] = obj["state_dict"][name] * 1.01
    return save_torch(obj, to)


def test_verify_and_report_check_the_recorded_teacher(work, capsys):
    _other_teacher(work / "teacher.pt", work / "other.pt")
    shutil.copy(work / "teacher.pt", work / "original.pt")
    shutil.copy(work / "other.pt", work / "teacher.pt")   # another teacher under the recorded name
    before = snapshot(work / "run")
    code, _, err = archnet(capsys, "verify", "run/model.program", "--chip", "k210-kpu", "--limit",
                           "4", "--out", "run/verify_ideal.json")
    assert code == 2
    one_error_line(err, "teacher.pt", "not the teacher", "--teacher")
    code, _, err = archnet(capsys, "report", "run", "--out", "rep", "--latency-only")
    assert code == 2
    one_error_line(err, "teacher.pt", "not the teacher")
    code, _, err = archnet(capsys, "latency-table", "run/student.pt", "--chip", "k210-kpu")
    assert code == 2
    one_error_line(err, "not the teacher")
    assert snapshot(work / "run") == before
    # chosen on purpose: verified, and said so in the verify record and the report
    shutil.copy(work / "original.pt", work / "teacher.pt")
    code, out, err = archnet(capsys, "verify", "run/model.program", "--chip", "ideal", "--limit",
                             "4", "--teacher", "other.pt", "--no-progress", "--out",
                             "run/verify_ideal.json")
    assert code == 0, err
    assert "WARNING: not the teacher the student was converted from" in out
    doc = json.loads((work / "run" / "verify_ideal.json").read_text())
    assert doc["teacher_matches_conversion"] is False and doc["teacher"] == "other.pt"
    assert "verified against another teacher" in (work / "run" / "report" / "report.md").read_text()


def test_a_nan_teacher_cannot_be_verified_against(work, capsys):
    """The issue's case: a teacher of NaN weights gave BIT-EXACT, exit 0."""
    obj = torch.load(work / "teacher.pt", weights_only=True)
    obj.pop("content_sha256")
    obj["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                         for k, v in obj["state_dict"].items()}
    save_torch(obj, work / "teacher.pt")
    code, _, err = archnet(capsys, "verify", "run/model.program", "--chip", "k210-kpu",
                           "--limit", "4")
    assert code == 2
    one_error_line(err, "teacher.pt", "NaN")


def test_the_next_write_removes_what_an_interrupted_write_left(work, capsys):
    """kill -9 in the middle of a write leaves a temporary; the next write into that folder
    removes it, and leaves a live writer's alone."""
    writer = textwrap.dedent(f"""
        import os, sys, tempfile, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from simulator.fileio import temp_prefix
        for name, folder in (("student.pt", "run"), ("report", "run")):
            if name == "report":
                tempfile.mkdtemp(prefix=temp_prefix(name), suffix=".tmp", dir=folder)
            else:
                os.close(tempfile.mkstemp(prefix=temp_prefix(name), suffix=".tmp", dir=folder)[0])
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=work, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in (work / "run").iterdir() if p.name.endswith(".tmp"))
    assert len(left) == 2 and all(f"-{proc.pid}." in n for n in left)
    live = work / "run" / (temp_prefix("convert.json") + "abcdefgh.tmp")
    live.write_text("being written")
    code, _, err = archnet(capsys, "verify", "run/model.program", "--chip", "ideal", "--limit", "4",
                           "--no-progress", "--out", "run/verify_ideal.json")
    assert code == 0, err
    now = sorted(p.name for p in (work / "run").iterdir() if p.name.endswith(".tmp"))
    assert now == [live.name]


def test_atomic_write_into_an_unwritable_place_is_one_line(tmp_path):
    from simulator.errors import OutputError
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file") as err:
        atomic_write_bytes(tmp_path / "file" / "out.json", b"{}")
    assert "\n" not in str(err.value)
    with pytest.raises(OutputError, match="is a folder"):
        atomic_write_bytes(tmp_path, b"{}")


def test_damaged_npz_inputs(work, capsys):
    x = np.zeros((1, 1, 16, 16), np.uint8)
    np.savez(work / "good.npz", image=x)
    raw = (work / "good.npz").read_bytes()
    with zipfile.ZipFile(work / "good.npz") as zf:
        data_at = _member_start(raw, zf.getinfo("image.npy")) + 200
    bad_crc = bytearray(raw)
    bad_crc[data_at] ^= 0xFF
    cases = {"crc.npz": bytes(bad_crc), "cut.npz": raw[: len(raw) // 2],
             "empty.npz": b"", "text.npz": b"not a zip"}
    for name, blob in cases.items():
        (work / name).write_bytes(blob)
        code, _, err = archnet(capsys, "simulate", "run/model.program", "--chip", "k210-kpu",
                               "--input", name)
        assert code == 2, name
        one_error_line(err, name)


def test_bad_convert_records_in_a_run_folder(work, capsys):
    summary = json.loads((work / "run" / "convert.json").read_text())
    for field, value in (("history", "three"), ("history", [1, 2]), ("bits", 4),
                         ("images", "many"), ("simulator_share", [0.5])):
        doc = dict(summary)
        doc[field] = value
        (work / "run" / "convert.json").write_text(json.dumps(doc))
        code, _, err = archnet(capsys, "report", "run", "--out", "rep", "--latency-only")
        assert code == 2, (field, value)
        one_error_line(err, "convert.json", field)
    doc = dict(summary)
    doc["history"] = [dict(summary["history"][0], seconds="slow")]
    (work / "run" / "convert.json").write_text(json.dumps(doc))
    code, _, err = archnet(capsys, "report", "run", "--out", "rep", "--latency-only")
    assert code == 2
    one_error_line(err, "history[0]", "seconds")


def test_student_records_its_teacher_by_content(made_run):
    _, meta = load_student(made_run / "run" / "student.pt")
    teacher, _ = load_teacher(made_run / "teacher.pt")
    assert meta["teacher_sha256"] == teacher.content_sha256
    assert os.path.basename(meta["teacher"]) == "teacher.pt"
