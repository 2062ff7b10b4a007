"""The command line: user errors are one line and exit 2; results are written atomically."""

import json
import subprocess
import sys

import numpy as np
import pytest

from archnet.cli import main
from simulator.examples import example_input, example_program
from simulator.ir import save_program


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    save_program(example_program(), d / "example.program")
    plain = example_program()
    plain.metadata = {}
    save_program(plain, d / "plain.program")
    np.save(d / "x.npy", example_input())
    np.save(d / "x_bad_shape.npy", np.zeros((1, 1, 8, 8), np.uint8))
    np.save(d / "x_bad_range.npy", np.full((1, 1, 16, 16), 999, np.int16))
    np.save(d / "x_float.npy", np.zeros((1, 1, 16, 16), np.float32))
    (d / "garbage.program").write_bytes(b"PK\x03\x04 this is not a zip")
    (d / "garbage.onnx").write_bytes(b"\x08\x07garbage")
    (d / "x_garbage.npy").write_bytes(b"\x93NUMPY garbage")
    (d / "bad.toml").write_text("[chip\nname = 'x'")
    return d


@pytest.mark.parametrize("argv, message", [
    (["simulate", "{d}/missing.program", "--chip", "ideal", "--input", "{d}/x.npy"], "no such model file"),
    (["simulate", "{d}/garbage.program", "--chip", "ideal", "--input", "{d}/x.npy"], "not a zip"),
    (["simulate", "{d}/example.program", "--chip", "ideal", "--input", "{d}/x_bad_shape.npy"], "shape"),
    (["simulate", "{d}/example.program", "--chip", "ideal", "--input", "{d}/x_bad_range.npy"], "outside u8"),
    (["simulate", "{d}/example.program", "--chip", "ideal", "--input", "{d}/x_float.npy"], "not an integer"),
    (["simulate", "{d}/example.program", "--chip", "ideal", "--input", "{d}/x_garbage.npy"], "not a readable"),
    (["simulate", "{d}/plain.program", "--chip", "ideal"], "--input is required"),
    (["simulate", "{d}/example.program", "--chip", "no-such-chip", "--input", "{d}/x.npy"], "no-such-chip"),
    (["simulate", "{d}/example.program", "--chip", "{d}/bad.toml", "--input", "{d}/x.npy"], "bad.toml"),
    (["simulate", "{d}/example.program", "--chip", "ideal", "--input", "{d}/x.npy",
      "--output", "{d}/out.txt"], "must end in .npy or .npz"),
    (["estimate", "{d}/garbage.onnx", "--chip", "ideal"], "garbage.onnx"),
    (["estimate", "--chip", "ideal", "--input-shape", "x=1xthree"], "NAME=1x3x224x224"),
    (["profiles", "validate", "{d}/bad.toml"], "bad.toml"),
    (["regress", "--dir", "{d}"], "no golden files"),
])
def test_user_errors_are_one_line_exit_2(capsys, files, argv, message):
    code, out, err = run(capsys, *[a.format(d=files) for a in argv])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("archnet: error:"), err
    assert message in lines[0]


def test_simulate_writes_outputs_and_checks_against_reference(capsys, files, tmp_path):
    out_path = tmp_path / "y.npy"
    code, out, err = run(capsys, "simulate", str(files / "example.program"), "--chip", "ideal",
                         "--input", str(files / "x.npy"), "--output", str(out_path),
                         "--check", "reference")
    assert code == 0, err
    assert "bit-exact" in out
    y = np.load(out_path)
    assert y.dtype == np.int8 and y.shape == (1, 10)
    assert not list(tmp_path.glob(".*tmp"))


def test_simulate_example_by_default_reports_overflow(capsys):
    code, out, err = run(capsys, "simulate", "--chip", "k210-kpu")
    assert code == 0, err
    assert "stem_acc" in out and "safe bits" in out


def test_estimate_json_has_the_documented_keys(capsys):
    code, out, err = run(capsys, "estimate", "--chip", "k210-kpu", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert {"chip", "total_cycles", "total_latency_ms", "ops"} <= set(doc)
    for op in doc["ops"]:
        assert {"name", "type", "cycles", "latency_ms", "bound", "fallback_reason"} <= set(op)
        assert op["bound"] in ("compute", "memory", "overhead", "host")
    # the 5x5 stem cannot run on a 1x1/3x3-only KPU
    stem = next(op for op in doc["ops"] if op["name"] == "stem_acc")
    assert stem["fallback_reason"] and "kernel" in stem["fallback_reason"]


def test_profiles_list_and_show(capsys):
    code, out, _ = run(capsys, "profiles")
    assert code == 0 and "ideal" in out and "onnx-qlinear" in out
    code, out, _ = run(capsys, "profiles", "show", "k210-kpu")
    assert code == 0 and "provenance" in out


def test_regress_passes_on_the_committed_goldens(capsys):
    code, out, _ = run(capsys, "regress", "--backend", "reference")
    assert code == 0 and " 0 failed" in out


def test_console_script_runs_as_a_fresh_process():
    proc = subprocess.run([sys.executable, "-m", "archnet.cli", "simulate", "--chip", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
