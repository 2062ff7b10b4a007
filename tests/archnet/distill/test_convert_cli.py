"""``archnet convert`` end to end on digits, its bad-input messages, and under torchrun (2 CPU
processes, gloo): the run folder holds a Program the simulator runs bit-exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from archnet.cli import main
from archnet.student_io import load_student
from simulator.ir.program import load_program
from simulator.profiles import load_profile

ROOT = Path(__file__).resolve().parents[3]
TEACHER = str(ROOT / "reports" / "teachers" / "digits_resnet8.pt")
FAST = ["--steps-per-period", "2", "--batch-size", "8", "--max-images", "64",
        "--calibration-images", "64", "--threads", "1", "--no-progress"]


def test_convert_writes_a_verified_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["convert", TEACHER, "--chip", "k210-kpu", "--bits", "4w4a", "--out", str(out),
                 *FAST]) == 0
    summary = json.loads((out / "convert.json").read_text())
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0
    assert summary["fallbacks"] == 0 and summary["bits"] == ["4w4a"] * 5
    assert [h["period"] for h in summary["history"]] == [0, 1, 2, 3, 4]
    assert 0 < summary["simulator_share"] < 1
    student, meta = load_student(out / "student.pt")
    program = load_program(out / "model.program")
    assert program.metadata["archnet"]["student_checkpoint"] == "student.pt"
    assert meta["teacher"] == TEACHER and meta["profile"] == "k210-kpu"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        [f"period_{k:02d}.pt" for k in range(5)]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    # the folder verifies with the other command
    assert main(["verify", str(out / "model.program"), "--chip", "ethos-u55-128", "--limit", "32",
                 "--no-progress"]) == 0
    # a second convert into the same folder without --resume would mix two runs
    capsys.readouterr()
    assert main(["convert", TEACHER, "--chip", "k210-kpu", "--out", str(out), *FAST]) == 2
    assert "--resume" in capsys.readouterr().err


def test_convert_from_a_npy_of_images(tmp_path):
    from archnet.data import load_arrays
    images, _ = load_arrays("digits", split="train", labels=False)
    npy = tmp_path / "images.npy"
    np.save(npy, (images[:48] * 255).round().astype(np.uint8))
    out = tmp_path / "run"
    assert main(["convert", TEACHER, "--chip", "ideal", "--bits", "8w8a", "--data", str(npy),
                 "--out", str(out), *FAST]) == 0
    assert json.loads((out / "convert.json").read_text())["images"] == 48


@pytest.mark.parametrize("args, needle", [
    (["--bits", "3x3"], "--bits: invalid choice: '3x3'"),
    (["--chip", "no-such-chip"], "no-such-chip"),
    (["--data", "/nonexistent/images.npy"], "/nonexistent/images.npy"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, needle):
    base = {"--chip": "k210-kpu", "--bits": "4w4a", "--data": None}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["convert", TEACHER, "--out", str(tmp_path / "run"), *FAST]
    for flag, value in base.items():
        if value is not None:
            argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "student.pt").exists()


def test_missing_teacher_is_one_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.pt"), "--chip", "ideal", "--out",
                 str(tmp_path / "run")]) == 2
    assert "nope.pt" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["resnet", "native"])
def test_torchrun_two_cpu_processes(tmp_path, recipe):
    """DistributedDataParallel over gloo: both ranks train, rank 0 writes, the result is
    bit-exact; for the hand-written ResNet lowering and the chip-driven converter alike."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "archnet", "convert", TEACHER, "--chip", "k210-kpu", "--bits", "4w4a",
           "--recipe", recipe, "--out", str(out), *FAST]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "convert.json").read_text())
    assert summary["world_size"] == 2
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0
    assert done.stdout.count("wrote ") == 1            # only rank 0 writes
    # sharded evaluation: two ranks give the counts one process gives
    verify = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              "-m", "archnet", "verify", str(out / "model.program"), "--chip", "k210-kpu",
              "--limit", "40", "--json", "--no-progress"]
    two = subprocess.run(verify, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "archnet", *verify[7:]], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    a, b = json.loads(two.stdout), json.loads(one.stdout)
    assert a["world_size"] == 2 and b["world_size"] == 1
    for key in ("elements_matched", "elements_total", "simulator_accuracy", "teacher_accuracy"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("recipe", ["resnet", "native"])
def test_latency_budget_chooses_bits_that_fit_and_saves_them(tmp_path, recipe):
    """Per-block widths under a budget, for the hand-written lowering and the chip-driven
    converter alike."""
    out = tmp_path / "run"
    from archnet.bit_allocation import GraphStudents, latency_table
    from archnet.capture import capture
    from archnet.teachers import load_teacher
    teacher, meta = load_teacher(TEACHER)
    students = None if recipe == "resnet" else GraphStudents(
        capture(teacher, (torch.zeros(1, *meta["input_shape"]),)),
        load_profile("rk3588-npu-core"))
    totals = latency_table(teacher, "rk3588-npu-core", meta["input_shape"],
                           students=students).loc["total"]
    # between all-4w4a and all-8w8a on the profile as it stands, so some blocks must be narrow
    budget = round((totals["4w4a ms"] + totals["8w8a ms"]) / 2, 6)
    assert totals["4w4a ms"] < budget < totals["8w8a ms"]
    assert main(["convert", TEACHER, "--chip", "rk3588-npu-core", "--latency-budget", str(budget),
                 "--recipe", recipe, "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "convert.json").read_text())
    bits = summary["bits"]
    assert len(set(bits)) > 1, bits                       # a per-block choice, not one width
    assert summary["estimated_latency_ms"] <= budget
    assert summary["allocation"]["bits"] == bits
    assert summary["allocation"]["budget_ms"] == budget
    _, meta = load_student(out / "student.pt")
    assert meta["allocation"]["estimated_ms"] == pytest.approx(summary["estimated_latency_ms"])


@pytest.mark.parametrize("chip, recipe, replaced", [
    ("ethos-u55-128", "native", set()),                        # runs every op of the teacher
    ("k210-kpu", "native", {"conv2d.shift_3x3", "add.merge_into_conv", "conv2d.merged",
                            "global_avg_pool.window"}),
    # the global pool's fully connected layer is composed with the classifier (one layer)
    ("k210-kpu", "paper", {"conv2d.shift_3x3", "add.concat_conv", "conv2d.centre_tap_3x3",
                           "global_avg_pool.merged", "flatten.merged"}),
])
def test_chip_driven_recipes_convert_bit_exactly(tmp_path, chip, recipe, replaced):
    """The chip-driven converter end to end: the plan's student trains, exports, and its
    integers equal the simulator's; the teacher's ops stay where the chip runs them."""
    out = tmp_path / "run"
    assert main(["convert", TEACHER, "--chip", chip, "--bits", "8w8a", "--recipe", recipe,
                 "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "convert.json").read_text())
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0 and summary["fallbacks"] == 0
    student, meta = load_student(out / "student.pt")
    assert meta["recipe"] == recipe
    rules = student.config["meta"]["rules"]
    decisions = summary["plan"]["decisions"]
    assert set(rules) == {d["rule"] for d in decisions}
    assert {d["rule"] for d in decisions if not d["native"]} == replaced
    assert all(d["reason"] and d["module"] is not None for d in decisions)
    assert main(["verify", str(out / "model.program"), "--chip", chip, "--limit", "32",
                 "--no-progress"]) == 0
