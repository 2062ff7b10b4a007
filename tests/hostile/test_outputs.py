"""No command overwrites or deletes its own inputs or a folder it did not make: every output
that resolves to an input (by name, through a symbolic or hard link), to a run folder or to an
ancestor of one is refused in one line, before any work, and every pre-existing file is left
byte for byte as it was. Unwritable places are one line too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from hostile_helpers import FAST, archnet, one_error_line, snapshot

PROGRAM = "run/model.program"


def _refused(capsys, root: Path, *argv, names=()) -> str:
    before = snapshot(root)
    code, _, err = archnet(capsys, *argv)
    assert code == 2, (argv, err)
    line = one_error_line(err, *names)
    assert snapshot(root) == before, argv
    return line


@pytest.mark.parametrize("argv, names", [
    # the four, exit 0 before
    (["report", "run", "--out", "run", "--latency-only"], ["run"]),
    (["report", "run", "--out", ".", "--latency-only"], ["--out"]),
    (["latency-table", "teacher.pt", "--chip", "k210-kpu", "--csv", "teacher.pt"], ["teacher.pt"]),
    (["simulate", PROGRAM, "--chip", "k210-kpu", "--input", "x.npy", "--output", "y.npz",
      "--trace", "y.npz"], ["y.npz"]),
    (["verify", PROGRAM, "--chip", "k210-kpu", "--out", PROGRAM], [PROGRAM]),
    # their neighbours
    (["verify", PROGRAM, "--chip", "k210-kpu", "--out", "run/convert.json"], ["convert.json"]),
    (["verify", PROGRAM, "--chip", "k210-kpu", "--out", "run"], ["run"]),
    (["verify", PROGRAM, "--chip", "k210-kpu", "--out", "teacher.json", "--teacher",
      "teacher.json"], ["teacher.json"]),
    (["report", "run", "--out", "run/checkpoints", "--latency-only"], ["checkpoints"]),
    (["report", "run", "--out", "copy", "--latency-only"], ["copy", "report folder"]),
    (["simulate", PROGRAM, "--chip", "k210-kpu", "--input", "x.npy", "--output", "x.npy"],
     ["x.npy"]),
    (["simulate", PROGRAM, "--chip", "k210-kpu", "--input", "x.npy", "--output", PROGRAM],
     [PROGRAM]),
    (["convert", "teacher.pt", "--chip", "k210-kpu", "--out", ".", *FAST], ["--out"]),
    (["convert", "teacher.pt", "--chip", "k210-kpu", "--out", "run/student.pt", *FAST],
     ["student.pt"]),
    (["demo", "--out", "."], ["demo folder"]),
    (["demo", "--out", "run"], ["run"]),
    (["compare", PROGRAM, "--chips", "k210-kpu", "--csv", PROGRAM], [PROGRAM]),
    (["compare", PROGRAM, "--chips", "k210-kpu", "--plot", "teacher.png", "--csv", "teacher.png"],
     ["teacher.png"]),
    (["teacher", "train", "--dataset", "digits", "--out", "run/student.pt"], ["student.pt"]),
    (["teacher", "train", "--dataset", "digits", "--out", "run"], ["run"]),
    (["export-onnx", PROGRAM, "--out", PROGRAM], [PROGRAM]),
    (["latency-table", "run/student.pt", "--chip", "k210-kpu", "--csv", "run/convert.json"],
     ["convert.json"]),
])
def test_outputs_that_would_destroy_something_are_refused(work, capsys, argv, names):
    np.save(work / "x.npy", np.zeros((1, 1, 16, 16), np.uint8))
    shutil.copytree(work / "run", work / "copy")
    (work / "teacher.json").write_text("{}")
    _refused(capsys, work, *argv, names=names)


def test_links_to_an_input_are_the_input(work, capsys):
    os.symlink(work / "teacher.pt", work / "link.csv")
    _refused(capsys, work, "latency-table", "teacher.pt", "--chip", "k210-kpu", "--csv",
             "link.csv", names=["link.csv"])
    os.link(work / "run" / "verify_k210-kpu.json", work / "hard.json")
    _refused(capsys, work, "verify", PROGRAM, "--chip", "k210-kpu", "--out", "hard.json",
             "--teacher", "hard.json", names=["hard.json"])


def test_a_report_folder_is_replaced_and_nothing_else(work, capsys):
    code, _, err = archnet(capsys, "report", "run", "--out", "rep", "--latency-only", "-q")
    assert code == 0, err
    assert (work / "rep" / "report.md").is_file()
    code, _, err = archnet(capsys, "report", "run", "--out", "rep", "--latency-only", "-q")
    assert code == 0, err    # a report is replaced by a report
    (work / "rep" / "notes.txt").write_text("mine")
    _refused(capsys, work, "report", "run", "--out", "rep", "--latency-only", names=["rep"])


def test_the_run_verify_writes_into_is_still_whole(work, capsys):
    before = snapshot(work / "run" / "student.pt", work / "run" / "model.program",
                      work / "run" / "checkpoints")
    code, _, err = archnet(capsys, "verify", PROGRAM, "--chip", "ideal", "--limit", "8",
                           "--no-progress", "--out", "run/verify_ideal.json")
    assert code == 0, err
    assert snapshot(work / "run" / "student.pt", work / "run" / "model.program",
                    work / "run" / "checkpoints") == before
    assert (work / "run" / "report" / "report.md").is_file()


def _unwritable(tmp_path: Path) -> Path:
    """A folder nothing can be created in, for root too (root ignores file modes)."""
    if os.geteuid() == 0:
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("no /sys to stand for a read-only folder")
        return Path("/sys/kernel")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize("argv", [
    ["simulate", PROGRAM, "--chip", "k210-kpu", "--input", "x.npy", "--output", "{ro}/y.npy"],
    ["simulate", PROGRAM, "--chip", "k210-kpu", "--input", "x.npy", "--trace", "{ro}/t.npz"],
    ["verify", PROGRAM, "--chip", "k210-kpu", "--limit", "4", "--out", "{ro}/v.json"],
    ["convert", "teacher.pt", "--chip", "k210-kpu", "--out", "{ro}/new-run", *FAST],
    ["latency-table", "teacher.pt", "--chip", "k210-kpu", "--csv", "{ro}/t.csv"],
    ["compare", PROGRAM, "--chips", "k210-kpu", "--csv", "{ro}/c.csv"],
    ["compare", PROGRAM, "--chips", "k210-kpu", "--plot", "{ro}/c.png"],
    ["report", "run", "--out", "{ro}/rep", "--latency-only"],
    ["demo", "--out", "{ro}/demo"],
    ["teacher", "train", "--dataset", "digits", "--out", "{ro}/t.pt"],
    ["export-onnx", PROGRAM, "--out", "{ro}/m.onnx"],
])
def test_unwritable_places_are_one_line_before_any_work(work, capsys, tmp_path, argv, monkeypatch):
    np.save(work / "x.npy", np.zeros((1, 1, 16, 16), np.uint8))
    ro = _unwritable(tmp_path)
    import archnet.teachers.train
    import simulator.execute

    def no_work(*a, **k):
        raise AssertionError("work started before the output was checked")
    for module, name in ((simulator.execute, "execute"), (archnet.teachers.train, "train_teacher")):
        monkeypatch.setattr(module, name, no_work)
    _refused(capsys, work, *[a.format(ro=ro) for a in argv], names=[str(ro)])
