"""``archnet verify``: a converted run folder's test set through the simulator, archnet's integer
emulation, the fake-quant student and the teacher (digits, a tiny 4w4a student, few images)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from archnet.cli import verify as verify_cli
from archnet.errors import ArchnetError
from archnet.jobs.verify import verify
from simulator.cli import run
from simulator.ir.program import load_program, save_program

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "reports" / "teachers" / "digits_resnet8.pt"
LIMIT = 72


def _make_run(run_dir: Path, teacher: str) -> Path:
    from archnet.data import load_dataset
    from archnet.lowering import calibrate_activations, calibrate_batchnorm, convert_resnet
    from archnet.student_io import save_student
    from archnet.teachers import load_teacher
    t, m = load_teacher(TEACHER)
    s = convert_resnet(t, "ideal", "4w4a", m["input_shape"])
    imgs = load_dataset("digits", split="train", labels=False).images[:256]
    calibrate_batchnorm(s, imgs)
    calibrate_activations(s, imgs)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_student(run_dir / "student.pt", s,
                 {"teacher": teacher, "teacher_sha256": t.content_sha256, "profile": "ideal",
                  "bits": ["4w4a"] * 5,
                  "dataset": "digits", "data_path": None, "input_shape": m["input_shape"],
                  "command": "archnet convert (test fixture)"})
    save_program(s.export((1, *m["input_shape"])), run_dir / "model.program")
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _make_run(tmp_path_factory.mktemp("verify") / "run", str(TEACHER))


@pytest.fixture(scope="module")
def test_set():
    from archnet.data import load_dataset
    images, labels = load_dataset("digits", None, "test", labels=True).tensors
    return images[:LIMIT], labels[:LIMIT]


def _cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="archnet")
    verify_cli.add_commands(parser.add_subparsers(dest="command"))
    return run(parser, argv, prog="archnet")


@pytest.mark.parametrize("chip", ["ideal", "onnx-qlinear", "k210-kpu"])
def test_bit_exact_on_chips_whose_arithmetic_differs(run_dir, test_set, chip):
    from archnet.teachers import load_teacher
    from archnet.teachers.train import evaluate
    report = verify(run_dir / "model.program", chip, limit=LIMIT, batch_size=32, progress=False)
    assert report.bit_exact and report.exit_code == 0
    assert [a.name for a in report.agreement] == ["stem", "layer1.0", "layer2.0", "layer3.0", "head"]
    assert all(a.matched == a.total > 0 for a in report.agreement)
    assert report.agreement[-1].logits and report.agreement[-1].total == LIMIT * 10
    assert report.images == LIMIT and report.batches == 3  # 32 + 32 + a ragged 8
    assert report.chip == chip and report.chip_path.endswith(f"{chip}.toml")
    assert report.converted_for == "ideal" and report.student.endswith("student.pt")
    for acc in (report.teacher_accuracy, report.student_accuracy, report.simulator_accuracy):
        assert 0.0 <= acc <= 1.0
    images, labels = test_set
    assert report.teacher_accuracy == evaluate(load_teacher(TEACHER)[0], images, labels)
    assert report.latency_ms > 0 and report.latency_batch == 1
    assert 0 <= report.simulator_s <= report.wall_s * report.world_size
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["bit_exact"] and doc["elements_matched"] == doc["elements_total"]
    assert doc["fallback_count"] == len(report.fallbacks)
    text = report.format()
    assert "BIT-EXACT" in text and chip in text
    # 32- and 40-bit accumulators hold this 4w4a student: no events, no alarm
    ov = report.overflow
    assert ov.events == 0 and not ov.overflowed and ov.layers
    assert all(r.outputs > 0 and r.required_bits <= ov.accumulator_bits for r in ov.layers)
    assert ov.safe_bits < ov.accumulator_bits
    assert doc["overflow"]["overflowed"] is False and doc["overflow"]["events"] == 0
    assert doc["overflow"]["accumulator_bits"] == ov.accumulator_bits
    assert "WRAPPED" not in text and "SATURATED" not in text and "<- overflow" not in text
    lines = text.splitlines()
    i = lines.index(f"result: BIT-EXACT: all {report.total:,} elements agree")
    assert lines[i + 1].startswith("  no accumulator overflow: the chip's "
                                   f"{ov.accumulator_bits}-bit accumulator held all")


def test_cli_exit_0_writes_json(run_dir, tmp_path, capsys):
    out = tmp_path / "reports" / "verify.json"
    rc = _cli(["verify", str(run_dir / "model.program"), "--chip", "k210-kpu", "--limit", "40",
               "--batch-size", "16", "--no-features", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    doc = json.loads(out.read_text())
    assert doc["bit_exact"] and doc["images"] == 40 and doc["chip"] == "k210-kpu"
    assert [a["name"] for a in doc["agreement"]] == ["head"]  # logits only
    assert doc["commands"]["verify"].startswith("archnet verify ")
    assert "--limit 40" in doc["commands"]["verify"]
    assert "BIT-EXACT" in printed.out and str(out) in printed.out
    assert printed.err == ""  # no progress bar when asked for none
    assert not list(out.parent.glob(".*.tmp"))


def test_cli_json_to_stdout(run_dir, capsys):
    rc = _cli(["verify", str(run_dir / "model.program"), "--chip", "ideal", "--limit", "8",
               "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["images"] == 8


def test_tampered_program_names_both_files(run_dir, tmp_path):
    program = load_program(run_dir / "model.program")
    w = program.tensors["layer2.0.conv1.weight"]
    data = w.data.copy()
    data.flat[5] = 1 if data.flat[5] != 1 else 2
    program.tensors["layer2.0.conv1.weight"] = dataclasses.replace(w, data=data)
    tampered = tmp_path / "tampered.program"
    save_program(program, tampered)
    with pytest.raises(ArchnetError) as err:
        verify(tampered, "ideal", student_path=run_dir / "student.pt", limit=8)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tampered) in msg and str(run_dir / "student.pt") in msg
    assert "layer2.0.conv1.weight" in msg


def test_missing_student_is_one_line(run_dir, tmp_path, capsys):
    lone = tmp_path / "model.program"
    shutil.copy(run_dir / "model.program", lone)
    with pytest.raises(ArchnetError) as err:
        verify(lone, "ideal", limit=8)
    assert "\n" not in str(err.value) and str(tmp_path / "student.pt") in str(err.value)
    assert _cli(["verify", str(lone), "--chip", "ideal"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "student.pt" in err_lines[0]
    assert _cli(["verify", str(tmp_path / "nothing.program"), "--chip", "ideal"]) == 2
    assert "nothing.program: no such Program file" in capsys.readouterr().err


def test_own_text_is_refused_for_an_image_run_naming_the_image_option(run_dir, tmp_path, capsys):
    own = tmp_path / "mine.txt"
    own.write_text("a sentence of several words\n")
    assert _cli(["verify", str(run_dir / "model.program"), "--chip", "ideal", "--corpus",
                 str(own)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--corpus is for text runs" in err[0] and "--data" in err[0]


def test_a_recorded_path_is_found_from_any_current_folder(tmp_path, monkeypatch):
    """Convert records paths relative to where it ran (a parent of the run folder, as archnet
    demo's DIR/run beside DIR/teacher.pt): found from another current folder."""
    from archnet.runs import resolve_recorded
    (tmp_path / "work" / "demo" / "run").mkdir(parents=True)
    (tmp_path / "work" / "demo" / "teacher.pt").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = tmp_path / "work" / "demo" / "run"
    assert resolve_recorded("demo/teacher.pt", run) == (tmp_path / "work" / "demo" / "teacher.pt").resolve()
    assert resolve_recorded("teacher.pt", run) == (tmp_path / "work" / "demo" / "teacher.pt").resolve()
    assert resolve_recorded("demo/missing.pt", run) is None
    assert resolve_recorded(str(tmp_path / "nowhere.pt"), run) is None


def test_teacher_found_beside_the_student_or_named_missing(tmp_path):
    run = _make_run(tmp_path / "run", "teacher.pt")  # relative: not in cwd, beside the student
    with pytest.raises(ArchnetError, match=r"teacher\.pt: no such teacher checkpoint"):
        verify(run / "model.program", "ideal", limit=8)
    shutil.copy(TEACHER, run / "teacher.pt")
    report = verify(run / "model.program", "ideal", limit=8)
    assert report.bit_exact and report.teacher == str(run / "teacher.pt")
    with pytest.raises(ArchnetError, match="nowhere.pt: no such teacher"):
        verify(run / "model.program", "ideal", teacher_path=tmp_path / "nowhere.pt", limit=8)


def test_data_that_does_not_fit_the_student(run_dir, monkeypatch):
    import archnet.data as data
    real = data.load_dataset

    def wrong_size(name, data_path=None, split="train", labels=True):
        ds = real(name, data_path, split, labels)
        x, y = ds.tensors
        return torch.utils.data.TensorDataset(x[:, :, :8, :8].contiguous(), y)
    monkeypatch.setattr(data, "load_dataset", wrong_size)
    with pytest.raises(ArchnetError) as err:
        verify(run_dir / "model.program", "ideal", limit=8)
    assert "student.pt" in str(err.value) and "[1, 8, 8]" in str(err.value)


def test_broken_integer_path_is_caught(run_dir, tmp_path, monkeypatch, capsys):
    from archnet.quant.qtensor import QTensor
    from archnet.student import GraphBlock
    real = GraphBlock.integer_forward

    def off_by_one(self, x, arith, side=None):
        q = real(self, x, arith, side)
        return QTensor(q.value + 1, q.scale, q.dtype) if self.name == "layer2.0" else q
    monkeypatch.setattr(GraphBlock, "integer_forward", off_by_one)
    report = verify(run_dir / "model.program", "ideal", limit=16, progress=False)
    assert not report.bit_exact and report.exit_code == 1
    rows = {a.name: a for a in report.agreement}
    assert rows["stem"].matched == rows["stem"].total
    assert rows["layer1.0"].matched == rows["layer1.0"].total
    assert rows["layer2.0"].matched < rows["layer2.0"].total
    div = report.divergence
    assert div["tensor"] == "layer2.0.merge" and div["image"] == 0
    assert div["archnet"] == div["simulator"] + 1
    assert "MISMATCH" in report.format() and "layer2.0" in report.format()
    out = tmp_path / "bad.json"
    assert _cli(["verify", str(run_dir / "model.program"), "--chip", "ideal", "--limit", "8",
                 "--out", str(out)]) == 1
    assert "first divergence" in capsys.readouterr().out
    assert json.loads(out.read_text())["bit_exact"] is False


def test_shards_add_up(run_dir, monkeypatch):
    """Each rank takes ``shard(n)``; the counts of the shards add up to the whole run."""
    import archnet.jobs.verify as v
    whole = verify(run_dir / "model.program", "ideal", limit=20, batch_size=8)
    parts = []
    for lo, hi in ((0, 7), (7, 20)):
        monkeypatch.setattr(v.dist, "shard", lambda n, lo=lo, hi=hi: range(lo, hi))
        parts.append(verify(run_dir / "model.program", "ideal", limit=20, batch_size=8))
    for field in ("teacher_correct", "student_correct", "simulator_correct", "sim_teacher_agree",
                  "matched", "total"):
        assert getattr(whole, field) == sum(getattr(p, field) for p in parts), field
    for k, row in enumerate(whole.overflow.layers):
        assert row.outputs == sum(p.overflow.layers[k].outputs for p in parts) > 0
        assert row.events == sum(p.overflow.layers[k].events for p in parts)
        assert row.required_bits == max(p.overflow.layers[k].required_bits for p in parts)
    assert np.isclose(whole.simulator_accuracy * 20,
                      sum(p.simulator_correct for p in parts))


def test_program_exported_with_features_and_a_batch(run_dir, tmp_path):
    """A Program exported with every block's outputs and batch 8 is still the student's; it is
    re-batched to the run's batches and the estimate is for its own batch."""
    from archnet.student_io import load_student
    student, _ = load_student(run_dir / "student.pt")
    path = tmp_path / "feat8.program"
    save_program(student.export((8, 1, 16, 16), feature_outputs=True), path)
    report = verify(path, "onnx-qlinear", student_path=run_dir / "student.pt", limit=10,
                    batch_size=6)
    assert report.bit_exact and report.latency_batch == 8 and report.batches == 2


def _narrow_chip(folder: Path, bits: int, overflow: str, base: str) -> Path:
    """A profile file: ``base`` with a ``bits``-bit accumulator that wraps or saturates."""
    name = f"acc{bits}-{overflow}"
    path = folder / f"{name}.toml"
    path.write_text(f'inherit = "{base}"\nname = "{name}"\n'
                    f'description = "{base} with a {bits}-bit {overflow} accumulator"\n\n'
                    f'[arithmetic]\naccumulator_bits = {bits}\noverflow = "{overflow}"\n')
    return path


def test_narrow_wrapping_accumulator_is_said_plainly(run_dir, tmp_path, capsys):
    """An 8-bit wrapping accumulator: still bit-exact (the simulator and the emulation wrap
    alike, exit 0), but the report shows which layers wrapped, how often, the width that would
    have been safe, and says WRAPPED right under the result."""
    from archnet.student_program import rebatch
    from simulator.execute import execute
    from simulator.ir.ops import MAC_OPS
    chip = _narrow_chip(tmp_path, 8, "wrap", "onnx-qlinear")
    report = verify(run_dir / "model.program", chip, limit=16, batch_size=8, progress=False)
    assert report.bit_exact and report.exit_code == 0 and report.batches == 2
    ov = report.overflow
    assert (ov.accumulator_bits, ov.mode) == (8, "wrap")
    program = load_program(run_dir / "model.program")
    assert [r.name for r in ov.layers] == [n.name for n in program.nodes if n.op in MAC_OPS]
    hit = ov.overflowed
    assert hit and ov.events == sum(r.events for r in hit) > 0
    assert all(0 < r.events <= r.outputs and r.required_bits > 8 for r in hit)
    assert all(r.required_bits <= 8 for r in ov.layers if not r.events)
    assert ov.safe_bits == max(r.required_bits for r in ov.layers) > 8
    # two batches of 8 summed (events, outputs) and maxed (bits) = one batch of 16
    from archnet.student_io import load_student
    from archnet.data import load_dataset
    student, _ = load_student(run_dir / "student.pt")
    images = load_dataset("digits", None, "test", labels=True).tensors[0][:16]
    img = student.input.integer_forward(images).value.numpy()
    from simulator.profiles import load_profile
    once = execute(rebatch(program, 16), load_profile(chip), {"image": img}, trace=False).overflow
    assert {r.name: (r.events, r.outputs, r.required_bits) for r in ov.layers} == \
        {n: (s.events, s.outputs, s.required_bits) for n, s in once.items()}

    text = report.format()
    lines = text.splitlines()
    i = lines.index(f"result: BIT-EXACT: all {report.total:,} elements agree")
    a = "an" if str(ov.safe_bits).startswith("8") or ov.safe_bits in (11, 18) else "a"
    sentence = (f"the chip's 8-bit accumulator WRAPPED in {ov.events:,} of {ov.outputs:,} outputs "
                f"in {len(hit)} of {len(ov.layers)} MAC layers; {a} {ov.safe_bits}-bit "
                f"accumulator would have been safe for these inputs")
    assert lines[i + 1] == "  " + sentence
    assert "wrapped alike" in lines[i + 2]
    assert "accumulator overflow (8-bit, wraps): WRAPPED in" in text
    for r in hit:
        row = next(ln for ln in lines if ln.startswith(f"  {r.name} "))
        assert row.split()[1:5] == [f"{r.outputs:,}", f"{r.events:,}", "8", str(r.required_bits)]
        assert row.endswith("<- overflow")

    doc = json.loads(json.dumps(report.to_dict()))["overflow"]
    assert doc["wrapped"] is True and doc["saturated"] is False and doc["overflowed"] is True
    assert doc["accumulator_bits"] == 8 and doc["mode"] == "wrap"
    assert doc["events"] == ov.events and doc["outputs"] == ov.outputs
    assert doc["safe_bits"] == ov.safe_bits and doc["layers_overflowed"] == len(hit)
    assert doc["sentence"] == sentence
    assert [r["name"] for r in doc["layers"] if r["events"]] == [r.name for r in hit]
    assert all(r["fits"] == (r["events"] == 0) for r in doc["layers"])

    out = tmp_path / "v.json"   # the CLI: same words, exit 0
    assert _cli(["verify", str(run_dir / "model.program"), "--chip", str(chip), "--limit", "8",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "result: BIT-EXACT" in printed and "accumulator WRAPPED in" in printed
    assert json.loads(out.read_text())["overflow"]["wrapped"] is True


def test_narrow_saturating_accumulator_says_saturated(run_dir, tmp_path):
    chip = _narrow_chip(tmp_path, 8, "saturate", "ideal")
    report = verify(run_dir / "model.program", chip, limit=8, progress=False)
    assert report.bit_exact and report.exit_code == 0
    ov = report.overflow
    assert ov.mode == "saturate" and ov.events > 0 and ov.safe_bits > 8
    text = report.format()
    assert f"the chip's 8-bit accumulator SATURATED in {ov.events:,} of" in text
    assert "WRAPPED" not in text
    doc = report.to_dict()["overflow"]
    assert doc["saturated"] is True and doc["wrapped"] is False
