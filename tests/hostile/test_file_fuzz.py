"""Every kind of file the command line reads, damaged at random (flipped, cut, inserted or
replaced bytes), through the command that reads it: the command succeeds, or says in one
``archnet: error:`` line what is wrong, exit 2; never a traceback, and no file that was there
before changes, save the command's own outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hostile_helpers import FAST, archnet, one_error_line, snapshot


@st.composite
def damage(draw, raw: bytes) -> bytes:
    blob = bytearray(raw)
    kind = draw(st.sampled_from(["flip", "flip", "cut", "insert", "replace", "empty"]))
    if kind == "empty" or not blob:
        return b""
    at = draw(st.integers(0, len(blob) - 1))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(max(0, at - 64), min(len(blob) - 1, at + 64)))
            blob[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "cut":
        del blob[at:]
    elif kind == "insert":
        blob[at:at] = draw(st.binary(min_size=1, max_size=32))
    else:
        blob[at:at + 16] = draw(st.binary(min_size=16, max_size=16))
    return bytes(blob)


def _prepare(made_run: Path, base: Path) -> Path:
    if base.exists():
        shutil.rmtree(base)
    shutil.copytree(made_run, base)
    np.save(base / "x.npy", np.zeros((1, 1, 16, 16), np.uint8))
    np.savez(base / "x.npz", image=np.zeros((1, 1, 16, 16), np.uint8))
    return base


# file -> (the command that reads it, the outputs it may write: excluded from the snapshot)
CASES = {
    "teacher.pt": (["teacher", "eval", "teacher.pt"], []),
    "run/student.pt": (["verify", "run/model.program", "--chip", "ideal", "--limit", "4",
                        "--no-progress"], []),
    "run/checkpoints/period_04.pt": (["convert", "teacher.pt", "--chip", "k210-kpu", "--bits",
                                      "4w4a", "--out", "run", "--resume", *FAST], ["run"]),
    "run/model.program": (["simulate", "run/model.program", "--chip", "k210-kpu", "--input",
                           "x.npy", "--output", "y.npz"], ["y.npz"]),
    "x.npy": (["simulate", "run/model.program", "--chip", "k210-kpu", "--input", "x.npy"], []),
    "x.npz": (["simulate", "run/model.program", "--chip", "k210-kpu", "--input", "x.npz",
               "--trace", "t.npz"], ["t.npz"]),
    "m.onnx": (["estimate", "m.onnx", "--chip", "k210-kpu", "--json"], []),
    "chip.toml": (["estimate", "run/model.program", "--chip", "chip.toml", "--json"], []),
    "run/convert.json": (["report", "run", "--out", "rep", "--latency-only", "-q"], ["rep"]),
    "run/verify_k210-kpu.json": (["report", "run", "--out", "rep", "--latency-only", "-q"],
                                 ["rep"]),
}


@pytest.fixture(scope="module")
def fuzz_base(made_run, tmp_path_factory):
    base = _prepare(made_run, tmp_path_factory.mktemp("fuzz") / "pristine")
    from archnet.cli import main
    assert main(["export-onnx", str(base / "run" / "model.program"), "--out",
                 str(base / "m.onnx")]) == 0
    profiles = Path(__file__).resolve().parents[2] / "chip_profiles"
    (base / "chip.toml").write_text((profiles / "ideal.toml").read_text()
                                    .replace('name = "ideal"', 'name = "chip"'))
    shutil.copy(profiles / "_base.toml", base / "_base.toml")   # what it inherits from
    return base


@pytest.mark.parametrize("target", sorted(CASES))
def test_damaged_files(fuzz_base, tmp_path_factory, capsys, monkeypatch, target):
    command, outputs = CASES[target]
    raw = (fuzz_base / target).read_bytes()
    work = tmp_path_factory.mktemp("case") / "work"
    monkeypatch.chdir(tmp_path_factory.getbasetemp())

    _prepare(fuzz_base, work)          # undamaged, the command works: the fuzzing means something
    monkeypatch.chdir(work)
    code, _, err = archnet(capsys, *command)
    assert code == 0, err

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(blob=damage(raw))
    def check(blob):
        _prepare(fuzz_base, work)
        (work / target).write_bytes(blob)
        monkeypatch.chdir(work)
        kept = {k: v for k, v in snapshot(work).items()
                if not any(Path(k).is_relative_to(work / o) for o in outputs)}
        code, _, err = archnet(capsys, *command)
        assert code in (0, 1, 2), (target, code, err)
        if code == 2:
            one_error_line(err)
        assert "Traceback" not in err
        now = snapshot(work)
        assert {k: now.get(k) for k in kept} == kept, target
    check()
