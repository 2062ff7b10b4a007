"""No file archnet reads can run code: crafted checkpoints, teachers, students, Program constants,
``.npz`` members, ``.npy`` images and text-teacher weights each carry a live payload (a pickle
that creates a marker file when unpickled; the first test proves it is live), and every command
that reads them refuses in one line while the marker never appears."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hostile_helpers import FAST, archnet, one_error_line, write_tiny_bert


class Payload:
    """Unpickling this object opens (creates) ``marker``: code run from inside a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_file(path: Path, marker: Path, **extra) -> Path:
    torch.save({"format": "archnet-teacher", "version": 1, "payload": Payload(marker), **extra},
               path)
    return path


def _npy_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    arr = np.empty(1, dtype=object)
    arr[0] = Payload(marker)
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_the_payload_is_live(tmp_path):
    """Guard against a test that cannot fail: each crafted file does run code when read the
    unsafe way."""
    marker = tmp_path / "ran"
    torch.load(_torch_file(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()
    marker.unlink()
    np.load(io.BytesIO(_npy_bytes(marker)), allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_resume_from_a_crafted_period_checkpoint(work, capsys):
    marker = work / "ran"
    for ck in (work / "run" / "checkpoints").glob("period_*.pt"):
        _torch_file(ck, marker)
    code, _, err = archnet(capsys, "convert", "teacher.pt", "--chip", "k210-kpu", "--bits", "4w4a",
                           "--out", "run", "--resume", *FAST)
    assert code == 2 and not marker.exists()
    one_error_line(err, "period_04.pt")


@pytest.mark.parametrize("command", [
    ["teacher", "eval", "{evil}"],
    ["convert", "{evil}", "--chip", "k210-kpu", "--out", "new-run", *FAST],
    ["latency-table", "{evil}", "--chip", "k210-kpu"],
    ["verify", "run/model.program", "--chip", "k210-kpu", "--teacher", "{evil}", "--limit", "4"],
])
def test_crafted_teacher_file(work, capsys, command):
    marker = work / "ran"
    evil = _torch_file(work / "evil.pt", marker)
    code, _, err = archnet(capsys, *[c.format(evil=evil) for c in command])
    assert code == 2 and not marker.exists()
    one_error_line(err, "evil.pt")


def test_crafted_student_file(work, capsys):
    marker = work / "ran"
    _torch_file(work / "run" / "student.pt", marker)
    for command in (["verify", "run/model.program", "--chip", "k210-kpu", "--limit", "4"],
                    ["latency-table", "run/student.pt", "--chip", "k210-kpu"],
                    ["report", "run", "--out", "fresh-report", "--latency-only"]):
        code, _, err = archnet(capsys, *command)
        assert code == 2 and not marker.exists(), command
        one_error_line(err, "student.pt")


def test_crafted_program_constant(work, capsys):
    marker = work / "ran"
    program = work / "run" / "model.program"
    with zipfile.ZipFile(program) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["constants/0.npy"] = _npy_bytes(marker)
    evil = work / "evil.program"
    with zipfile.ZipFile(evil, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    for command in (["simulate", evil, "--chip", "k210-kpu"], ["estimate", evil, "--chip", "k210-kpu"],
                    ["export-onnx", evil, "--out", "x.onnx"]):
        code, _, err = archnet(capsys, *command)
        assert code == 2 and not marker.exists(), command
        one_error_line(err, "evil.program")


def test_crafted_npz_member_and_npy_images(work, capsys):
    marker = work / "ran"
    npz = work / "evil.npz"
    with zipfile.ZipFile(npz, "w") as zf:
        zf.writestr("image.npy", _npy_bytes(marker))
    code, _, err = archnet(capsys, "simulate", "run/model.program", "--chip", "k210-kpu",
                           "--input", npz)
    assert code == 2 and not marker.exists()
    one_error_line(err, "evil.npz")
    npy = work / "evil.npy"
    npy.write_bytes(_npy_bytes(marker))
    for command in (["simulate", "run/model.program", "--chip", "k210-kpu", "--input", npy],
                    ["convert", "teacher.pt", "--chip", "k210-kpu", "--data", npy, "--out",
                     "new-run", *FAST]):
        code, _, err = archnet(capsys, *command)
        assert code == 2 and not marker.exists(), command
        one_error_line(err, "evil.npy")


def test_text_checkpoint_and_teacher_weights(tmp_path, capsys):
    """The text path: its resume reads period checkpoints with the same loader, and a teacher
    folder's pytorch_model.bin goes through transformers' weights-only load."""
    pytest.importorskip("transformers")
    from archnet.distill.checkpoint import load_checkpoint
    from archnet.errors import CheckpointError
    marker = tmp_path / "ran"
    with pytest.raises(CheckpointError, match="period_00.pt"):
        load_checkpoint(_torch_file(tmp_path / "period_00.pt", marker))
    assert not marker.exists()

    folder = Path(write_tiny_bert(tmp_path / "bert"))
    for f in folder.glob("model.safetensors*"):
        f.unlink()
    torch.save({"embeddings.word_embeddings.weight": Payload(marker)}, folder / "pytorch_model.bin")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the cat sat on mat {i}" for i in range(50)) + "\n")
    code, _, err = archnet(capsys, "convert", folder, "--chip", "ethos-u55-128", "--out",
                           tmp_path / "run", "--corpus", corpus, "--max-len", "16",
                           "--steps-per-period", "1", "--final-steps", "1", "--no-progress")
    assert code == 2 and not marker.exists()
    one_error_line(err, "bert")


def test_teacher_metadata_cannot_name_code(work, capsys):
    """A checkpoint is data: its metadata is plain values, read by weights-only unpickling."""
    obj = torch.load(work / "teacher.pt", weights_only=True)
    assert json.loads(json.dumps(obj["metadata"])) == obj["metadata"]
    shutil.copy(work / "teacher.pt", work / "copy.pt")
    code, out, _ = archnet(capsys, "teacher", "eval", "copy.pt")
    assert code == 0 and "test accuracy" in out
